"""Turn the paths given to ``index add`` into documents (id, text, source), lazily.

A file's document id is a function of where the file is, not of how it was named on the command
line or of the working directory: its path relative to the index's *files root* (recorded by the
first ``index add``: the folder holding the first file or folder given), or its absolute path when it
lies outside that root. So ``corp`` then ``corp/x.txt`` name one document ``corp/x.txt``, and re-adding
a folder from elsewhere replaces rather than duplicates. A jsonl record is named by its ``_id``.
A document's source is its file's absolute path (``path:line`` for a jsonl record).
"""

from __future__ import annotations

import html.parser
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from diffembed.errors import DataFileError
from diffembed.jsonl import read_jsonl

TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst")
HTML_SUFFIXES = (".html", ".htm")
JSONL_SUFFIXES = (".jsonl",)
SUFFIXES = TEXT_SUFFIXES + HTML_SUFFIXES + JSONL_SUFFIXES


@dataclass
class SourceDocument:
    doc_id: str
    text: str
    source: str


@dataclass
class SourceFile:
    path: Path
    id_base: str  # the document id (plain files) or a label (jsonl, whose records carry ids)
    source: str = ""  # the absolute path: one file has one, however it was named

    def __post_init__(self):
        self.source = self.source or location(self.path).as_posix()


def location(path: str | Path) -> Path:
    """A file's absolute path with its folder's symlinks and ``..`` resolved (the file itself kept)."""
    path = Path(path)
    if path.name in ("", ".", ".."):
        return path.resolve()
    return path.parent.resolve() / path.name


def default_root(paths: Sequence[str | Path]) -> Path:
    """The files root an index records on its first add: the folder holding the first folder or
    non-jsonl file given (jsonl records carry their own ids), else the first path."""
    named = [p for p in paths if Path(p).is_dir() or file_kind(Path(p)) != "jsonl"]
    return location((named or paths)[0]).parent


def doc_id_for(path: str | Path, root: str | Path | None) -> str:
    """A file's document id: its path under ``root``, or its absolute path outside it (or without one)."""
    where = location(path)
    if root is not None:
        try:
            return where.relative_to(Path(root)).as_posix()
        except ValueError:
            pass
    return where.as_posix()


def collect_files(paths: Sequence[str | Path], root: str | Path | None = None) -> list[SourceFile]:
    """Expand folders (recursively, supported suffixes only, sorted) and check every path first.

    A file reached twice (its folder and itself, or two spellings of one path) is listed once."""
    if not paths:
        raise DataFileError("give at least one file or folder to add")
    root = Path(root) if root is not None else default_root(paths)
    out: list[SourceFile] = []
    seen: set[str] = set()
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise DataFileError(f"{path}: no such file or folder")
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and file_kind(p) and not is_hidden(p, path))
        elif file_kind(path):
            found = [path]
        else:
            raise DataFileError(f"{path}: unsupported file type (use {', '.join(SUFFIXES)})")
        for p in found:
            f = SourceFile(p, doc_id_for(p, root))
            if f.source not in seen:
                seen.add(f.source)
                out.append(f)
    return out


def files_under(folder: str | Path) -> str:
    """The source prefix of the documents read from files under ``folder``."""
    return Path(folder).resolve().as_posix().rstrip("/") + "/"


def check_documents(files: Sequence[SourceFile]) -> None:
    """Read every jsonl record's id once before anything is written: a malformed record or an id
    used twice (in the records or by a file) fails the run while nothing is stored yet."""
    seen: dict[str, str] = {}
    for f in files:
        if file_kind(f.path) != "jsonl":
            items = [(f.id_base, f.source)]
        else:
            items = ((doc.doc_id, doc.source) for doc in _jsonl_documents(f.path))
        for doc_id, source in items:
            if doc_id in seen:
                raise DataFileError(f"document id '{doc_id}' appears twice ({seen[doc_id]} and {source})")
            seen[doc_id] = source


def read_documents(files: Sequence[SourceFile], skipped: list[str] | None = None) -> Iterator[SourceDocument]:
    """Yield documents file by file. Undecodable text files are skipped and named in ``skipped``."""
    for f in files:
        kind = file_kind(f.path)
        if kind == "jsonl":  # a broken record is an error: its id is unknown, so it cannot be skipped safely
            yield from _jsonl_documents(f.path)
            continue
        try:
            text = f.path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError:
            if skipped is not None:
                skipped.append(f"{f.path} (not UTF-8)")
            continue
        except OSError as exc:
            raise DataFileError(f"cannot read {f.path}: {exc}") from exc
        yield SourceDocument(f.id_base, html_to_text(text) if kind == "html" else text, f.source)


def _jsonl_documents(path: Path) -> Iterator[SourceDocument]:
    where = location(path).as_posix()
    for n, rec in read_jsonl(path):
        doc_id, body = rec.get("_id", rec.get("id")), rec.get("text")
        if doc_id is None or (isinstance(doc_id, str) and not doc_id.strip()):
            raise DataFileError(f"{path}:{n}: record has no '_id'")
        if not isinstance(body, str):
            raise DataFileError(f"{path}:{n}: record has no string 'text'")
        title = rec.get("title")
        if isinstance(title, str) and title.strip() and not body.lstrip().startswith(title.strip()):
            body = f"{title.strip()}\n\n{body}"  # BEIR keeps titles apart; they help retrieval
        yield SourceDocument(str(doc_id), body, f"{where}:{n}")


def file_kind(path: Path) -> str | None:
    """jsonl, html or text by suffix; None for anything else."""
    name = path.name.lower()
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(HTML_SUFFIXES):
        return "html"
    if name.endswith(TEXT_SUFFIXES):
        return "text"
    return None


def is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


class _TextExtractor(html.parser.HTMLParser):
    """Visible text of an HTML page: script/style dropped, block elements become line breaks."""

    BLOCKS = {"p", "div", "br", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "table",
              "section", "article", "pre", "blockquote", "dt", "dd", "title", "header", "footer"}
    SKIP = {"script", "style", "noscript", "template"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag, attrs):
        if tag == "pre":
            self.pre += 1
        if tag in self.SKIP:
            self.skip += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_endtag(self, tag):
        if tag == "pre":
            self.pre = max(0, self.pre - 1)
        if tag in self.SKIP:
            self.skip = max(0, self.skip - 1)
        elif tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_data(self, data):
        if not self.skip:
            self.parts.append(re.sub(r"\s+", " ", data) if self.pre == 0 else data)

    pre = 0


def html_to_text(markup: str) -> str:
    parser = _TextExtractor()
    parser.feed(markup)
    parser.close()
    lines = [" ".join(line.split()) for line in "".join(parser.parts).split("\n")]
    text, blank = [], False
    for line in lines:
        if line:
            text.append(line)
            blank = False
        elif not blank and text:
            text.append("")
            blank = True
    return "\n".join(text).strip()
