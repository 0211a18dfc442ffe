"""Evaluation datasets on disk (README.md, Evaluation: Formats), read with checks and written atomically.

retrieval (BEIR):  corpus.jsonl (_id, title, text), queries.jsonl (_id, text), qrels/<split>.tsv
contextual (ConTEB-like): documents.jsonl (_id, title, chunks), queries.jsonl, qrels/<split>.tsv whose
corpus-id is ``{doc_id}_{chunk_index}``.
qrels files have the header ``query-id<TAB>corpus-id<TAB>score``.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from diffembed.atomic import write_text
from diffembed.errors import DataFileError
from diffembed.jsonl import read_jsonl

Qrels = dict[str, dict[str, int]]


@dataclass
class RetrievalDataset:
    name: str
    corpus: dict[str, dict[str, str]]  # id -> {"title", "text"}
    queries: dict[str, str]
    qrels: Qrels
    kind: str = field(default="retrieval", init=False)

    def passage(self, doc_id: str) -> str:
        doc = self.corpus[doc_id]
        return f"{doc['title']} {doc['text']}".strip() if doc.get("title") else doc["text"]


@dataclass
class ContextualDataset:
    name: str
    documents: dict[str, dict]  # id -> {"title", "chunks": [str, ...]}
    queries: dict[str, str]
    qrels: Qrels
    kind: str = field(default="contextual", init=False)

    def chunk_texts(self) -> list[str]:
        """Every chunk, in the same order as ``chunk_ids``."""
        return [c for doc in self.documents.values() for c in doc["chunks"]]

    def chunk_ids(self) -> list[str]:
        return [chunk_id(d, i) for d, doc in self.documents.items() for i in range(len(doc["chunks"]))]


def chunk_id(doc_id: str, index: int) -> str:
    return f"{doc_id}_{index}"


def _field(path: Path, n: int, row: dict, key: str, kind: type = str):
    value = row.get(key)
    if not isinstance(value, kind) or (kind is str and key != "title" and not value.strip()):
        expected = "non-empty string" if kind is str else "string or integer"
        raise DataFileError(f"{path}:{n}: '{key}' must be a {expected}")
    return value


def _unique(path: Path, n: int, seen: dict, key: str) -> str:
    if key in seen:
        raise DataFileError(f"{path}:{n}: duplicate _id '{key}'")
    return key


def read_queries(path: Path) -> dict[str, str]:
    queries: dict[str, str] = {}
    for n, row in read_jsonl(path):
        qid = _unique(path, n, queries, str(_field(path, n, row, "_id", (str, int))))
        queries[qid] = _field(path, n, row, "text")
    return queries


def read_qrels(path: Path) -> Qrels:
    if not path.is_file():
        raise DataFileError(f"missing file {path}")
    qrels: Qrels = {}
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:3]] != ["query-id", "corpus-id", "score"]:
            raise DataFileError(f"{path}:1: expected the header 'query-id<TAB>corpus-id<TAB>score'")
        for n, row in enumerate(reader, start=2):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 3:
                raise DataFileError(f"{path}:{n}: expected 3 tab-separated columns")
            try:
                score = int(float(row[2]))
            except ValueError as exc:
                raise DataFileError(f"{path}:{n}: score '{row[2]}' is not a number") from exc
            qrels.setdefault(row[0].strip(), {})[row[1].strip()] = score
    return qrels


def _check_qrels(path: Path, qrels: Qrels, queries: dict[str, str], corpus_ids: set[str]) -> None:
    for qid, docs in qrels.items():
        if qid not in queries:
            raise DataFileError(f"{path}: query-id '{qid}' is not in queries.jsonl")
        for did in docs:
            if did not in corpus_ids:
                raise DataFileError(f"{path}: corpus-id '{did}' (query '{qid}') is not in the corpus")


def load_dataset(path: str | Path, split: str = "test") -> RetrievalDataset | ContextualDataset:
    root = Path(path)
    if not root.is_dir():
        raise DataFileError(f"dataset folder {root} does not exist")
    queries = read_queries(root / "queries.jsonl")
    qrels_path = root / "qrels" / f"{split}.tsv"
    if (root / "documents.jsonl").exists():
        documents: dict[str, dict] = {}
        for n, row in read_jsonl(root / "documents.jsonl"):
            did = _unique(root / "documents.jsonl", n, documents, str(_field(root / "documents.jsonl", n, row, "_id", (str, int))))
            chunks = row.get("chunks")
            if not isinstance(chunks, list) or not chunks or not all(isinstance(c, str) and c.strip() for c in chunks):
                raise DataFileError(f"{root / 'documents.jsonl'}:{n}: 'chunks' must be a non-empty list of non-empty strings")
            documents[did] = {"title": row.get("title") or "", "chunks": chunks}
        ds = ContextualDataset(root.name, documents, queries, read_qrels(qrels_path))
        _check_qrels(qrels_path, ds.qrels, queries, set(ds.chunk_ids()))
        return ds
    if (root / "corpus.jsonl").exists():
        corpus: dict[str, dict[str, str]] = {}
        for n, row in read_jsonl(root / "corpus.jsonl"):
            did = _unique(root / "corpus.jsonl", n, corpus, str(_field(root / "corpus.jsonl", n, row, "_id", (str, int))))
            corpus[did] = {"title": row.get("title") or "", "text": _field(root / "corpus.jsonl", n, row, "text")}
        ds = RetrievalDataset(root.name, corpus, queries, read_qrels(qrels_path))
        _check_qrels(qrels_path, ds.qrels, queries, set(corpus))
        return ds
    raise DataFileError(f"{root} has neither corpus.jsonl (retrieval) nor documents.jsonl (contextual)")


# ---------------------------------------------------------------------------- writing
def _jsonl(rows: Iterable[dict]) -> Iterator[str]:
    for row in rows:
        yield json.dumps(row, ensure_ascii=False) + "\n"


def _write_common(root: Path, queries: dict[str, str], qrels: Qrels, split: str) -> None:
    write_text(root / "queries.jsonl", _jsonl({"_id": q, "text": t} for q, t in queries.items()))
    rows = ["query-id\tcorpus-id\tscore\n"] + [f"{q}\t{d}\t{s}\n" for q, docs in qrels.items() for d, s in docs.items()]
    write_text(root / "qrels" / f"{split}.tsv", rows)


def write_retrieval_dataset(root: str | Path, corpus: dict[str, dict[str, str]], queries: dict[str, str],
                            qrels: Qrels, split: str = "test") -> Path:
    root = Path(root)
    write_text(root / "corpus.jsonl", _jsonl({"_id": d, "title": c.get("title", ""), "text": c["text"]} for d, c in corpus.items()))
    _write_common(root, queries, qrels, split)
    return root


def write_contextual_dataset(root: str | Path, documents: dict[str, dict], queries: dict[str, str],
                             qrels: Qrels, split: str = "test") -> Path:
    root = Path(root)
    write_text(root / "documents.jsonl", _jsonl({"_id": d, "title": doc.get("title", ""), "chunks": doc["chunks"]} for d, doc in documents.items()))
    _write_common(root, queries, qrels, split)
    return root
