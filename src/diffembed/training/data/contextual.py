"""Contextual training documents (`diffembed data contextual`): queries that need their document.

A page (python3.11-doc or linux-doc reST, or a man page) becomes one document: its sections' texts,
headings removed, in order, as ``chunks``; each section's query is "Page title: Heading" (a man page:
"name(section): HEADING"), which names what the chunk's own text does not, so a chunk embedded alone
cannot match it and one embedded with its document's context can (DESIGN.md section 3). The
document's other chunks are each query's same-document negative pool.

A section longer than ``max_chunk_chars`` is cut into several chunks at paragraph boundaries (a
paragraph longer than the limit at sentence ends); its query points at its first chunk, and
``section_end`` (exclusive) says where the section's pieces end, so training keeps them out of the
query's negatives. Sections shorter than ``min_chunk_chars`` are dropped whole, and a document left
with fewer than 2 sections with a query is dropped. Output: ``train.jsonl``, ``dev.jsonl`` (``id``,
``source``, ``title``, ``chunks``, ``queries`` [{``query``, ``chunk``, ``section_end`` if split}]),
``dev-contextual/`` (the dev documents as a contextual eval dataset) and ``build.json``, published
in one rename like `data pairs`.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from diffembed.errors import InputError
from diffembed.training.data import man_pages, rst_sections
from diffembed.training.data.pairs import check_out_dir, clean_space, digest, is_dev, normalized, truncate
from diffembed.training.data.reserved import reserved_reason
from diffembed.training.data.textio import read_text, strip_compression

SOURCES = ("python-doc", "linux-doc", "man")
FORMAT_VERSION = 2  # 2: queries of a split section carry section_end
DROP_REASONS = ("section_too_short", "query_too_short", "query_too_long", "ambiguous_query",
                "too_few_sections", "duplicate_document")
# man sections that are no passage of prose: NAME is the title itself, the rest are code or lists
_MAN_SKIP = {"NAME", "SYNOPSIS", "SEE ALSO", "COLOPHON"}


@dataclass
class RawDoc:
    """A page as a source found it: (heading, body) sections in order. ``doc_key`` is the same key
    `data pairs` splits by, so a page is dev in both builds or in neither."""

    doc_key: str
    title: str
    sections: list[tuple[str, str]]
    lead: bool = True  # the first section is the page's lead, headed by the title itself (reST)


@dataclass
class Limits:
    min_chunk_chars: int = 80
    max_chunk_chars: int = 1500
    min_query_chars: int = 8
    max_query_chars: int = 300

    def check(self) -> None:
        for name in ("min_chunk_chars", "max_chunk_chars", "min_query_chars", "max_query_chars"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1")
        if self.min_chunk_chars > self.max_chunk_chars:
            raise InputError("--min-chunk-chars is above --max-chunk-chars")
        if self.min_query_chars > self.max_query_chars:
            raise InputError("--min-query-chars is above --max-query-chars")


@dataclass
class Counts:
    """Per source: pages read, documents kept (train/dev), their chunks and queries, and why the rest went."""

    pages: int = 0
    documents: int = 0
    train: int = 0
    dev: int = 0
    chunks: int = 0
    queries: int = 0
    split_sections: int = 0  # sections cut into more than one chunk
    dropped: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict:
        return {"pages": self.pages, "documents": self.documents, "train": self.train, "dev": self.dev,
                "chunks": self.chunks, "queries": self.queries, "split_sections": self.split_sections,
                "dropped": {k: self.dropped[k] for k in DROP_REASONS if self.dropped[k]},
                "skipped": dict(sorted(self.skipped.items()))}


@dataclass
class Doc:
    id: str
    source: str
    title: str
    chunks: list[str]
    queries: list[dict]
    doc_key: str

    def row(self) -> dict:
        return {"id": self.id, "source": self.source, "title": self.title, "chunks": self.chunks,
                "queries": self.queries}


# ------------------------------------------------------------------------------------------ sources
def rst_docs(counts: Counts, root: Path, *, source: str, python_doc: bool = False,
             progress: bool | None = None) -> Iterator[RawDoc]:
    """Pages under a reST tree; python-doc's ``faq/`` and any reserved file are skipped and counted."""
    from tqdm.auto import tqdm

    root = Path(root)
    files = rst_sections.check_root(root, source, python_doc)
    for path in tqdm(files, desc=source, unit="page", disable=None if progress is None else not progress, leave=False):
        if reserved_reason(path, python_doc_root=root if python_doc else None):
            counts.skipped["reserved_for_evaluation"] += 1
            continue
        page = rst_sections.parse_page(read_text(path))
        if page is None:
            counts.skipped["page_without_headings"] += 1
            continue
        rel = path.relative_to(root).as_posix()
        yield RawDoc(f"{source}:{rel}", page.title, [(s.title, s.body) for s in page.sections])


