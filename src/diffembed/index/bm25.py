"""Lexical search over chunk texts with bm25s, for hybrid retrieval.

The BM25 matrix is derived data, like the bit cache: built from the store's chunk texts on first use,
saved as ``bm25-<generation>/`` (written under a temporary name, then renamed) and rebuilt whenever
the store's generation moves on. Tokenisation is bm25s's own (words of 2+ word characters, English
stop words removed, no stemming), which also splits Korean on spaces.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from diffembed.atomic import building_dir
from diffembed.extras import require
from diffembed.index.store import IndexStore


class LexicalIndex:
    def __init__(self, store: IndexStore):
        self.store = store
        self.generation = -1
        self.retriever = None
        self.ids = np.zeros(0, dtype=np.int64)

    def refresh(self) -> None:
        gen = self.store.generation
        if gen == self.generation:
            return
        folder = self.store.folder / f"bm25-{gen}"
        if not self._load(folder, gen):
            self._build(folder)

    def _load(self, folder: Path, gen: int) -> bool:
        bm25s = require("bm25s", "index", "BM25 search")

        try:
            ids = np.load(folder / "ids.npy")
            retriever = bm25s.BM25.load(str(folder)) if len(ids) else None
        except (OSError, ValueError, json.JSONDecodeError):
            return False
        self.retriever, self.ids, self.generation = retriever, ids, gen
        return True

    def _build(self, folder: Path) -> None:
        bm25s = require("bm25s", "index", "BM25 search")

        ids, texts, gen = self.store.all_texts()
        retriever = None
        if ids.size:
            retriever = bm25s.BM25()
            retriever.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
        self.retriever, self.ids, self.generation = retriever, ids, gen
        self._save(self.store.folder / f"bm25-{gen}", retriever, ids)

    def _save(self, folder: Path, retriever, ids: np.ndarray) -> None:
        parent = folder.parent
        try:
            # A folder of this generation that already exists holds these very texts: keep it.
            with building_dir(folder, replace=False) as tmp:
                if retriever is not None:
                    retriever.save(str(tmp))
                np.save(tmp / "ids.npy", ids)
            for old in parent.glob("bm25-*"):
                if old != folder:
                    shutil.rmtree(old, ignore_errors=True)
        except OSError:  # read-only folder: keep the in-memory index only
            pass

    def search(self, query: str, n: int) -> list[tuple[int, float]]:
        """Top-n (row id, BM25 score) with a positive score; nothing when no query word is indexed."""
        bm25s = require("bm25s", "index", "BM25 search")

        self.refresh()
        if self.retriever is None or not len(self.ids):
            return []
        tokens = bm25s.tokenize([query], stopwords="en", return_ids=False, show_progress=False)
        if not tokens or not tokens[0]:
            return []
        docs, scores = self.retriever.retrieve(tokens, k=min(n, len(self.ids)), show_progress=False)
        return [(int(self.ids[d]), float(s)) for d, s in zip(docs[0], scores[0]) if s > 0]
