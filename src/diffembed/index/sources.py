"""Turn the paths given to ``index add`` into documents (id, text, source), lazily.

Document ids do not depend on the working directory, so re-adding the same folder from elsewhere
replaces rather than duplicates: a file given directly is named by its file name, a file found in a
folder by ``<folder name>/<path inside the folder>``, a jsonl record by its ``_id``.
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


def collect_files(paths: Sequence[str | Path]) -> list[SourceFile]:
    """Expand folders (recursively, supported suffixes only, sorted) and check every path first."""
    if not paths:
        raise DataFileError("give at least one file or folder to add")
    out: list[SourceFile] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise DataFileError(f"{path}: no such file or folder")
        if path.is_dir():
            root = path.resolve().name or "root"
            found = sorted(p for p in path.rglob("*") if p.is_file() and file_kind(p) and not is_hidden(p, path))
            out.extend(SourceFile(p, f"{root}/{p.relative_to(path).as_posix()}") for p in found)
        elif file_kind(path):
            out.append(SourceFile(path, path.name))
        else:
            raise DataFileError(f"{path}: unsupported file type (use {', '.join(SUFFIXES)})")
    return out


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
        yield SourceDocument(f.id_base, html_to_text(text) if kind == "html" else text, str(f.path))


def _jsonl_documents(path: Path) -> Iterator[SourceDocument]:
    for n, rec in read_jsonl(path):
        doc_id, body = rec.get("_id", rec.get("id")), rec.get("text")
        if doc_id is None or (isinstance(doc_id, str) and not doc_id.strip()):
            raise DataFileError(f"{path}:{n}: record has no '_id'")
        if not isinstance(body, str):
            raise DataFileError(f"{path}:{n}: record has no string 'text'")
        title = rec.get("title")
        if isinstance(title, str) and title.strip() and not body.lstrip().startswith(title.strip()):
            body = f"{title.strip()}\n\n{body}"  # BEIR keeps titles apart; they help retrieval
        yield SourceDocument(str(doc_id), body, f"{path}:{n}")


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
