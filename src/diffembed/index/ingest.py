"""``index add``: chunk, embed and store documents, a batch of documents per transaction.

A document whose text hash is unchanged is skipped without embedding; a changed one has its chunks
replaced in the same transaction that stores the new ones, and one whose text became empty is
removed. Killing the process loses at most the batch in flight, and running the same command again
picks up from there. Everything that can be checked before embedding (options, paths, jsonl records
and duplicate ids) is, and a new index is only created by its first stored batch: a failed run
leaves no empty index behind.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from diffembed.errors import DataFileError, InputError
from diffembed.index.settings import (DEFAULT_MODE, MODES, IndexSettings, check_same_model, content_hash,
                                      model_reference, settings_for)
from diffembed.index.sources import (SourceDocument, check_documents, collect_files, default_root, doc_id_for,
                                     files_under, read_documents)
from diffembed.index.store import IndexStore, NewDocument
from diffembed.inference.quantize import finalize

DEFAULT_BATCH_DOCS = 16


@dataclass
class AddReport:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    empty: int = 0
    removed: int = 0  # documents whose text became empty, and with prune, whose files are gone
    chunks: int = 0
    seconds: float = 0.0
    skipped_files: list[str] = field(default_factory=list)

    @property
    def documents(self) -> int:
        return self.added + self.updated + self.unchanged + self.empty

    def to_dict(self) -> dict:
        return {
            "documents": self.documents, "added": self.added, "updated": self.updated,
            "unchanged": self.unchanged, "empty": self.empty, "removed": self.removed, "chunks_written": self.chunks,
            "skipped_files": self.skipped_files, "seconds": round(self.seconds, 3),
            "documents_per_second": round(self.documents / self.seconds, 2) if self.seconds > 0 else None,
        }


def check_add_options(*, mode: str | None = None, chunk_tokens: int | None = None,
                      batch_docs: int = DEFAULT_BATCH_DOCS) -> None:
    """The option checks of ``index add`` that need neither the model nor the index."""
    if mode is not None and mode not in MODES:
        raise InputError(f"unknown chunking mode '{mode}'; choose one of {', '.join(MODES)}")
    if chunk_tokens is not None and (isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < 1):
        raise InputError(f"chunk_tokens must be a positive integer, got {chunk_tokens!r}")
    if isinstance(batch_docs, bool) or not isinstance(batch_docs, int) or batch_docs < 1:
        raise InputError(f"batch_docs must be a positive integer, got {batch_docs!r}")


def open_for_adding(folder: str | Path, *, model: str | None = None, embedder=None, mode: str | None = None,
                    chunk_tokens: int | None = None, device: str | None = None, dtype: str | None = None,
                    batch_tokens: int | None = None) -> tuple[IndexStore, IndexSettings, object]:
    """Open the index for writing or prepare a new one, or check the caller matches it.

    A new index's folder is created by its first stored batch, not here (``IndexStore.exists``)."""
    from diffembed import Embedder

    check_add_options(mode=mode, chunk_tokens=chunk_tokens)
    store = IndexStore(folder, create_on_write=True)
    stored = store.settings
    if stored is None:
        embedder = embedder or Embedder(model, device=device, dtype=dtype, batch_tokens=batch_tokens)
        settings = settings_for(embedder, model_reference(model), chunk_tokens=chunk_tokens, mode=mode or DEFAULT_MODE)
        if settings.chunk_tokens < 1:
            raise InputError("chunk_tokens must be positive")
        store.set_settings(settings.to_dict())
        return store, settings, embedder
    settings = IndexSettings.from_dict(stored)
    for name, given in (("mode", mode), ("chunk_tokens", chunk_tokens)):
        if given is not None and given != getattr(settings, name):
            raise InputError(f"the index was built with {name}={getattr(settings, name)}; "
                             f"it cannot take {name}={given} (build a new index)")
    embedder = embedder or Embedder(model if model is not None else settings.model, device=device, dtype=dtype,
                                    batch_tokens=batch_tokens)
    check_same_model(settings, embedder)
    return store, settings, embedder


def files_root(store: IndexStore, paths: Sequence[str | Path]) -> Path:
    """The folder file ids are relative to: recorded by the index's first add, else where the first path is."""
    recorded = store.get_meta("files_root")
    return Path(recorded) if recorded else default_root(paths)


