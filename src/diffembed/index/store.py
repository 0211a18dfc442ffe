"""The index's source of truth: one SQLite file holding settings, documents, chunks and their vectors.

Why SQLite: it is transactional and needs no server. Each batch of documents is written in one
transaction (old chunks deleted and new ones inserted together), so a process killed at any moment
leaves either the previous state or the new one, never half a document. WAL mode lets a server
search while another process adds documents. Vectors sit next to their metadata as BLOBs (packed
sign bits for the first pass, int8 for rescoring); the in-memory search structure is a cache derived
from them (see ``vectors.py``) and tagged with the ``generation`` counter bumped by every write.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffembed.errors import IndexStoreError

DB_NAME = "index.sqlite"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    doc_id TEXT PRIMARY KEY,
    content_hash TEXT NOT NULL,
    source TEXT,
    n_chunks INTEGER NOT NULL,
    n_chars INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY,
    doc_id TEXT NOT NULL REFERENCES documents(doc_id),
    chunk_index INTEGER NOT NULL,
    start INTEGER NOT NULL,
    end INTEGER NOT NULL,
    text TEXT NOT NULL,
    bits BLOB NOT NULL,
    int8 BLOB NOT NULL,
    UNIQUE (doc_id, chunk_index)
);
"""


@dataclass
class ChunkRow:
    doc_id: str
    chunk_index: int
    start: int
    end: int
    text: str
    source: str | None = None


@dataclass
class NewDocument:
    """A document ready to store: its chunks and both vector forms, one row per chunk."""

    doc_id: str
    content_hash: str
    source: str | None
    n_chars: int
    spans: list[tuple[int, int]]
    texts: list[str]
    bits: np.ndarray  # (n_chunks, ceil(dim/8)) uint8, MSB-first sign bits
    int8: np.ndarray  # (n_chunks, dim) int8


