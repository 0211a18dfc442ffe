"""Debian package descriptions from apt's lists: synopsis line -> long description.

After ``apt-get update`` with English descriptions enabled, ``/var/lib/apt/lists/*_i18n_Translation-en*``
holds one stanza per distinct description (``Package``, ``Description-md5``, ``Description-en``).
Where no Translation-en list exists, Packages lists are read instead; they carry long descriptions only
for archives that do not split them out (Debian's own main archive does).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from diffembed.errors import DataFileError
from diffembed.training.data.pairs import RawPair, SourceCounts, normalized
from diffembed.training.data.reserved import refuse_reserved
from diffembed.training.data.textio import read_text

DEFAULT_LISTS = Path("/var/lib/apt/lists")
_TRANSLATION = re.compile(r"_i18n_Translation-en(\.(gz|xz|bz2|lz4|zst))?$")
_PACKAGES = re.compile(r"_Packages(\.(gz|xz|bz2|lz4|zst))?$")
HOW_TO_FETCH = ("run `apt-get -o Acquire::Languages=en update` (Docker images often set "
                "Acquire::Languages \"none\" in /etc/apt/apt.conf.d/docker-no-languages)")


def find_lists(lists_dir: Path) -> tuple[str, list[Path]]:
    """('translation' | 'packages', files), Translation-en lists preferred."""
    if not lists_dir.is_dir():
        raise DataFileError(f"apt lists folder {lists_dir} does not exist")
    files = sorted(p for p in lists_dir.iterdir() if p.is_file())
    translations = [p for p in files if _TRANSLATION.search(p.name)]
    if translations:
        return "translation", translations
    packages = [p for p in files if _PACKAGES.search(p.name)]
    if packages:
        return "packages", packages
    raise DataFileError(f"no Translation-en or Packages lists found in {lists_dir}; {HOW_TO_FETCH}")


def stanzas(text: str) -> Iterator[dict[str, str]]:
    """deb822 stanzas: field -> value, continuation lines joined with '\\n' (leading space kept)."""
    fields: dict[str, str] = {}
    last = None
    for line in text.split("\n"):
        if not line.strip():
            if fields:
                yield fields
            fields, last = {}, None
        elif line[0] in " \t":
            if last is not None:
                fields[last] += "\n" + line
        elif ":" in line:
            last, value = line.split(":", 1)
            fields[last] = value.strip()
    if fields:
        yield fields


def long_description(lines: list[str]) -> list[str]:
    """Debian policy 5.6.13: ' .' is a blank line; lines with one leading space are wrapped text
    (joined into paragraphs); two or more spaces mark verbatim lines (kept as they are)."""
    paragraphs: list[str] = []
    current: list[str] = []

    def flush():
        if current:
            paragraphs.append(" ".join(current))
            current.clear()

    for line in lines:
        body = line[1:] if line[:1] in " \t" else line
        if body.strip() == ".":
            flush()
        elif body[:1] in " \t":
            flush()
            paragraphs.append(body.strip())
        else:
            current.append(body.strip())
    flush()
    return [p for p in paragraphs if p]


def apt_pairs(counts: SourceCounts, lists_dir: Path = DEFAULT_LISTS, progress: bool | None = None) -> Iterator[RawPair]:
    from tqdm.auto import tqdm

    lists_dir = Path(lists_dir)
    refuse_reserved(lists_dir, "--apt-lists")
    kind, files = find_lists(lists_dir)
    field_name = "Description-en" if kind == "translation" else "Description"
    found = 0
    bar = tqdm(desc="apt descriptions", unit="desc", disable=None if progress is None else not progress, leave=False)
    try:
        for path in files:
            for stanza in stanzas(read_text(path)):
                value = stanza.get(field_name)
                if value is None:
                    continue
                synopsis, *rest = value.split("\n")
                paragraphs = long_description(rest)
                if not paragraphs:
                    counts.skipped["no_long_description"] += 1
                    continue
                found += 1
                bar.update()
                package = stanza.get("Package", "?")
                yield RawPair(query=synopsis.strip(), positive="\n".join(paragraphs),
                              doc_key="apt:" + normalized(paragraphs[0]), origin=f"apt:{package}")
    finally:
        bar.close()
    if not found:
        raise DataFileError(f"the {kind} lists in {lists_dir} hold no long descriptions; " + (
            HOW_TO_FETCH if kind == "packages" else "are they truncated?"))