def add_paths(store: IndexStore, settings: IndexSettings, embedder, paths: Sequence[str | Path], *,
              batch_docs: int = DEFAULT_BATCH_DOCS, show_progress: bool | None = None, prune: bool = False) -> AddReport:
    """Add the files and folders ``paths``. ``prune``: then remove the documents read earlier from files
    under the given folders that are no longer there (deleted, hidden, no longer UTF-8, or empty)."""
    check_add_options(batch_docs=batch_docs)
    folders = [Path(p) for p in paths if Path(p).is_dir()]
    if prune and not folders:
        raise InputError("prune needs a folder among the paths: it removes the documents of files deleted from it")
    root = files_root(store, paths)
    files = collect_files(paths, root)
    check_documents(files)
    store.set_meta_once("files_root", root.as_posix())
    report = AddReport()
    present: set[str] = set()

    def noted(docs: Iterable[SourceDocument]):
        for doc in docs:
            if doc.text.strip():
                present.add(doc.doc_id)
            yield doc

    docs = noted(read_documents(files, report.skipped_files))
    total = len(files) if all(not f.path.name.lower().endswith(".jsonl") for f in files) else None
    add_documents(store, settings, embedder, docs, batch_docs=batch_docs, show_progress=show_progress,
                  total=total, report=report)
    if prune:
        prefixes = tuple(files_under(f) for f in folders)
        id_prefixes = tuple(doc_id_for(f.resolve(), root) + "/" for f in folders)
        stale = [doc_id for doc_id, source in store.sources()
                 if doc_id not in present and _from_folders(doc_id, source, prefixes, id_prefixes)]
        store.remove_documents(stale)
        report.removed += len(stale)
    return report


def _from_folders(doc_id: str, source: str | None, prefixes: tuple[str, ...], id_prefixes: tuple[str, ...]) -> bool:
    """Whether a stored document was read from a file under one of the folders.

    Sources are absolute paths; an index written by diffembed before files roots stored the path as
    given (perhaps relative), so such a plain file is recognised by its id under the folder's id."""
    if source is None:
        return False
    if source.startswith(prefixes):
        return True
    legacy_file = not source.startswith("/") and re.search(r":\d+$", source) is None
    return legacy_file and doc_id.startswith(id_prefixes)


def add_documents(store: IndexStore, settings: IndexSettings, embedder, docs: Iterable[SourceDocument], *,
                  batch_docs: int = DEFAULT_BATCH_DOCS, show_progress: bool | None = None,
                  total: int | None = None, report: AddReport | None = None) -> AddReport:
    check_add_options(batch_docs=batch_docs)
    report = report or AddReport()
    start = time.perf_counter()
    seen: dict[str, str] = {}
    # disable=None: tqdm shows the bar only on a terminal
    bar = tqdm(total=total, unit="doc", desc="index add", leave=False,
               disable=None if show_progress is None else not show_progress)
    pending: list[SourceDocument] = []
    with bar:
        for doc in docs:
            if doc.doc_id in seen:
                raise DataFileError(f"document id '{doc.doc_id}' appears twice ({seen[doc.doc_id]} and {doc.source})")
            seen[doc.doc_id] = doc.source
            pending.append(doc)
            if len(pending) >= batch_docs:
                _commit(store, settings, embedder, pending, report)
                bar.update(len(pending))
                pending = []
        if pending:
            _commit(store, settings, embedder, pending, report)
            bar.update(len(pending))
    report.seconds = time.perf_counter() - start
    return report


def _commit(store: IndexStore, settings: IndexSettings, embedder, batch: list[SourceDocument], report: AddReport) -> None:
    hashes = {d.doc_id: content_hash(d.text) for d in batch}
    known = store.known_documents(list(hashes))
    todo, emptied, moved = [], [], {}
    for d in batch:
        if not d.text.strip():
            report.empty += 1
            if d.doc_id in known:  # its text is gone: so are its chunks
                emptied.append(d.doc_id)
        elif known.get(d.doc_id, (None,))[0] == hashes[d.doc_id]:
            report.unchanged += 1
            if known[d.doc_id][1] != d.source:
                moved[d.doc_id] = d.source
        else:
            todo.append(d)
    store.set_sources(moved)
    store.remove_documents(emptied)
    report.removed += len(emptied)
    if not todo:
        return
    rows = []
    for d, (spans, pooled) in zip(todo, embed_chunks(embedder, settings, [d.text for d in todo])):
        rows.append(NewDocument(
            doc_id=d.doc_id, content_hash=hashes[d.doc_id], source=d.source, n_chars=len(d.text), spans=spans,
            texts=[d.text[a:b] for a, b in spans],
            bits=finalize(pooled, "ubinary", None, False), int8=finalize(pooled, "int8", None, False),
        ))
    report.chunks += store.put_documents(rows)
    for d in todo:
        if d.doc_id in known:
            report.updated += 1
        else:
            report.added += 1


def embed_chunks(embedder, settings: IndexSettings, texts: list[str]) -> list[tuple[list[tuple[int, int]], torch.Tensor]]:
    """Chunk spans and raw (unnormalised) pooled chunk vectors per text, late or naive."""
    if settings.mode == "late":
        out = embedder.encode_documents(texts, chunk_tokens=settings.chunk_tokens, precision="float32",
                                        normalize=False, show_progress=False)
        return [(d.spans, torch.from_numpy(np.asarray(d.embeddings))) for d in out]
    spans = [embedder.chunk_spans(t, settings.chunk_tokens) for t in texts]
    flat = [t[a:b] for t, sp in zip(texts, spans) for a, b in sp]
    pooled = embedder.pooled(flat, show_progress=False)
    out, k = [], 0
    for sp in spans:
        out.append((sp, pooled[k : k + len(sp)]))
        k += len(sp)
    return out
