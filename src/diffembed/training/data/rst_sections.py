"""Documentation headings -> section text, from reStructuredText sources.

Python's docs (python3.11-doc: ``html/_sources/**/*.rst.txt``) and the kernel's (linux-doc-6.1:
``Documentation/**/*.rst.gz``) are parsed into pages of sections. Each section long enough gives the
pair ("Page title: Heading" -> section body, markup removed); the page's own title section gives
(title -> its text). A page is one split unit, and its other sections are its pairs' optional
same-page negatives.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from diffembed.errors import DataFileError, InputError
from diffembed.training.data.pairs import RawPair, SourceCounts
from diffembed.training.data.reserved import refuse_reserved, reserved_reason
from diffembed.training.data.textio import read_text, strip_compression

PYTHON_DOC = Path("/usr/share/doc/python3.11/html/_sources")
LINUX_DOC = Path("/usr/share/doc/linux-doc-6.1/Documentation")

_ADORNMENT = set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")


@dataclass
class Section:
    title: str
    level: int
    body: str  # markup removed


@dataclass
class Page:
    title: str
    sections: list[Section]


def _is_adornment(line: str) -> bool:
    s = line.rstrip()
    return len(s) >= 3 and not line[:1].isspace() and len(set(s)) == 1 and s[0] in _ADORNMENT


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


# ------------------------------------------------------------------------------------------ inline markup
_LITERAL = re.compile(r"``(.+?)``")
_ROLE = re.compile(r":(?:[\w-]+:)*[\w-]+:`([^`]*)`")
_LINK = re.compile(r"`([^`]*?)\s*<[^<>`]*>`__?")
_REF = re.compile(r"`([^`]+)`(?:__?)?")
_STRONG = re.compile(r"\*\*(\S(?:.*?\S)?)\*\*")
_EMPH = re.compile(r"(?<![\w*\\])\*(\S(?:[^*]*?\S)?)\*(?![\w*])")
_FOOTNOTE = re.compile(r"\s?\[(?:#[\w-]*|\*|\d+|[A-Za-z][\w.-]*)\]_")
_SUBST = re.compile(r"(?<![\w|])\|([^|\s](?:[^|]*[^|\s])?)\|(?:__?)?(?![\w|])")
_ESCAPE = re.compile(r"\\(.)")


def _role_text(m: re.Match) -> str:
    inner = m.group(1)
    titled = re.match(r"^(.*?)\s*<[^<>]*>$", inner, re.S)
    if titled and titled.group(1):
        return titled.group(1)
    inner = inner.lstrip("!")
    if inner.startswith("~"):
        inner = inner[1:].rsplit(".", 1)[-1]
    return inner


def inline(text: str) -> str:
    """Inline reST markup reduced to its text: roles, literals, links, emphasis, footnotes, escapes."""
    text = _LITERAL.sub(r"\1", text)
    text = _ROLE.sub(_role_text, text)
    text = _LINK.sub(r"\1", text)
    text = _REF.sub(r"\1", text)
    text = _STRONG.sub(r"\1", text)
    text = _EMPH.sub(r"\1", text)
    text = _FOOTNOTE.sub("", text)
    text = _SUBST.sub(r"\1", text)
    text = text.replace("\\ ", "")
    return _ESCAPE.sub(r"\1", text)


# ------------------------------------------------------------------------------------------ blocks
# directives whose content is code, layout or machinery rather than prose: dropped whole
_DROP = {
    "toctree", "code-block", "code", "sourcecode", "highlight", "literalinclude", "include", "image",
    "figure", "index", "raw", "doctest", "testcode", "testsetup", "testcleanup", "testoutput",
    "productionlist", "kernel-doc", "kernel-include", "kernel-abi", "kernel-feat", "kernel-figure",
    "kernel-image", "kernel-render", "csv-table", "graphviz", "digraph", "math", "audit-event",
    "audit-event-table", "availability", "sectionauthor", "moduleauthor", "module", "currentmodule",
    "tabularcolumns", "cssclass", "contents", "highlightlang", "default-role", "role", "c:namespace",
    "cpp:namespace", "py:module", "py:currentmodule", "maintainers-include", "parsed-literal",
    "program-output", "command-output", "only-if", "sectnum", "meta", "title", "spelling",
}
_VERSION = {"versionadded": "New in version {}.", "versionchanged": "Changed in version {}.",
            "deprecated": "Deprecated since version {}.", "deprecated-removed": "Deprecated since version {}."}
_DIRECTIVE = re.compile(r"^\.\.\s+([\w:.+-]+)::\s*(.*)$")
_OPTION = re.compile(r"^:[\w -]+:(\s.*)?$")
_TABLE_RULE = re.compile(r"^[+=\-|: ]*[+=\-][+=\-|: ]*$")
_BULLET = re.compile(r"^([-*+•]|#\.|\d+[.)]|\(?[a-zA-Z0-9]\))\s+")
_FIELD = re.compile(r"^:([^:`]+):(\s+|$)")


def _block_end(lines: list[str], start: int, indent: int) -> int:
    """First line after ``start`` that is not blank and not indented deeper than ``indent``."""
    j = start + 1
    while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > indent):
        j += 1
    return j


def _dedent(lines: list[str]) -> list[str]:
    depth = min((_indent(x) for x in lines if x.strip()), default=0)
    return [x[depth:] if x.strip() else "" for x in lines]


def _clean_lines(lines: list[str]) -> list[str]:
    """Block-level reST to plain lines (blank lines separate paragraphs)."""
    out: list[str] = []
    i = 0
    literal_next = False  # the previous paragraph ended with '::': an indented literal block follows
    para_indent = 0
    while i < len(lines):
        line = lines[i]
        s = line.strip()
        ind = _indent(line)
        if not s:
            out.append("")
            i += 1
            continue
        if literal_next and ind > para_indent:
            i = _block_end(lines, i, para_indent)
            literal_next = False
            continue
        literal_next = False
        if s.startswith(".. ") or s == "..":
            end = _block_end(lines, i, ind)
            m = _DIRECTIVE.match(s)
            if m:
                name, arg = m.group(1).lower(), m.group(2).strip()
                if name not in _DROP and name.split(":")[-1] not in _DROP:
                    body = lines[i + 1:end]
                    k = 0
                    while k < len(body) and body[k].strip() and _OPTION.match(body[k].strip()):
                        k += 1  # directive options (:maxdepth: 2, :noindex: ...)
                    out.append("")
                    if name in _VERSION:
                        version, _, rest = arg.partition(" ")
                        out.append(_VERSION[name].format(version.rstrip(",")) + (" " + rest if rest else ""))
                    elif arg and name not in ("note", "warning", "seealso", "tip", "hint", "important",
                                              "attention", "caution", "danger", "error", "admonition",
                                              "only", "impl-detail", "table", "list-table", "hlist"):
                        out.append(arg)
                    out.extend(_clean_lines(_dedent(body[k:])))
                    out.append("")
            i = end  # comments, link targets, substitution definitions, footnotes: dropped
            continue
        if s.startswith(">>>"):
            while i < len(lines) and lines[i].strip():
                i += 1
            continue
        if _TABLE_RULE.match(s) and len(s) >= 3:
            i += 1
            continue
        if s.startswith("|") and (s.endswith("|") or s.startswith("| ")):
            s = s.strip("|").replace(" | ", "  ").strip()
        field = _FIELD.match(s)
        if field:
            s = f"{field.group(1)}: {s[field.end():]}".rstrip()
        if s.endswith("::"):
            literal_next, para_indent = True, ind
            s = s[:-2].rstrip()
            s = s + ":" if s and not s.endswith(":") and not lines[i].rstrip().endswith(" ::") else s
            if not s:
                i += 1
                continue
        out.append(s)
        i += 1
    return out


def rst_text(lines: list[str]) -> str:
    """Plain text of a reST fragment: paragraphs joined into lines, list items on lines of their own."""
    paragraphs: list[str] = []
    current: list[str] = []
    for line in _clean_lines(lines) + [""]:
        if not line or _BULLET.match(line):
            if current:
                paragraphs.append(" ".join(current))
            current = [line] if line else []
        else:
            current.append(line)
    return "\n".join(p for p in (inline(p).strip() for p in paragraphs) if p)


# ------------------------------------------------------------------------------------------ pages
def parse_page(text: str) -> Page | None:
    """Split a reST document at its section titles (underlined, or over- and underlined, text);
    levels follow the order in which adornment styles first appear, as docutils does."""
    lines = text.replace("\r\n", "\n").replace("\t", "        ").split("\n")
    heads: list[tuple[int, int, str, tuple[str, bool]]] = []  # (first line, body start, title, style)
    i = 0
    n = len(lines)
    while i < n:
        line = lines[i]
        if (_is_adornment(line) and i + 2 < n and lines[i + 1].strip() and not _is_adornment(lines[i + 1])
                and _is_adornment(lines[i + 2]) and lines[i + 2].rstrip()[0] == line.rstrip()[0]):
            heads.append((i, i + 3, lines[i + 1].strip(), (line.rstrip()[0], True)))
            i += 3
            continue
        if (line.strip() and not line[0].isspace() and not _is_adornment(line) and i + 1 < n
                and _is_adornment(lines[i + 1]) and (i == 0 or not lines[i - 1].strip())
                and not line.lstrip().startswith(".. ")):
            heads.append((i, i + 2, line.strip(), (lines[i + 1].rstrip()[0], False)))
            i += 2
            continue
        i += 1
    if not heads:
        return None
    styles: list[tuple[str, bool]] = []
    sections = []
    for k, (_, body_start, title, style) in enumerate(heads):
        if style not in styles:
            styles.append(style)
        end = heads[k + 1][0] if k + 1 < len(heads) else n
        sections.append(Section(inline(title).strip(), styles.index(style) + 1, rst_text(lines[body_start:end])))
    return Page(sections[0].title, sections)


def rst_files(root: Path) -> list[Path]:
    """reST sources under ``root``: *.rst and Sphinx's *.rst.txt copies, each maybe compressed."""
    return sorted(p for p in root.rglob("*") if p.is_file()
                  and strip_compression(p.name).endswith((".rst", ".rst.txt")))


