"""Which files, what kind, what text, which id: the one place that reads the user's text files.

Two families of files, each with the kinds its commands accept:

* Document files (``index add``, pretraining corpora): a plain or HTML file is one document, a jsonl
  record or parquet row one more. ``INDEX_FILES`` is what ``index add`` reads; ``CORPUS_FILES`` adds
  each of those gzipped, and parquet.
* Record files (``encode``, ``bulk-embed``): ``txt`` holds one text per line, jsonl and parquet one
  record per line or row; ``INPUT_FORMATS`` names them, ``record_format`` tells them apart.

A record's id is its first non-null field of ``ID_FIELDS``. Everything here fails with a one-line
``DataFileError`` naming the file (and line or row) at fault. pyarrow is imported only to read parquet.
"""

from __future__ import annotations

import gzip
import html.parser
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from diffembed.errors import DataFileError
from diffembed.jsonl import read_jsonl

ID_FIELDS = ("_id", "id")
INPUT_FORMATS = ("auto", "txt", "jsonl", "parquet")
PARQUET_BATCH_ROWS = 1024


class FileKinds:
    """The file-name endings a command reads, each mapped to a kind (matched case-insensitively)."""

    def __init__(self, endings: Mapping[str, str]):
        self.endings = dict(endings)

    def kind(self, path: str | Path) -> str | None:
        name = Path(path).name.lower()
        return next((kind for end, kind in self.endings.items() if name.endswith(end)), None)

    def names(self) -> str:
        return ", ".join(self.endings)


_DOCUMENTS = {".txt": "text", ".md": "text", ".markdown": "text", ".rst": "text",
              ".html": "html", ".htm": "html", ".jsonl": "jsonl"}
INDEX_FILES = FileKinds(_DOCUMENTS)
CORPUS_FILES = FileKinds({**{end + gz: kind for end, kind in _DOCUMENTS.items() for gz in ("", ".gz")},
                          ".parquet": "parquet"})
RECORD_FILES = FileKinds({".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet",
                          ".txt": "txt", ".text": "txt"})


# ---------------------------------------------------------------------------- which files
def location(path: str | Path) -> Path:
    """A file's absolute path with its folder's symlinks and ``..`` resolved (the file itself kept)."""
    path = Path(path)
    if path.name in ("", ".", ".."):
        return path.resolve()
    return path.parent.resolve() / path.name


def is_hidden(path: Path, folder: Path, prefixes: tuple[str, ...] = (".",)) -> bool:
    """Whether a name below ``folder`` on the way to ``path`` starts with one of ``prefixes``."""
    return any(part.startswith(prefixes) for part in path.relative_to(folder).parts)


def folder_files(folder: Path, kinds: FileKinds | None, hidden: tuple[str, ...] = (".",)) -> list[Path]:
    """The files under ``folder`` (recursively, sorted) of ``kinds`` (None: any), hidden ones skipped."""
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and (kinds is None or kinds.kind(p)) and not is_hidden(p, folder, hidden))


def list_files(paths: Sequence[str | Path], kinds: FileKinds) -> list[Path]:
    """Files given directly (any name, hidden too) or found in folders, each of ``kinds``.

    Every path is checked before anything is read; a file reached twice (its folder and itself, or
    two spellings of one path) is listed once, as first named."""
    if not paths:
        raise DataFileError("give at least one file or folder")
    out: dict[Path, Path] = {}
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise DataFileError(f"{path}: no such file or folder")
        if path.is_dir():
            found = folder_files(path, kinds)
        elif kinds.kind(path):
            found = [path]
        else:
            raise DataFileError(f"{path}: unsupported file type (use {kinds.names()})")
        for p in found:
            out.setdefault(location(p), p)
    return list(out.values())


def check_format(fmt: str) -> str:
    if fmt not in INPUT_FORMATS:
        raise DataFileError(f"unknown input format '{fmt}'; choose one of {', '.join(INPUT_FORMATS)}")
    return fmt


def record_format(name: str | Path, fmt: str = "auto") -> str:
    """The format of a record file (a URI's by its path): ``fmt`` unless auto, else by its ending
    (none at all: txt)."""
    if check_format(fmt) != "auto":
        return fmt
    path = Path(str(name).split("://")[-1])
    kind = RECORD_FILES.kind(path) or ("txt" if not path.suffix else None)
    if kind is None:
        raise DataFileError(f"cannot tell the format of {name} from its extension; pass --input-format")
    return kind


