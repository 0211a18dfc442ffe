"""Query an index: dense (binary first pass + int8 rescoring), BM25, or both fused by reciprocal rank.

The query is embedded by a model checked against the index's probe embedding first, so a query from
another model is refused instead of silently returning noise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from diffembed.errors import InputError
from diffembed.index.bm25 import LexicalIndex
from diffembed.index.settings import IndexSettings, check_same_model, load_settings
from diffembed.index.store import IndexStore
from diffembed.index.vectors import DEFAULT_RESCORE, MIN_CANDIDATES, BinaryFirstPass, rescore

SEARCH_MODES = ("dense", "hybrid", "bm25")
RRF_K = 60  # the constant of Cormack et al. (2009): damps the head of each ranking
MAX_K = 1000


@dataclass
class Hit:
    doc_id: str
    chunk_index: int
    start: int
    end: int
    score: float
    text: str
    source: str | None

    def to_dict(self) -> dict:
        return asdict(self)

    def snippet(self, width: int = 160) -> str:
        flat = " ".join(self.text.split())
        return flat if len(flat) <= width else flat[: width - 1].rstrip() + "…"


class Searcher:
    """One open index plus the model that embeds its queries."""

    def __init__(self, folder: str | Path, embedder=None, *, model: str | None = None, device: str | None = None,
                 dtype: str | None = None, rescore: int = DEFAULT_RESCORE):
        from diffembed import Embedder

        self.store = IndexStore(folder)
        self.settings: IndexSettings = load_settings(self.store)
        if embedder is None:
            embedder = Embedder(model if model is not None else self.settings.model, device=device, dtype=dtype)
        check_same_model(self.settings, embedder)
        if isinstance(rescore, bool) or not isinstance(rescore, int) or rescore < 1:
            raise InputError(f"rescore must be a positive integer, got {rescore!r}")
        self.embedder = embedder
        self.rescore = rescore
        self.dense = BinaryFirstPass(self.store, self.settings.dim)
        self.lexical = LexicalIndex(self.store)

    def search(self, query: str, k: int = 10, mode: str = "dense", *, vector: np.ndarray | None = None) -> list[Hit]:
        """``vector``: the query's ``encode_query`` float32 embedding when the caller has it already (a
        server embeds queries on its model thread and searches elsewhere)."""
        vectors = None if vector is None else np.asarray(vector, dtype=np.float32).reshape(1, -1)
        return self.search_many([query], k=k, mode=mode, vectors=vectors)[0]

    def search_many(self, queries: list[str], k: int = 10, mode: str = "dense", *,
                    vectors: np.ndarray | None = None) -> list[list[Hit]]:
        if mode not in SEARCH_MODES:
            raise InputError(f"unknown search mode '{mode}'; choose one of {', '.join(SEARCH_MODES)}")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise InputError(f"k must be an integer in 1..{MAX_K}, got {k!r}")
        for i, q in enumerate(queries):
            if not isinstance(q, str) or not q.strip():
                raise InputError(f"query {i} is empty" if isinstance(q, str) else f"query {i} is not a string")
        pool = max(k, MIN_CANDIDATES)  # how deep each list goes before fusion
        dense = None
        if vectors is not None and np.shape(vectors) != (len(queries), self.settings.dim):
            raise InputError(f"query vectors must have shape ({len(queries)}, {self.settings.dim}), "
                             f"got {np.shape(vectors)}")
        if mode != "bm25":  # rescore as many candidates as for k results, keep `pool` for the fusion
            keep = k if mode == "dense" else pool
            dense = (self.dense_rowids(queries, k, keep) if vectors is None
                     else self.dense_from_vectors(np.asarray(vectors, dtype=np.float32), k, keep))
        ranked: list[list[tuple[int, float]]] = []
        for i, q in enumerate(queries):
            if mode == "dense":
                ranked.append(dense[i])
            elif mode == "bm25":
                ranked.append(self.lexical.search(q, k))
            else:
                ranked.append(reciprocal_rank_fusion([dense[i], self.lexical.search(q, pool)], k))
        rows = self.store.chunk_rows([r for hits in ranked for r, _ in hits])
        return [[Hit(score=s, **asdict(rows[r])) for r, s in hits if r in rows] for hits in ranked]

    def dense_rowids(self, queries: list[str], k: int, keep: int | None = None) -> list[list[tuple[int, float]]]:
        vecs = self.embedder.encode_query(list(queries), precision="float32", show_progress=False)
        return self.dense_from_vectors(vecs, k, keep)

    def dense_from_vectors(self, vecs: np.ndarray, k: int, keep: int | None = None) -> list[list[tuple[int, float]]]:
        """Binary Hamming candidates for k results, rescored with int8, best ``keep`` (default k) returned.

        The vectors must come from the index's model (``Searcher`` checks that when it opens)."""
        _, cands = self.dense.search(vecs, max(k * self.rescore, MIN_CANDIDATES))
        return [rescore(self.store, v, c, self.settings.dim, keep or k) for v, c in zip(vecs, cands)]

    def close(self) -> None:
        self.store.close()


def reciprocal_rank_fusion(rankings: list[list[tuple[int, float]]], k: int, rrf_k: int = RRF_K) -> list[tuple[int, float]]:
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, (rowid, _) in enumerate(ranking, 1):
            scores[rowid] = scores.get(rowid, 0.0) + 1.0 / (rrf_k + rank)
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:k]


def open_searcher(folder: str | Path, embedder=None, **kwargs) -> Searcher:
    """The server's entry point: open ``folder`` for ``embedder`` (refused if it embeds differently)."""
    return Searcher(folder, embedder, **kwargs)