def check_root(root: Path, source: str, python_doc: bool = False) -> list[Path]:
    """The reST files of a documentation tree, after refusing a reserved or missing one."""
    refuse_reserved(root, f"--{source}")
    if python_doc and "faq" in [part.lower() for part in root.absolute().parts]:
        raise InputError(f"--{source} {root}: python3.11-doc's faq/ folder is reserved for evaluation, "
                         "never for training data")
    if not root.is_dir():
        hint = {"python-doc": "apt-get install python3.11-doc", "linux-doc": "apt-get install linux-doc-6.1"}
        raise DataFileError(f"{source}: folder {root} does not exist" + (f"; {hint[source]}" if source in hint else ""))
    files = rst_files(root)
    if not files:
        raise DataFileError(f"{source}: no .rst or .rst.txt files under {root}")
    return files


def rst_pairs(counts: SourceCounts, root: Path, *, source: str, python_doc: bool = False,
              page_negatives: int = 0, progress: bool | None = None) -> Iterator[RawPair]:
    """Pairs from every page under ``root``. With ``python_doc`` the tree's ``faq/`` folder (reserved
    for evaluation) is skipped and counted; reserved files are skipped in any tree."""
    from tqdm.auto import tqdm

    root = Path(root)
    py_root = root if python_doc else None
    files = check_root(root, source, python_doc)
    for path in tqdm(files, desc=source, unit="page", disable=None if progress is None else not progress, leave=False):
        if reserved_reason(path, python_doc_root=py_root):
            counts.skipped["reserved_for_evaluation"] += 1
            continue
        rel = path.relative_to(root).as_posix()
        page = parse_page(read_text(path))
        if page is None:
            counts.skipped["page_without_headings"] += 1
            continue
        bodies = [s.body for s in page.sections]
        for k, sec in enumerate(page.sections):
            if not sec.body:
                counts.skipped["empty_section"] += 1
                continue
            query = sec.title if k == 0 or sec.title == page.title else f"{page.title}: {sec.title}"
            negatives = [b for j, b in enumerate(bodies) if j != k and b][:page_negatives] if page_negatives else []
            yield RawPair(query=query, positive=sec.body, doc_key=f"{source}:{rel}",
                          origin=f"{source}:{rel}#{k}", negatives=negatives)
