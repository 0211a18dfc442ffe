"""The contextual stage (issue 13): late-chunked chunk training with the InSeNT loss.

Each step takes ``batch.size`` documents from `diffembed data contextual` files. A document longer
than ``batch.max_chunks`` chunks is cropped to a run of consecutive chunks around one of its queries'
chunks; up to ``batch.queries_per_document`` of the queries whose chunk lies in the run are asked.
The run is late-chunked whole, in the runtime's windows, so the model learns on the vectors
``encode_contextual`` and ``index add`` serve. Memory per step is bounded by ``batch.size`` x
``batch.max_chunks`` chunks, and per layer rather than per token-layer with
``model.gradient_checkpointing``. What is drawn depends only on (seed, step), so a resumed run
replays the uninterrupted one.

Under several processes each process late-chunks its own documents, and its in-batch negatives are
the other documents of its share (chunk vectors are not gathered across processes).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffembed.errors import DiffembedError, InputError
from diffembed.training.checkpoint import TrainerState, settings_fingerprint
from diffembed.training.contrastive import ContrastiveTask, LossModel, load_st_model
from diffembed.training.loop import StepData, StepMetrics


@dataclass(frozen=True)
class ContextQuery:
    text: str
    chunk: int
    section_end: int  # exclusive: chunks [chunk, section_end) are the query's section


@dataclass(frozen=True)
class ContextDoc:
    id: str
    chunks: tuple[str, ...]
    queries: tuple[ContextQuery, ...]


def read_documents(paths: list[str]) -> list[ContextDoc]:
    """Documents from `diffembed data contextual` jsonl files; a malformed row is an error naming its line."""
    docs: list[ContextDoc] = []
    for path in paths:
        p = Path(path)
        if not p.is_file():
            raise InputError(f"{path}: no such file (build contextual documents with `diffembed data contextual`)")
        with p.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    docs.append(_document(json.loads(line)))
                except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                    raise InputError(f"{path}:{n}: not a contextual document ({exc}); expected "
                                     '{"id", "chunks": [...], "queries": [{"query", "chunk"}]}') from None
    if not docs:
        raise InputError(f"no documents in {', '.join(paths)}")
    return docs


def _document(row: dict) -> ContextDoc:
    chunks = row["chunks"]
    if not isinstance(chunks, list) or not chunks or not all(isinstance(c, str) and c.strip() for c in chunks):
        raise ValueError("chunks must be a non-empty list of non-empty strings")
    queries = []
    for q in row["queries"]:
        chunk = int(q["chunk"])
        end = int(q.get("section_end", chunk + 1))
        if not (isinstance(q["query"], str) and q["query"].strip()):
            raise ValueError("a query is empty")
        if not 0 <= chunk < end <= len(chunks):
            raise ValueError(f"query chunk {chunk} (section end {end}) is outside the {len(chunks)} chunks")
        queries.append(ContextQuery(q["query"], chunk, end))
    if not queries:
        raise ValueError("a document has no queries")
    return ContextDoc(str(row["id"]), tuple(chunks), tuple(queries))


def documents_fingerprint(docs: list[ContextDoc]) -> str:
    h = hashlib.sha256()
    for d in docs:
        h.update(json.dumps([d.id, d.chunks, [(q.text, q.chunk, q.section_end) for q in d.queries]]).encode())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class DocumentView:
    """What one step asks of one document: chunks [start, end) and queries (text, chunk, section end),
    their chunk indices relative to ``start``."""

    doc: int
    start: int
    end: int
    queries: tuple[ContextQuery, ...]


class DocumentPlan:
    """Step -> documents, crops and queries, from (seed, step) alone (exact resume).

    Documents are visited in one seeded permutation per epoch; a batch that crosses into the next
    epoch skips documents it already holds."""

    def __init__(self, docs: list[ContextDoc], size: int, seed: int, max_chunks: int, queries_per_document: int):
        if size > len(docs):
            raise InputError(f"batch.size ({size}) exceeds the {len(docs)} training documents")
        self.docs, self.size, self.seed = docs, size, seed
        self.max_chunks, self.per_doc = max_chunks, queries_per_document
        self._orders: dict[int, np.ndarray] = {}

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            self._orders = {epoch: np.random.default_rng([self.seed, epoch]).permutation(len(self.docs))}
        return self._orders[epoch]

    def batch(self, step: int) -> list[DocumentView]:
        n = len(self.docs)
        pos = step * self.size
        chosen: list[int] = []
        while len(chosen) < self.size:
            d = int(self._order(pos // n)[pos % n])
            pos += 1
            if d not in chosen:
                chosen.append(d)
        return [self._view(d, step) for d in chosen]

    def _view(self, d: int, step: int) -> DocumentView:
        doc = self.docs[d]
        rng = np.random.default_rng([self.seed, step, d, 1])
        start, end = 0, len(doc.chunks)
        if end > self.max_chunks:
            anchor = doc.queries[int(rng.integers(len(doc.queries)))]
            lo = max(0, anchor.chunk - self.max_chunks + 1)
            hi = min(anchor.chunk, len(doc.chunks) - self.max_chunks)
            start = int(rng.integers(lo, hi + 1))
            end = start + self.max_chunks
        inside = [q for q in doc.queries if start <= q.chunk < end]
        if len(inside) > self.per_doc:
            keep = sorted(rng.choice(len(inside), self.per_doc, replace=False).tolist())
            inside = [inside[i] for i in keep]
        queries = tuple(ContextQuery(q.text, q.chunk - start, min(q.section_end, end) - start) for q in inside)
        return DocumentView(d, start, end, queries)


class ContextualLossModel(LossModel):
    """The module the loop trains for a contextual stage: ``InSeNTLoss`` over the model."""

    def forward(self, documents, queries, targets, section_ends) -> dict[str, torch.Tensor]:
        out = self.loss(documents, queries, targets, section_ends)
        return {**out, "n": torch.ones((), device=out["loss"].device)}


class ContextualTask(ContrastiveTask):
    """One contextual stage: start folder -> a model trained to embed chunks in their document."""

    rows_label = "documents"
    metrics = StepMetrics(keys=("in_sequence", "in_batch", "n"),
                          derive=lambda s: {"in_sequence": s["in_sequence"] / s["n"], "in_batch": s["in_batch"] / s["n"]})

    def read_rows(self) -> list[ContextDoc]:
        return read_documents(self.stage.data.train)

    def build_model(self) -> ContextualLossModel:
        from diffembed.training.contextual_loss import InSeNTLoss

        model, folder = load_st_model(self.start_path, self.max_length, self.attention)
        if self.gradient_checkpointing:
            from diffembed.training.activations import checkpoint_activations

            checkpoint_activations(model)
        cfg = self.stage.loss
        views = dict(cfg.mixed_weights) if cfg.quantization == "mixed" else {cfg.quantization: 1.0}
        loss = InSeNTLoss(model, temperature=cfg.temperature, lam=cfg.in_sequence_weight, views=views,
                          dims=cfg.matryoshka_dims)
        if self.st is None:
            self.st, self.start_folder = model, folder
        return ContextualLossModel(loss, model)

    def fingerprint(self) -> str:
        s = self.stage
        keep = {"kind": "contextual", "start": self.start_path, "data": documents_fingerprint(self.rows),
                "seed": s.train.seed, "batch": s.batch.model_dump(mode="json"), "loss": s.loss.model_dump(mode="json"),
                "max_length": self.max_length, **self.attention_key()}
        if self.provenance.get("parent_fingerprint"):  # a retrained parent stage retrains this one too
            keep["parent"] = self.provenance["parent_fingerprint"]
        return settings_fingerprint(keep)

    def start(self, state: TrainerState, accelerator) -> None:
        b = self.stage.batch
        self.plan = DocumentPlan(self.rows, b.size, self.stage.train.seed, b.max_chunks, b.queries_per_document)
        self.device = accelerator.device

    def next_step(self, state: TrainerState, accelerator) -> StepData:
        views = self.plan.batch(state.step)
        world, rank = accelerator.num_processes, accelerator.process_index
        if len(views) % world:
            raise DiffembedError(f"batch.size ({len(views)}) must divide by the number of processes ({world})")
        per = len(views) // world
        mine = views[rank * per:(rank + 1) * per]
        documents, queries, targets, ends = [], [], [], []
        for i, v in enumerate(mine):
            documents.append(list(self.rows[v.doc].chunks[v.start:v.end]))
            for q in v.queries:
                queries.append(q.text)
                targets.append((i, q.chunk))
                ends.append(q.section_end)
        chars = sum(len(c) for d in documents for c in d) + sum(len(q) for q in queries)
        batch = {"documents": documents, "queries": queries, "targets": targets, "section_ends": ends}
        # tokens: an estimate from characters (4 per token); the chunks are tokenized inside the loss
        return StepData(micro_batches=[batch], rows=len(views), tokens=chars * world // 4)

    def evaluate(self, model, accelerator) -> list[dict[str, Any]]:
        if self.dev is None or not accelerator.is_main_process:
            return []
        from diffembed.eval.datasets import ContextualDataset
        from diffembed.eval.runner import Grid, evaluate

        loss = accelerator.unwrap_model(model).loss
        loss.model.eval()
        with torch.no_grad():
            system = _LiveContextualSystem(self.stage.name, loss)
            modes = ("naive", "late") if isinstance(self.dev, ContextualDataset) else ("naive",)
            rows = evaluate(self.dev, system, Grid(modes=modes, max_queries=self.stage.data.dev_max_queries))
        loss.model.train()
        return [{"set": "dev", "mode": r["mode"], "precision": "float32", "ndcg@10": r["ndcg@10"],
                 "recall@10": r.get("recall@10"), "mrr@10": r.get("mrr@10")} for r in rows]

    def step_postfix(self, record: dict[str, Any]) -> dict[str, str]:
        return {"loss": f"{record['loss']:.4f}", "seq": f"{record['in_sequence']:.3f}",
                "batch": f"{record['in_batch']:.3f}"}


class _LiveContextualSystem:
    """The model being trained as an eval system: queries and naive chunks as sentence-transformers
    embeds them, late chunks through the training loss's own (runtime-equal) late chunking."""

    system = "diffembed-train"
    supports_late = True

    def __init__(self, name: str, loss) -> None:
        self.name, self.loss = name, loss
        self.dim = int(loss.model.get_embedding_dimension())

    def _encode(self, texts: list[str], prompt: str | None) -> torch.Tensor:
        return self.loss.model.encode(texts, prompt=prompt, convert_to_tensor=True, show_progress_bar=False).float().cpu()

    def queries(self, texts: list[str]) -> torch.Tensor:
        return self._encode(texts, self.loss.query_prompt)

    def passages(self, texts: list[str]) -> torch.Tensor:
        return self._encode(texts, self.loss.doc_prompt or None)

    def contextual(self, documents: list[list[str]]) -> list[torch.Tensor]:
        # windows in passes of at most 16 full windows, as the runtime batches them
        budget = 16 * self.loss.model.max_seq_length
        return [v.float().cpu() for v in self.loss.chunk_vectors(documents, batch_tokens=budget)]