class IndexStore:
    """Open (or create) the SQLite file of an index folder."""

    def __init__(self, folder: str | Path, *, create: bool = False):
        self.folder = Path(folder)
        self.path = self.folder / DB_NAME
        if not self.path.exists():
            if not create:
                raise IndexStoreError(f"{self.folder} is not a diffembed index (no {DB_NAME}); build one with 'diffembed index add'")
            if self.folder.exists() and not self.folder.is_dir():
                raise IndexStoreError(f"{self.folder} exists and is not a folder")
            self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a killed process loses nothing committed
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise IndexStoreError(f"cannot open index {self.path}: {exc}") from exc
        version = self.get_meta("schema_version")
        if version is None:
            with self.transaction():
                self._set_meta("schema_version", SCHEMA_VERSION)
                self._set_meta("generation", 0)
        elif int(version) != SCHEMA_VERSION:
            raise IndexStoreError(f"index {self.folder} has schema version {version}; this diffembed reads {SCHEMA_VERSION}")

    # ------------------------------------------------------------------ transactions and meta
    def transaction(self, write: bool = True):
        return _Transaction(self.db, write)

    def get_meta(self, key: str):
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def _set_meta(self, key: str, value) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def set_settings(self, settings: dict) -> None:
        with self.transaction():
            self._set_meta("settings", settings)

    @property
    def settings(self) -> dict | None:
        return self.get_meta("settings")

    @property
    def generation(self) -> int:
        return int(self.get_meta("generation") or 0)

    def _bump(self) -> None:
        self.db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")

    # ------------------------------------------------------------------ documents
    def content_hashes(self, doc_ids: Sequence[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for part in _batches(list(doc_ids), 500):
            marks = ",".join("?" * len(part))
            out.update(self.db.execute(f"SELECT doc_id, content_hash FROM documents WHERE doc_id IN ({marks})", part))
        return out

    def put_documents(self, docs: Iterable[NewDocument]) -> int:
        """Replace each document's chunks in one transaction. Returns the number of chunks written."""
        written = 0
        with self.transaction():
            for doc in docs:
                self._delete(doc.doc_id)
                self.db.execute(
                    "INSERT INTO documents (doc_id, content_hash, source, n_chunks, n_chars) VALUES (?, ?, ?, ?, ?)",
                    (doc.doc_id, doc.content_hash, doc.source, len(doc.texts), doc.n_chars),
                )
                self.db.executemany(
                    "INSERT INTO chunks (doc_id, chunk_index, start, end, text, bits, int8) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        (doc.doc_id, i, int(a), int(b), t, doc.bits[i].tobytes(), doc.int8[i].tobytes())
                        for i, ((a, b), t) in enumerate(zip(doc.spans, doc.texts))
                    ],
                )
                written += len(doc.texts)
            self._bump()
        return written

    def remove_documents(self, doc_ids: Sequence[str]) -> None:
        """Remove all or nothing: unknown ids are an error and nothing is deleted."""
        known = self.content_hashes(doc_ids)
        missing = [d for d in doc_ids if d not in known]
        if missing:
            shown = ", ".join(repr(m) for m in missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise IndexStoreError(f"not in the index: {shown} (nothing removed)")
        with self.transaction():
            for d in doc_ids:
                self._delete(d)
            self._bump()

    def _delete(self, doc_id: str) -> None:
        self.db.execute("DELETE FROM chunks WHERE doc_id = ?", (doc_id,))
        self.db.execute("DELETE FROM documents WHERE doc_id = ?", (doc_id,))

    # ------------------------------------------------------------------ reads
    def counts(self) -> tuple[int, int]:
        docs = self.db.execute("SELECT COUNT(*) FROM documents").fetchone()[0]
        chunks = self.db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
        return int(docs), int(chunks)

    def all_bits(self, n_bytes: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Every chunk's row id and sign bits, read in one consistent snapshot with its generation."""
        with self.transaction(write=False):  # one snapshot: the generation matches the rows
            gen = self.generation
            ids, blobs = [], []
            for rowid, blob in self.db.execute("SELECT id, bits FROM chunks ORDER BY id"):
                ids.append(rowid)
                blobs.append(blob)
        codes = np.frombuffer(b"".join(blobs), dtype=np.uint8).reshape(len(ids), n_bytes) if ids else np.zeros((0, n_bytes), np.uint8)
        return np.asarray(ids, dtype=np.int64), codes, gen

    def all_texts(self) -> tuple[np.ndarray, list[str], int]:
        with self.transaction(write=False):
            gen = self.generation
            rows = self.db.execute("SELECT id, text FROM chunks ORDER BY id").fetchall()
        return np.asarray([r[0] for r in rows], dtype=np.int64), [r[1] for r in rows], gen

    def int8_vectors(self, rowids: Sequence[int], dim: int) -> dict[int, np.ndarray]:
        out: dict[int, np.ndarray] = {}
        for part in _batches([int(r) for r in rowids], 500):
            marks = ",".join("?" * len(part))
            for rowid, blob in self.db.execute(f"SELECT id, int8 FROM chunks WHERE id IN ({marks})", part):
                out[rowid] = np.frombuffer(blob, dtype=np.int8, count=dim)
        return out

    def chunk_rows(self, rowids: Sequence[int]) -> dict[int, ChunkRow]:
        out: dict[int, ChunkRow] = {}
        for part in _batches([int(r) for r in rowids], 500):
            marks = ",".join("?" * len(part))
            sql = (
                "SELECT c.id, c.doc_id, c.chunk_index, c.start, c.end, c.text, d.source FROM chunks c "
                f"JOIN documents d ON d.doc_id = c.doc_id WHERE c.id IN ({marks})"
            )
            for rowid, *rest in self.db.execute(sql, part):
                out[rowid] = ChunkRow(*rest)
        return out

    def integrity_ok(self) -> bool:
        return self.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    def close(self) -> None:
        self.db.close()


class _Transaction:
    """BEGIN ... COMMIT, rolled back on any exception (including KeyboardInterrupt).

    Writes take the lock up front (IMMEDIATE) so two writers queue instead of failing mid-way; reads
    use a deferred transaction, which in WAL mode is a consistent snapshot that blocks nobody.
    """

    def __init__(self, db: sqlite3.Connection, write: bool):
        self.db = db
        self.write = write
        self.outer = False

    def __enter__(self):
        if self.db.in_transaction:  # nested: the outer transaction commits
            return self
        self.outer = True
        self.db.execute("BEGIN IMMEDIATE" if self.write else "BEGIN")
        return self

    def __exit__(self, exc_type, exc, tb):
        if not self.outer:
            return False
        if exc_type is None:
            self.db.execute("COMMIT")
        else:
            self.db.execute("ROLLBACK")
        return False


def _batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
