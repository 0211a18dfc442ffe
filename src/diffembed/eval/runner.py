"""Evaluate models on retrieval and contextual datasets over a grid of mode x precision x dimensions.

Each model embeds the dataset once (raw pooled vectors); every precision and Matryoshka size is
derived from those vectors, so the grid costs one forward pass per mode. Peers (sentence-transformers
folders) go through sentence-transformers itself, so side-by-side numbers are each system's own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from diffembed.errors import InputError
from diffembed.extras import require
from diffembed.eval.datasets import ContextualDataset, RetrievalDataset
from diffembed.eval.metrics import evaluate_run
from diffembed.eval.search import to_run, top_k
from diffembed.inference.quantize import PRECISIONS, finalize

MODES = ("naive", "late")


class DiffembedSystem:
    """A model run by diffembed's own runtime (supports late chunking and all precisions)."""

    system = "diffembed"
    supports_late = True

    def __init__(self, embedder):
        self.embedder = embedder
        self.name = embedder.loaded.name
        self.dim = embedder.dim
        prompts = embedder.prompts
        self.query_prompt = prompts.get("query")
        self.doc_prompt = prompts.get("document", prompts.get("passage"))

    def queries(self, texts: list[str]) -> torch.Tensor:
        return self.embedder.pooled(texts, prompt=self.query_prompt)

    def passages(self, texts: list[str]) -> torch.Tensor:
        return self.embedder.pooled(texts, prompt=self.doc_prompt)

    def contextual(self, documents: list[list[str]]) -> list[torch.Tensor]:
        return self.embedder.pooled_contextual(documents, prompt=self.doc_prompt)


class SentenceTransformersSystem:
    """A peer model run through sentence-transformers' own ``encode`` (float32, naive only)."""

    system = "sentence-transformers"
    supports_late = False

    def __init__(self, path: str, device: str | None = None, *, model=None):
        """A folder to load, or (``model=``) a live SentenceTransformer, e.g. one being trained."""
        if model is None:
            SentenceTransformer = require("sentence_transformers", "eval", "a sentence-transformers baseline").SentenceTransformer
            model = SentenceTransformer(path, device=device or "cpu")
        self.model = model
        self.name = path
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        prompts = self.model.prompts or {}
        self.query_prompt = "query" if "query" in prompts else None
        self.doc_prompt = next((p for p in ("document", "passage") if p in prompts), None)

    def _encode(self, texts: list[str], prompt_name: str | None) -> torch.Tensor:
        return self.model.encode(texts, prompt_name=prompt_name, convert_to_tensor=True, show_progress_bar=False).float().cpu()

    def queries(self, texts: list[str]) -> torch.Tensor:
        return self._encode(texts, self.query_prompt)

    def passages(self, texts: list[str]) -> torch.Tensor:
        return self._encode(texts, self.doc_prompt)


@dataclass
class Grid:
    modes: tuple[str, ...] = ("naive", "late")
    precisions: tuple[str, ...] = ("float32",)
    dimensions: tuple[int | None, ...] = (None,)
    k: int = 100
    max_queries: int | None = None


def parse_dimensions(spec: str) -> tuple[int | None, ...]:
    out: list[int | None] = []
    for part in spec.split(","):
        part = part.strip().lower()
        if part in ("full", "all", ""):
            out.append(None)
        elif part.isdigit() and int(part) > 0:
            out.append(int(part))
        else:
            raise InputError(f"dimensions must be positive integers or 'full', got '{part}'")
    return tuple(dict.fromkeys(out))


def parse_precisions(spec: str) -> tuple[str, ...]:
    items = tuple(dict.fromkeys(p.strip() for p in spec.split(",") if p.strip()))
    for p in items:
        if p not in PRECISIONS or p == "ubinary":
            raise InputError(f"unknown precision '{p}' for eval; choose from float32, int8, binary")
    return items


def parse_modes(spec: str) -> tuple[str, ...]:
    if spec == "both":
        return MODES
    if spec not in MODES:
        raise InputError(f"unknown mode '{spec}'; choose naive, late or both")
    return (spec,)


def _select_queries(dataset, max_queries: int | None) -> list[str]:
    judged = sorted(q for q, docs in dataset.qrels.items() if any(s > 0 for s in docs.values()))
    return judged[:max_queries] if max_queries else judged


def _score(system, mode, q_vecs, d_vecs, qids, dids, qrels, grid: Grid) -> list[dict]:
    rows = []
    for precision in grid.precisions:
        if system.system != "diffembed" and precision != "float32":
            continue  # peers report their own float output only; quantization schemes differ
        for dims in grid.dimensions:
            if dims is not None and dims > system.dim:
                raise InputError(f"dimensions {dims} exceed {system.name}'s {system.dim}")
            q = finalize(q_vecs, precision, dims, True)
            d = finalize(d_vecs, precision, dims, True)
            idx, val = top_k(q, d, precision, k=grid.k)
            metrics = evaluate_run(qrels, to_run(qids, dids, idx, val))
            rows.append({"model": system.name, "system": system.system, "mode": mode, "precision": precision,
                         "dimensions": dims or system.dim, **metrics})
    return rows


def evaluate(dataset: RetrievalDataset | ContextualDataset, system, grid: Grid) -> list[dict]:
    qids = _select_queries(dataset, grid.max_queries)
    if not qids:
        raise InputError(f"{dataset.name} has no query with a relevant document")
    qrels = {q: dataset.qrels[q] for q in qids}
    started = time.perf_counter()
    q_vecs = system.queries([dataset.queries[q] for q in qids])
    rows: list[dict] = []
    if isinstance(dataset, RetrievalDataset):
        dids = list(dataset.corpus)
        d_vecs = system.passages([dataset.passage(d) for d in dids])
        rows += _score(system, "naive", q_vecs, d_vecs, qids, dids, qrels, grid)
    else:
        dids = dataset.chunk_ids()
        for mode in grid.modes:
            if mode == "naive":
                d_vecs = system.passages(dataset.chunk_texts())
            elif system.supports_late:
                d_vecs = torch.cat(system.contextual([doc["chunks"] for doc in dataset.documents.values()]))
            else:
                continue
            rows += _score(system, mode, q_vecs, d_vecs, qids, dids, qrels, grid)
    seconds = time.perf_counter() - started
    for row in rows:
        row["seconds_total"] = round(seconds, 2)
    return rows


__all__ = ["DiffembedSystem", "Grid", "SentenceTransformersSystem", "evaluate", "parse_dimensions", "parse_modes",
           "parse_precisions"]
