"""Training pairs on disk and the batches a contrastive stage draws from them.

A batch is a pure function of (rows, batch size, seed, step): each epoch is a seeded permutation
packed greedily into batches, so a resumed run draws exactly the batches the uninterrupted one
would have, without saving any iterator state. With ``no_duplicates`` a row whose query or
positive is already in the batch waits for the next one (as sentence-transformers'
NoDuplicatesBatchSampler does): a duplicate text would be its own false in-batch negative. With
clusters, each batch is drawn from one cluster (CDE's cluster batches), so in-batch negatives are
topically close, i.e. harder.
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffembed.errors import DataFileError
from diffembed.extras import require
from diffembed.jsonl import read_jsonl


@dataclass(frozen=True)
class PairRow:
    query: str
    positive: str
    negatives: tuple[str, ...] = ()

    def texts(self) -> tuple[str, ...]:
        return (self.query, self.positive, *self.negatives)


def read_pairs(files: list[str | Path], negatives: int = 0) -> list[PairRow]:
    """Rows with `query`, `positive` and (when negatives > 0) at least that many `negatives`; rows
    with fewer negatives are skipped. Malformed rows fail with their file and line."""
    rows: list[PairRow] = []
    for file in files:
        path = Path(file)
        if not path.is_file():
            raise DataFileError(f"training data {path} does not exist")
        for n, rec in read_jsonl(path):
            where = f"{path}:{n}"
            if not isinstance(rec, dict):
                raise DataFileError(f"{where}: expected a JSON object")
            query, positive = rec.get("query"), rec.get("positive")
            if not isinstance(query, str) or not query.strip() or not isinstance(positive, str) or not positive.strip():
                raise DataFileError(f"{where}: 'query' and 'positive' must be non-empty strings")
            negs = rec.get("negatives") or []
            if not isinstance(negs, list) or not all(isinstance(x, str) and x.strip() for x in negs):
                raise DataFileError(f"{where}: 'negatives' must be a list of non-empty strings")
            if len(negs) < negatives:
                continue
            rows.append(PairRow(query, positive, tuple(negs[:negatives])))
    if not rows:
        raise DataFileError(f"no usable training pairs in {', '.join(map(str, files))}"
                            + (f" (rows need {negatives} negatives)" if negatives else ""))
    return rows


def rows_fingerprint(rows: list[PairRow]) -> str:
    h = hashlib.sha256()
    for r in rows:
        for t in r.texts():
            h.update(t.encode("utf-8"))
            h.update(b"\x00")
        h.update(b"\x01")
    return h.hexdigest()[:16]


def _pack(order: list[int], rows: list[PairRow], size: int, no_duplicates: bool) -> list[list[int]]:
    """Greedy packing in `order`; a row clashing with the open batch is retried first in the next."""
    batches: list[list[int]] = []
    waiting: deque[int] = deque()
    pending = deque(order)
    while pending or waiting:
        batch: list[int] = []
        seen: set[str] = set()
        retry, waiting = waiting, deque()
        for source in (retry, pending):
            while source and len(batch) < size:
                i = source.popleft()
                texts = rows[i].texts()
                if no_duplicates and (seen.intersection(texts) or len(set(texts)) < len(texts)):
                    waiting.append(i)
                    continue
                batch.append(i)
                seen.update(texts)
        if len(batch) < size:  # the remainder (and rows that only clash) wait for the next epoch
            break
        batches.append(batch)
    return batches


class BatchPlan:
    """`batch(step)` -> row indices; epochs are packed on first use and kept."""

    def __init__(self, rows: list[PairRow], size: int, seed: int, *, no_duplicates: bool = True,
                 clusters: np.ndarray | None = None):
        if len(rows) < size:
            raise DataFileError(f"{len(rows)} training pairs are fewer than one batch of {size}")
        self.rows, self.size, self.seed, self.no_duplicates = rows, size, seed, no_duplicates
        self.clusters = clusters
        self._epochs: dict[int, list[list[int]]] = {}
        self.per_epoch = len(self._epoch(0))
        if self.per_epoch == 0:
            raise DataFileError(f"the training pairs cannot fill one batch of {size} without duplicate texts")

    def _epoch(self, epoch: int) -> list[list[int]]:
        if epoch not in self._epochs:
            rng = np.random.default_rng([self.seed, epoch])
            if self.clusters is None:
                batches = _pack(rng.permutation(len(self.rows)).tolist(), self.rows, self.size, self.no_duplicates)
            else:
                batches = []
                for c in np.unique(self.clusters):
                    members = np.flatnonzero(self.clusters == c)
                    order = members[rng.permutation(len(members))].tolist()
                    batches += _pack(order, self.rows, self.size, self.no_duplicates)
                used = {i for b in batches for i in b}  # rows of clusters smaller than a batch: mixed
                leftover = [i for i in rng.permutation(len(self.rows)).tolist() if i not in used]
                batches += _pack(leftover, self.rows, self.size, self.no_duplicates)
                batches = [batches[i] for i in rng.permutation(len(batches))]
            self._epochs = {epoch: batches}  # keep one epoch: steps only move forward
        return self._epochs[epoch]

    def batch(self, step: int) -> list[int]:
        epoch, k = divmod(step, self.per_epoch)
        batches = self._epoch(epoch)
        return batches[k % len(batches)]  # a later epoch may pack one batch fewer


def cluster_labels(vectors: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means (faiss) over L2-normalised vectors; returns each row's cluster."""
    faiss = require("faiss", "train", "cluster batches")

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)
    km = faiss.Kmeans(x.shape[1], k, niter=20, seed=seed, spherical=True, verbose=False)
    km.train(x)
    _, labels = km.index.search(x, 1)
    return labels[:, 0].astype(np.int64)
