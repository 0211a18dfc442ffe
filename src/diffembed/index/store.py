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
import os
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
    """The SQLite file of an index folder.

    An existing index opens read-only (``mode=ro``) and reopens read-write at its first write, so
    searching works on a copy nobody may write and never touches the file. ``create=True`` makes a
    missing index now; ``create_on_write=True`` only at the first write, so an ``index add`` that
    fails or stores nothing leaves no folder behind (its settings wait in memory until then).
    """

    def __init__(self, folder: str | Path, *, create: bool = False, create_on_write: bool = False):
        self.folder = Path(folder)
        self.path = self.folder / DB_NAME
        self._db: sqlite3.Connection | None = None
        self.read_only = False
        self._pending_meta: dict = {}
        if self.path.exists():
            self._open_read_only()
            self._check_schema()
        elif not (create or create_on_write):
            raise IndexStoreError(f"{self.folder} is not a diffembed index (no {DB_NAME}); build one with 'diffembed index add'")
        elif self.folder.exists() and not self.folder.is_dir():
            raise IndexStoreError(f"{self.folder} exists and is not a folder")
        elif create:
            self._open_writable()

    # ------------------------------------------------------------------ connections
    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            self._open_writable()
        return self._db

    @property
    def exists(self) -> bool:
        """False while a ``create_on_write`` store has not written anything yet."""
        return self._db is not None

    def _open_read_only(self) -> None:
        uri = self.path.resolve().as_uri() + "?mode=ro"
        try:
            db = sqlite3.connect(uri, uri=True, timeout=60.0, isolation_level=None, check_same_thread=False)
            try:
                db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            except sqlite3.OperationalError:
                # A WAL database needs its -shm file, which a folder nobody may write cannot get. With no
                # -wal either, every commit is in the main file and nobody can write it: read it as immutable.
                db.close()
                wal = self.path.with_name(DB_NAME + "-wal")
                if os.access(self.folder, os.W_OK) or (wal.exists() and wal.stat().st_size > 0):
                    raise
                db = sqlite3.connect(uri + "&immutable=1", uri=True, isolation_level=None, check_same_thread=False)
                db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError as exc:
            raise IndexStoreError(f"cannot open index {self.path}: {exc}") from exc
        self._db, self.read_only = db, True

    def _open_writable(self) -> None:
        """Reopen read-write (creating the folder and file if missing) and write any pending meta."""
        if self._db is not None and not self.read_only:
            return
        if self._db is not None:
            self._db.close()
            self._db = None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a killed process loses nothing committed
            db.execute("PRAGMA foreign_keys=ON")
            db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            why = " (its folder cannot be written)" if self.folder.is_dir() and not os.access(self.folder, os.W_OK) else ""
            raise IndexStoreError(f"cannot write to index {self.folder}: {_reason(exc)}{why}") from exc
        self._db, self.read_only = db, False
        self._check_schema()
        if self._pending_meta:
            pending, self._pending_meta = self._pending_meta, {}
            with self.transaction():
                for key, value in pending.items():
                    current = self.get_meta(key)
                    if current is None:
                        self._set_meta(key, value)
                    elif key == "settings" and _comparable(current) != _comparable(value):
                        raise IndexStoreError(f"index {self.folder} was created meanwhile with other settings")

    def _check_schema(self) -> None:
        try:
            version = self.get_meta("schema_version")
        except sqlite3.OperationalError:  # no meta table yet: a file created but never initialised
            version = None
        if version is None:
            with self.transaction():
                self._set_meta("schema_version", SCHEMA_VERSION)
                self._set_meta("generation", 0)
        elif int(version) != SCHEMA_VERSION:
            raise IndexStoreError(f"index {self.folder} has schema version {version}; this diffembed reads {SCHEMA_VERSION}")

    # ------------------------------------------------------------------ transactions and meta
    def transaction(self, write: bool = True):
        if write:
            self._open_writable()
        return _Transaction(self.db, write, self.folder)

    def get_meta(self, key: str):
        if self._db is None:
            return self._pending_meta.get(key)
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def _set_meta(self, key: str, value) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def set_meta_once(self, key: str, value) -> None:
        """Record ``value`` unless ``key`` is already set; a store not created yet keeps it for its first write."""
        if self._db is None:
            self._pending_meta.setdefault(key, value)
            return
        with self.transaction():
            if self.get_meta(key) is None:
                self._set_meta(key, value)

    def set_settings(self, settings: dict) -> None:
        if self._db is None:
            self._pending_meta["settings"] = settings
            return
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
        return {d: h for d, (h, _) in self.known_documents(doc_ids).items()}

    def known_documents(self, doc_ids: Sequence[str]) -> dict[str, tuple[str, str | None]]:
        """doc id -> (content hash, source) for those of ``doc_ids`` in the index."""
        out: dict[str, tuple[str, str | None]] = {}
        if self._db is None:
            return out
        for part in _batches(list(doc_ids), 500):
            marks = ",".join("?" * len(part))
            for doc_id, digest, source in self.db.execute(
                    f"SELECT doc_id, content_hash, source FROM documents WHERE doc_id IN ({marks})", part):
                out[doc_id] = (digest, source)
        return out

    def sources(self) -> list[tuple[str, str | None]]:
        """Every document's (id, source), for pruning the documents of deleted files."""
        if self._db is None:
            return []
        return self.db.execute("SELECT doc_id, source FROM documents ORDER BY doc_id").fetchall()

    def set_sources(self, sources: dict[str, str]) -> None:
        """Record where unchanged documents now come from. Sources are not in any cache: no generation bump."""
        if sources:
            with self.transaction():
                self.db.executemany("UPDATE documents SET source = ? WHERE doc_id = ?", [(s, d) for d, s in sources.items()])

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
        if not doc_ids:
            return
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
        if self._db is None:
            return 0, 0
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

    def close(self) -> None:
        if self._db is not None:
            self._db.close()