# ---------------------------------------------------------------------------- what text
def file_text(path: Path) -> str | None:
    """A plain or HTML file's text (gunzipped if ``.gz``; HTML reduced to its visible text), or None
    when it is not UTF-8 (a byte-order mark is dropped)."""
    try:
        data = path.read_bytes()
        text = (gzip.decompress(data) if path.name.lower().endswith(".gz") else data).decode("utf-8-sig")
    except UnicodeDecodeError:
        return None
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError; a truncated .gz an EOFError
        raise DataFileError(f"cannot read {path}: {exc}") from exc
    return html_to_text(text) if CORPUS_FILES.kind(path) == "html" else text


def record_text(record: dict, field: str, where: str) -> str:
    """A record's text ``field``; ``where`` (file:line) names it in the error."""
    if field not in record:
        raise DataFileError(f"{where}: record has no '{field}'")
    text = record[field]
    if not isinstance(text, str):
        raise DataFileError(f"{where}: '{field}' is {type(text).__name__}, not a string")
    return text


def record_id(record: dict):
    """The first non-null of a record's ``ID_FIELDS``, or None."""
    return next((record[k] for k in ID_FIELDS if record.get(k) is not None), None)


def file_texts(path: Path, text_field: str = "text", skipped: list[str] | None = None) -> Iterator[tuple[int | None, str]]:
    """The texts of a document file: ``(None, text)`` for a plain/HTML file, ``(i, text)`` for the
    i-th record (0-based) of a jsonl or parquet file (a null parquet value reads as empty). A file
    that is not UTF-8 yields nothing and is named in ``skipped``; a broken record file is an error."""
    kind = CORPUS_FILES.kind(path)
    if kind == "jsonl":
        for i, (n, rec) in enumerate(read_jsonl(path)):
            yield i, record_text(rec, text_field, f"{path}:{n}")
    elif kind == "parquet":
        for i, text in enumerate(parquet_texts(path, text_field)):
            yield i, text or ""
    else:
        text = file_text(path)
        if text is not None:
            yield None, text
        elif skipped is not None:
            skipped.append(f"{path} (not UTF-8)")


def text_lines(data: bytes, path: str | Path) -> list[str]:
    """A txt record file's texts, one per line.

    Split on "\\n" only (a line's trailing "\\r" dropped): str.splitlines would also split inside a
    line at form feeds or U+2028, shifting ids and line numbers away from the file's real lines."""
    try:
        lines = data.decode("utf-8").split("\n")
    except UnicodeDecodeError as exc:
        raise DataFileError(f"{path} is not valid UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    if lines and lines[-1] == "":
        lines.pop()
    lines = [line.removesuffix("\r") for line in lines]
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            raise DataFileError(f"{path}:{n}: empty line; a txt input holds one non-empty text per line")
    return lines


def parquet_rows(path: Path, columns: Sequence[str] | None = None) -> Iterator[tuple[int, dict]]:
    """(row number from 1, row) read batch by batch, so a large file is never whole in memory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        n = 0
        for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns):
            for row in batch.to_pylist():
                n += 1
                yield n, row
    except (OSError, pa.ArrowException) as exc:
        raise DataFileError(f"cannot read {path} as parquet: {exc}") from exc


def parquet_texts(path: Path, field: str) -> Iterator[str | None]:
    """One string column of a parquet file; its absence or another type is an error."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as exc:
        raise DataFileError(f"cannot read {path} as parquet: {exc}") from exc
    if field not in schema.names:
        raise DataFileError(f"{path}: no column '{field}' (columns: {', '.join(schema.names)})")
    kind = schema.field(field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)):
        raise DataFileError(f"{path}: column '{field}' is {kind}, not a string")
    for _, row in parquet_rows(path, [field]):
        yield row[field]


# ---------------------------------------------------------------------------- HTML
class _TextExtractor(html.parser.HTMLParser):
    """Visible text of an HTML page: script/style dropped, block elements become line breaks."""

    BLOCKS = {"p", "div", "br", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "table",
              "section", "article", "pre", "blockquote", "dt", "dd", "title", "header", "footer"}
    SKIP = {"script", "style", "noscript", "template"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip = 0
        self.pre = 0

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


def html_to_text(markup: str) -> str:
    """The visible text of a page, one paragraph per block, blank lines between them."""
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