def man_docs(counts: Counts, *, dirs: list[Path] | None = None,
             packages: tuple[str, ...] = man_pages.DEFAULT_PACKAGES, progress: bool | None = None) -> Iterator[RawDoc]:
    """man(7) pages: title "name(section)", one section per ``.SH`` but NAME, SYNOPSIS, SEE ALSO, COLOPHON."""
    from tqdm.auto import tqdm

    files = man_pages.man_files(dirs, packages)
    for path in tqdm(files, desc="man", unit="page", disable=None if progress is None else not progress, leave=False):
        if reserved_reason(path):
            counts.skipped["reserved_for_evaluation"] += 1
            continue
        sections, kind = man_pages.man_sections(read_text(path))
        if kind != "man":
            counts.skipped[kind] += 1
            continue
        page = strip_compression(path.name)
        name, _, section = page.rpartition(".")
        body = [(head, man_pages._paragraphs(lines)) for head, lines in sections.items() if head not in _MAN_SKIP]
        yield RawDoc(f"man:{page}", f"{name}({section})", body, lead=False)


# ------------------------------------------------------------------------------------------ rules
def split_chunks(text: str, limit: int) -> list[str]:
    """``text`` in pieces of at most ``limit`` characters, cut between paragraphs (lines) where one
    fits, else at a sentence end (``truncate``); consecutive paragraphs share a piece while they fit."""
    pieces: list[str] = []
    for para in text.split("\n"):
        while len(para) > limit:
            head = truncate(para, limit, limit // 2)
            pieces.append(head)
            para = para[len(head):].strip()
        if para:
            pieces.append(para)
    chunks: list[str] = []
    for piece in pieces:
        if chunks and len(chunks[-1]) + 1 + len(piece) <= limit:
            chunks[-1] += "\n" + piece
        else:
            chunks.append(piece)
    return chunks


def _query(title: str, heading: str, first: bool) -> str:
    """The page's lead section is found by the title alone; any other by "Title: Heading"."""
    title, heading = " ".join(title.split()), " ".join(heading.split())
    return title if first or normalized(heading) == normalized(title) else f"{title}: {heading}"


def make_doc(raw: RawDoc, source: str, counts: Counts, limits: Limits) -> Doc | None:
    """One document from a page, or None (counted) when fewer than 2 of its sections are usable."""
    chunks: list[str] = []
    queries: list[dict] = []
    for k, (heading, body) in enumerate(raw.sections):
        body = clean_space(body)
        if not body:
            continue  # an empty section (a heading right above its first subsection) is no chunk
        if len(body) < limits.min_chunk_chars:
            counts.dropped["section_too_short"] += 1
            continue
        query = _query(raw.title, heading, raw.lead and k == 0)
        if len(query) < limits.min_query_chars:
            counts.dropped["query_too_short"] += 1
            continue
        if len(query) > limits.max_query_chars:
            counts.dropped["query_too_long"] += 1
            continue
        pieces = split_chunks(body, limits.max_chunk_chars)
        counts.split_sections += len(pieces) > 1
        query_row = {"query": query, "chunk": len(chunks)}
        if len(pieces) > 1:  # the section's other pieces: no negatives for its query (the contextual stage masks them)
            query_row["section_end"] = len(chunks) + len(pieces)
        queries.append(query_row)
        chunks.extend(pieces)
    return Doc(f"{source}-{digest(raw.doc_key).hex()}", source, " ".join(raw.title.split()), chunks, queries,
               raw.doc_key)


SourceFn = Callable[[Counts], Iterable[RawDoc]]


def select_docs(sources: dict[str, SourceFn], limits: Limits) -> tuple[list[Doc], dict[str, Counts]]:
    """Run the sources in order and keep the documents that pass every rule.

    Per document: short sections and out-of-limit queries go; a query that two sections of the
    document share goes (both); a document whose chunks repeat an earlier document's is a duplicate.
    Across documents: a query found in more than one document is ambiguous and goes everywhere (the
    dev set judges one chunk per query). Then a document needs 2 queries left, or it goes.
    """
    limits.check()
    counts = {name: Counts() for name in sources}
    seen: set[bytes] = set()
    docs: list[Doc] = []
    for name, source in sources.items():
        c = counts[name]
        for raw in source(c):
            c.pages += 1
            doc = make_doc(raw, name, c, limits)
            key = digest(normalized("\n".join(doc.chunks)), 16)
            if doc.chunks and key in seen:
                c.dropped["duplicate_document"] += 1
                continue
            seen.add(key)
            docs.append(doc)
    owners: dict[str, set[str]] = defaultdict(set)
    for doc in docs:
        per_doc = Counter(normalized(q["query"]) for q in doc.queries)
        for q in doc.queries:
            owners[normalized(q["query"])].add(doc.id if per_doc[normalized(q["query"])] == 1 else "")
    kept: list[Doc] = []
    for doc in docs:
        c = counts[doc.source]
        queries = [q for q in doc.queries if owners[normalized(q["query"])] == {doc.id}]
        c.dropped["ambiguous_query"] += len(doc.queries) - len(queries)
        doc.queries = queries
        if len(queries) < 2:
            c.dropped["too_few_sections"] += 1
            continue
        kept.append(doc)
    kept.sort(key=lambda d: d.id)
    return kept, counts


# ------------------------------------------------------------------------------------------ build
@dataclass
class BuildResult:
    out_dir: Path
    train: int
    dev: int
    sources: dict[str, Counts]
    settings: dict

    def to_dict(self) -> dict:
        return {"out_dir": str(self.out_dir), "train": self.train, "dev": self.dev,
                "dev_contextual": str(self.out_dir / "dev-contextual") if self.dev else None,
                "sources": {name: c.to_dict() for name, c in self.sources.items()}, "settings": self.settings}


def _jsonl(rows: Iterable[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def dev_dataset(dev: list[Doc]) -> tuple[dict[str, dict], dict[str, str], dict[str, dict[str, int]]]:
    """The dev documents as a contextual eval dataset: query ``{doc}-q{n}`` judges chunk ``{doc}_{chunk}``."""
    from diffembed.eval.datasets import chunk_id

    documents = {d.id: {"title": d.title, "chunks": d.chunks} for d in dev}
    queries, qrels = {}, {}
    for d in dev:
        for n, q in enumerate(d.queries):
            queries[f"{d.id}-q{n}"] = q["query"]
            qrels[f"{d.id}-q{n}"] = {chunk_id(d.id, q["chunk"]): 1}
    return documents, queries, qrels


def build_contextual(out: str | Path, sources: list[str] | tuple[str, ...] = SOURCES, *,
                     limits: Limits | None = None, dev_fraction: float = 0.02, python_doc: Path | None = None,
                     linux_doc: Path | None = None, man_dirs: list[Path] | None = None,
                     man_packages: tuple[str, ...] = man_pages.DEFAULT_PACKAGES,
                     progress: bool | None = None) -> BuildResult:
    """Sources run in the fixed order of SOURCES (the output does not depend on the command line);
    every source is checked before any is parsed, and ``out`` is published in one rename."""
    from diffembed.atomic import building_dir
    from diffembed.eval.datasets import write_contextual_dataset

    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise InputError(f"unknown source '{unknown[0]}'; choose from {', '.join(SOURCES)}")
    if not sources:
        raise InputError("no source chosen")
    if not 0.0 <= dev_fraction < 1.0:
        raise InputError("--dev-fraction must be in [0, 1)")
    limits = limits or Limits()
    limits.check()
    out = Path(out)
    check_out_dir(out, "contextual")
    python_doc = Path(python_doc) if python_doc else rst_sections.PYTHON_DOC
    linux_doc = Path(linux_doc) if linux_doc else rst_sections.LINUX_DOC
    if "python-doc" in sources:
        rst_sections.check_root(python_doc, "python-doc", python_doc=True)
    if "linux-doc" in sources:
        rst_sections.check_root(linux_doc, "linux-doc")
    if "man" in sources:
        man_pages.man_files(man_dirs, tuple(man_packages))
    makers: dict[str, SourceFn] = {
        "python-doc": lambda c: rst_docs(c, python_doc, source="python-doc", python_doc=True, progress=progress),
        "linux-doc": lambda c: rst_docs(c, linux_doc, source="linux-doc", progress=progress),
        "man": lambda c: man_docs(c, dirs=man_dirs, packages=tuple(man_packages), progress=progress),
    }
    chosen = {name: makers[name] for name in SOURCES if name in sources}
    docs, counts = select_docs(chosen, limits)
    train = [d for d in docs if not is_dev(d.doc_key, dev_fraction)]
    dev = [d for d in docs if is_dev(d.doc_key, dev_fraction)]
    for split, group in (("train", train), ("dev", dev)):
        for d in group:
            c = counts[d.source]
            c.documents += 1
            setattr(c, split, getattr(c, split) + 1)
            c.chunks += len(d.chunks)
            c.queries += len(d.queries)
    settings = {"sources": list(chosen), "dev_fraction": dev_fraction, **vars(limits),
                "inputs": {name: str(path) for name, path in (("python-doc", python_doc), ("linux-doc", linux_doc))
                           if name in chosen}}
    if "man" in chosen:
        settings["inputs"]["man"] = [str(d) for d in man_dirs] if man_dirs else [f"package {p}" for p in man_packages]
    result = BuildResult(out, len(train), len(dev), counts, settings)
    check_out_dir(out, "contextual")
    with building_dir(out) as tmp:
        (tmp / "train.jsonl").write_text(_jsonl(d.row() for d in train), encoding="utf-8")
        (tmp / "dev.jsonl").write_text(_jsonl(d.row() for d in dev), encoding="utf-8")
        if dev:
            write_contextual_dataset(tmp / "dev-contextual", *dev_dataset(dev))
        summary = {"kind": "contextual", "format_version": FORMAT_VERSION, **result.to_dict()}
        (tmp / "build.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return result
