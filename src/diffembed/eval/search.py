"""Exact top-k search for evaluation, with the similarity each precision is meant for.

float32 and int8 vectors are compared by cosine (int8 is the pplx tanh scheme: cast, then cosine);
binary (+1/-1) vectors by dot product, which ranks exactly like Hamming distance.
"""

from __future__ import annotations

import numpy as np
import torch


def _prepare(x: np.ndarray, precision: str) -> torch.Tensor:
    t = torch.from_numpy(np.asarray(x)).float()
    if precision in ("float32", "int8"):
        t = torch.nn.functional.normalize(t, dim=-1)
    return t


def top_k(queries: np.ndarray, corpus: np.ndarray, precision: str, k: int = 100, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(indices, scores), each (n_queries, min(k, n_corpus)), best first."""
    q, d = _prepare(queries, precision), _prepare(corpus, precision)
    k = min(k, d.shape[0])
    idx, val = [], []
    for start in range(0, q.shape[0], block):
        scores = q[start : start + block] @ d.T
        v, i = torch.topk(scores, k, dim=1)
        idx.append(i.numpy())
        val.append(v.numpy())
    return np.concatenate(idx), np.concatenate(val)


def to_run(query_ids: list[str], doc_ids: list[str], indices: np.ndarray, scores: np.ndarray) -> dict[str, dict[str, float]]:
    return {q: {doc_ids[j]: float(s) for j, s in zip(row_i, row_s)} for q, row_i, row_s in zip(query_ids, indices, scores)}
