"""man pages: the NAME line's description -> the DESCRIPTION section, troff markup removed.

Only the man(7) macro package is read (Linux man-pages, ``manpages`` and ``manpages-dev``, use it);
mdoc pages and ``.so`` aliases are skipped and counted. The stripper keeps text lines, the text
arguments of font macros and tags, and drops requests, comments, escapes, and tables, examples and
no-fill blocks (code and layouts rather than prose).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

from diffembed.errors import DataFileError
from diffembed.training.data.pairs import RawPair, SourceCounts
from diffembed.training.data.reserved import refuse_reserved, reserved_reason
from diffembed.training.data.textio import read_text, strip_compression

DEFAULT_PACKAGES = ("manpages", "manpages-dev")
_PAGE_NAME = re.compile(r"^[^/]+\.[0-9n][\w]*$")

_CHARS = {
    "em": "\u2014", "en": "\u2013", "hy": "-", "aq": "'", "dq": '"', "lq": '"', "rq": '"', "oq": "'",
    "cq": "'", "bu": "\u2022", "co": "\u00a9", "rg": "\u00ae", "tm": "\u2122", "mu": "\u00d7",
    ">=": "\u2265", "<=": "\u2264", "!=": "\u2260", "ti": "~", "ha": "^", "rs": "\\", "bv": "|", "ba": "|",
    "pl": "+", "mi": "-", "eq": "=", "sl": "/", "lh": "", "rh": "", "de": "\u00b0", "->": "\u2192",
    "<-": "\u2190", "Tm": "\u2122", "R": "\u00ae", "lq\"": '"', "ga": "`", "at": "@", "sh": "#", "Do": "$",
    "dg": "\u2020", "ps": "\u00b6", "sc": "\u00a7", "ct": "\u00a2", "ss": "\u00df", "fo": "\u2039", "fc": "\u203a",
}
_ESC = re.compile(r"""\\(?:
    (?P<char>\((?P<c2>..)|\[(?P<cn>[^\]]*)\])
  | \*(?:\((?P<s2>..)|\[(?P<sn>[^\]]*)\]|(?P<s1>.))
  | f(?:\(..|\[[^\]]*\]|.)
  | s(?:[+-]?\d|\(..|\[[^\]]*\]|'[^']*')
  | n(?:[+-]?(?:\(..|\[[^\]]*\]|.))
  | [whvlLoDXbZNRSxV]'[^']*'
  | [kg$](?:\(..|\[[^\]]*\]|.)
  | (?P<other>.)
)""", re.X)


def _escape(m: re.Match) -> str:
    if m.group("char"):
        name = m.group("c2") or m.group("cn") or ""
        if name.startswith("u") and re.fullmatch(r"u[0-9A-Fa-f]{4,6}", name):
            return chr(int(name[1:], 16))
        return _CHARS.get(name, "")
    if m.group("s2") or m.group("sn") or m.group("s1"):
        return _CHARS.get(m.group("s2") or m.group("sn") or m.group("s1"), "")
    other = m.group("other")
    if other is None:
        return ""
    return {"-": "-", "e": "\\", "\\": "\\", "~": " ", " ": " ", "0": " ", "'": "'", "`": "`", ".": ".",
            "t": " "}.get(other, "")


def troff_text(line: str) -> str:
    """Escapes in one text line resolved to characters or removed."""
    cut = re.search(r'\\"', line)
    if cut:
        line = line[:cut.start()]
    return _ESC.sub(_escape, line)


def _args(rest: str) -> list[str]:
    return [m.group(1).replace('""', '"') if m.group(1) is not None else m.group(2)
            for m in re.finditer(r'"((?:[^"]|"")*)"|(\S+)', rest)]


_FONT_SPACED = {"B", "I", "SM", "SB"}
_FONT_JOINED = {"BR", "BI", "IB", "IR", "RB", "RI"}
_BREAKS = {"PP", "P", "LP", "sp", "br", "HP", "TP", "TQ", "IP", "SS", "SH", "RS", "RE", "in", "ti",
           "fi", "YS", "SY", "OP", "UR", "UE", "MT", "ME"}


def man_sections(text: str) -> tuple[dict[str, list[str]], str]:
    """(section name -> lines of text, format) where format is 'man', 'mdoc' or 'alias'."""
    lines = text.replace("\r\n", "\n").split("\n")
    if any(line.startswith(".so ") for line in lines[:5]) and sum(1 for x in lines if x.strip()) <= 3:
        return {}, "alias"
    if any(line.startswith((".Dd", ".Sh ")) for line in lines):
        return {}, "mdoc"
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    skip_until: str | None = None
    for raw in lines:
        if skip_until is not None:
            if raw.strip().startswith(skip_until) or (skip_until == r"\}" and r"\}" in raw):
                skip_until = None
            continue
        if raw[:1] in (".", "'"):
            m = re.match(r"^[.']\s*(\S*)\s?(.*)$", raw)
            name, rest = (m.group(1), m.group(2)) if m else ("", "")
            if name.startswith('\\"') or name == "":
                continue
            if name in ("de", "de1", "am", "ig"):
                skip_until = ".."
                continue
            if name in ("TS", "EX", "nf"):  # tables, examples, no-fill blocks (code, layouts): not prose
                skip_until = {"TS": ".TE", "EX": ".EE", "nf": ".fi"}[name]
                continue
            if name in ("if", "ie", "el"):
                if r"\{" in raw and r"\}" not in raw:
                    skip_until = r"\}"
                continue
            if name == "SH":
                title = " ".join(_args(troff_text(rest))).strip().upper()
                current = sections.setdefault(title, [])
                continue
            if current is None:
                continue
            if name in _FONT_SPACED:
                current.append(" ".join(_args(troff_text(rest))))
            elif name in _FONT_JOINED:
                current.append("".join(_args(troff_text(rest))))
            elif name in ("SS", "IP", "TQ"):
                args = _args(troff_text(rest))
                current.append("")
                if args and args[0].strip() not in ("\u2022", "*", "-", ""):
                    current.append(args[0])
            elif name in _BREAKS:
                current.append("")
            continue  # any other request: layout, registers, strings
        if current is not None:
            current.append(troff_text(raw))
    return sections, "man"


def _paragraphs(lines: list[str]) -> str:
    paragraphs, cur = [], []
    for line in lines + [""]:
        if line.strip():
            cur.append(line.strip())
        elif cur:
            paragraphs.append(" ".join(cur))
            cur = []
    return "\n".join(paragraphs)


def name_description(lines: list[str]) -> tuple[str, str] | None:
    """'ls, dir \\- list directory contents' -> ('ls, dir', 'list directory contents')."""
    text = " ".join(x.strip() for x in lines if x.strip())
    m = re.match(r"^(.*?)\s+[-\u2013\u2014]+\s+(.*)$", text)
    if not m:
        return None
    return m.group(1).strip(), m.group(2).strip()


def package_pages(packages: tuple[str, ...]) -> list[Path]:
    """The man page files dpkg lists for the packages (so the set is fixed by the packages installed)."""
    files: list[Path] = []
    for package in packages:
        try:
            done = subprocess.run(["dpkg-query", "-L", package], capture_output=True, text=True)
        except FileNotFoundError as exc:
            raise DataFileError("man: dpkg-query is not available; pass --man-dir") from exc
        if done.returncode != 0:
            raise DataFileError(f"man: package {package} is not installed; apt-get install "
                                f"{' '.join(DEFAULT_PACKAGES)} (or pass --man-dir)")
        for line in done.stdout.splitlines():
            p = Path(line)
            if re.search(r"/share/man/man[0-9n][^/]*/[^/]+$", line) and _PAGE_NAME.match(strip_compression(p.name)):
                files.append(p)
    return sorted(set(p for p in files if p.is_file() and not p.is_symlink()))


def dir_pages(root: Path) -> list[Path]:
    """Pages in ``root/man*/`` (and directly in ``root``); translated trees (``root/de/...``) are not read."""
    if not root.is_dir():
        raise DataFileError(f"man: folder {root} does not exist")
    found = [p for p in root.iterdir() if p.is_file()]
    for sub in root.iterdir():
        if sub.is_dir() and re.match(r"^man[0-9n]", sub.name):
            found.extend(p for p in sub.iterdir() if p.is_file())
    return sorted(p for p in found if not p.is_symlink() and _PAGE_NAME.match(strip_compression(p.name)))


def man_files(dirs: list[Path] | None = None, packages: tuple[str, ...] = DEFAULT_PACKAGES) -> list[Path]:
    """The pages to read: those in ``dirs`` (each refused if reserved), else the packages' own."""
    if dirs:
        files: list[Path] = []
        for d in dirs:
            refuse_reserved(d, "--man-dir")
            files.extend(dir_pages(Path(d)))
    else:
        files = package_pages(packages)
    if not files:
        raise DataFileError("man: no man pages found" + (f" in {', '.join(map(str, dirs))}" if dirs else ""))
    return files


def man_pairs(counts: SourceCounts, *, dirs: list[Path] | None = None,
              packages: tuple[str, ...] = DEFAULT_PACKAGES, progress: bool | None = None) -> Iterator[RawPair]:
    from tqdm.auto import tqdm

    files = man_files(dirs, packages)
    for path in tqdm(files, desc="man", unit="page", disable=None if progress is None else not progress, leave=False):
        if reserved_reason(path):
            counts.skipped["reserved_for_evaluation"] += 1
            continue
        sections, kind = man_sections(read_text(path))
        if kind != "man":
            counts.skipped[kind] += 1
            continue
        name = name_description(sections.get("NAME", []))
        description = _paragraphs(sections.get("DESCRIPTION", []))
        if name is None:
            counts.skipped["no_name_line"] += 1
            continue
        if not description:
            counts.skipped["no_description_section"] += 1
            continue
        page = strip_compression(path.name)
        yield RawPair(query=name[1], positive=description, doc_key=f"man:{page}",
                      origin=f"man:{path.parent.name}/{page}")
