"""Turn the paths given to ``index add`` into documents (id, text, source), lazily.

Which files and what text come from ``diffembed.sources``; what is the index's own is the ids.

A file's document id is a function of where the file is, not of how it was named on the command
line or of the working directory: its path relative to the index's *files root* (recorded by the
first ``index add``: the folder holding the first file or folder given), or its absolute path when it
lies outside that root. So ``corp`` then ``corp/x.txt`` name one document ``corp/x.txt``, and re-adding
a folder from elsewhere replaces rather than duplicates. A jsonl record is named by its ``_id`` (else ``id``).
A document's source is its file's absolute path (``path:line`` for a jsonl record).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from diffembed.errors import DataFileError
from diffembed.jsonl import read_jsonl
from diffembed.sources import INDEX_FILES, file_texts, list_files, location, record_id, record_text


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


def default_root(paths: Sequence[str | Path]) -> Path:
    """The files root an index records on its first add: the folder holding the first folder or
    non-jsonl file given (jsonl records carry their own ids), else the first path."""
    named = [p for p in paths if Path(p).is_dir() or INDEX_FILES.kind(p) != "jsonl"]
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
    """The files ``index add`` reads (folders expanded, every path checked first), with their ids."""
    files = list_files(paths, INDEX_FILES)
    root = Path(root) if root is not None else default_root(paths)
    return [SourceFile(p, doc_id_for(p, root)) for p in files]


def files_under(folder: str | Path) -> str:
    """The source prefix of the documents read from files under ``folder``."""
    return Path(folder).resolve().as_posix().rstrip("/") + "/"


def check_documents(files: Sequence[SourceFile]) -> None:
    """Read every jsonl record's id once before anything is written: a malformed record or an id
    used twice (in the records or by a file) fails the run while nothing is stored yet."""
    seen: dict[str, str] = {}
    for f in files:
        if INDEX_FILES.kind(f.path) != "jsonl":
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
        if INDEX_FILES.kind(f.path) == "jsonl":  # a broken record is an error: its id is unknown, so it cannot be skipped
            yield from _jsonl_documents(f.path)
            continue
        for _, text in file_texts(f.path, skipped=skipped):
            yield SourceDocument(f.id_base, text, f.source)


def _jsonl_documents(path: Path) -> Iterator[SourceDocument]:
    where = location(path).as_posix()
    for n, rec in read_jsonl(path):
        doc_id = record_id(rec)
        if doc_id is None or (isinstance(doc_id, str) and not doc_id.strip()):
            raise DataFileError(f"{path}:{n}: record has no '_id'")
        body = record_text(rec, "text", f"{path}:{n}")
        title = rec.get("title")
        if isinstance(title, str) and title.strip() and not body.lstrip().startswith(title.strip()):
            body = f"{title.strip()}\n\n{body}"  # BEIR keeps titles apart; they help retrieval
        yield SourceDocument(str(doc_id), body, f"{where}:{n}")