class _Transaction:
    """BEGIN ... COMMIT, rolled back on any exception (including KeyboardInterrupt).

    Writes take the lock up front (IMMEDIATE) so two writers queue instead of failing mid-way; reads
    use a deferred transaction, which in WAL mode is a consistent snapshot that blocks nobody. SQLite
    errors of a write (disk full, read-only file, lock timeout) become an IndexStoreError that says
    nothing of the transaction was stored.
    """

    def __init__(self, db: sqlite3.Connection, write: bool, folder: Path):
        self.db = db
        self.write = write
        self.folder = folder
        self.outer = False

    def __enter__(self):
        if self.db.in_transaction:  # nested: the outer transaction commits
            return self
        self.outer = True
        try:
            self.db.execute("BEGIN IMMEDIATE" if self.write else "BEGIN")
        except sqlite3.OperationalError as exc:
            raise self._error(exc) from exc
        return self

    def __exit__(self, exc_type, exc, tb):
        if not self.outer:
            return False
        if exc_type is None:
            try:
                self.db.execute("COMMIT")
                return False
            except sqlite3.OperationalError as commit_exc:
                exc = commit_exc
        if self.db.in_transaction:  # SQLite may already have rolled back (e.g. on a full disk)
            self.db.execute("ROLLBACK")
        if self.write and isinstance(exc, sqlite3.OperationalError):
            raise self._error(exc) from exc
        return False

    def _error(self, exc: sqlite3.Error) -> IndexStoreError:
        return IndexStoreError(f"cannot write to index {self.folder}: {_reason(exc)} "
                               "(this change was not stored; earlier ones are kept)")


def _reason(exc: BaseException) -> str:
    return str(exc.strerror if isinstance(exc, OSError) and exc.strerror else exc)


def _comparable(settings: dict) -> dict:
    return {k: v for k, v in settings.items() if k != "probe"}


def _batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
