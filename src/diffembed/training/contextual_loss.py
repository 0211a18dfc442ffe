"""Late-chunked chunk embeddings with gradients, and the InSeNT loss over them (groundwork for the
contextual stage, issue 13).

``late_chunk_embeddings`` lays documents out exactly as ``Embedder.encode_contextual`` does (same
tokenization, separators, special tokens, long-document windows with overlap and span ownership:
the functions of ``inference.late_chunking`` that the runtime itself calls), so a model trained on
these vectors is trained on what inference pools. ``insent_loss`` is In-Sequence Negative Training
(Conti et al. 2025, "Context is Gold to find the Gold Passage"; DESIGN.md section 1):
``lam * L_in_sequence + (1 - lam) * L_in_batch`` over cosine similarity / temperature.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from diffembed.errors import InputError
from diffembed.inference.batching import token_budget_batches
from diffembed.inference.late_chunking import kept_owner, plan_from_chunks, plan_windows, tokenize_documents
from diffembed.inference.pooling import accumulate_spans
from diffembed.inference.tokens import SpecialTemplate, special_template
from diffembed.inference.validation import check_documents


def late_chunk_embeddings(
    backbone: nn.Module,
    tokenizer,
    documents: Sequence[Sequence[str]],
    *,
    max_length: int,
    template: SpecialTemplate | None = None,
    prompt: str = "",
    skip: int = 0,
    overlap: int | None = None,
    batch_tokens: int | None = None,
) -> list[torch.Tensor]:
    """Mean-pooled late-chunk vectors per document, (n_chunks, dim) each, with the autograd graph kept.

    ``backbone`` is the transformer (an HF model returning ``last_hidden_state``; a decoder must
    already be made bidirectional, as the runtime's loader does). ``template`` defaults to
    ``special_template(tokenizer)`` (the runtime's, with no custom separator); ``prompt``/``skip`` as
    in ``Embedder.pooled_contextual`` (``skip`` = ``Embedder.prompt_skip(prompt)``). ``batch_tokens``
    caps padded tokens per forward pass (None: all windows in one pass). Float32 out, unnormalized.
    """
    if max_length < 1:
        raise InputError(f"max_length must be positive, got {max_length}")
    template = template or special_template(tokenizer)
    docs = check_documents(documents)
    plans = [plan_from_chunks(chunks, template, skip=skip) for chunks in tokenize_documents(tokenizer, docs, prompt)]
    windows = plan_windows(plans, template, max_length, overlap)
    device = next(backbone.parameters()).device
    lengths = [len(w.ids) for w in windows]
    budget = batch_tokens if batch_tokens is not None else max(lengths) * len(windows)
    sums: list[torch.Tensor | None] = [None] * len(plans)
    counts = [torch.zeros(p.n_chunks, device=device) for p in plans]
    for batch in token_budget_batches(lengths, budget):
        longest = max(lengths[i] for i in batch)
        ids = torch.full((len(batch), longest), template.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for r, wi in enumerate(batch):
            ids[r, : lengths[wi]] = torch.tensor(windows[wi].ids, dtype=torch.long)
            mask[r, : lengths[wi]] = 1
        hidden = backbone(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
        for r, wi in enumerate(batch):
            w = windows[wi]
            if sums[w.doc] is None:
                sums[w.doc] = torch.zeros(plans[w.doc].n_chunks, hidden.shape[-1], device=device)
            states = hidden[r, : lengths[wi]][torch.from_numpy(w.keep).to(device)]
            owner = torch.from_numpy(kept_owner(plans[w.doc], w)).to(device)
            # index_add_ into a fresh zeros tensor is recorded by autograd: the sums carry the graph.
            accumulate_spans(sums[w.doc], counts[w.doc], states, owner)
    return [s / c.clamp(min=1).unsqueeze(-1) for s, c in zip(sums, counts)]


def insent_terms(
    query_emb: torch.Tensor,
    chunk_embs_per_doc: Sequence[torch.Tensor],
    targets: Sequence[tuple[int, int]],
    temperature: float = 0.05,
    section_ends: Sequence[int | None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_in_sequence, L_in_batch), each a mean cross-entropy over queries of cosine / temperature.

    Query q points at chunk ``targets[q] = (doc, chunk)``. In-sequence: the candidates are the chunks
    of its own document (the gold among them). In-batch: the gold plus every chunk of the *other*
    documents; the gold's own document siblings are left out here, since they are exactly what the
    in-sequence term weighs, so ``lam`` alone sets how hard same-document negatives push (the split
    DESIGN.md section 1 states: in-sequence = own document, in-batch = other documents).

    ``section_ends[q]`` (exclusive; None or absent: ``chunk + 1``): the gold chunk is the first
    piece of a section cut into several, and its later pieces are left out of both candidate sets,
    since they answer the query too.
    """
    if not temperature > 0:
        raise InputError(f"temperature must be > 0, got {temperature}")
    if query_emb.ndim != 2 or query_emb.shape[0] != len(targets):
        raise InputError(f"query_emb must be (n_queries, dim) with one row per target, got {tuple(query_emb.shape)} "
                         f"for {len(targets)} targets")
    if not chunk_embs_per_doc:
        raise InputError("no documents")
    sizes = [int(c.shape[0]) for c in chunk_embs_per_doc]
    if section_ends is not None and len(section_ends) != len(targets):
        raise InputError(f"section_ends has {len(section_ends)} entries for {len(targets)} targets")
    ends = [c + 1 if section_ends is None or section_ends[q] is None else int(section_ends[q])
            for q, (_, c) in enumerate(targets)]
    for q, (d, c) in enumerate(targets):
        if not (0 <= d < len(sizes) and 0 <= c < sizes[d]):
            raise InputError(f"targets[{q}] = ({d}, {c}) points at no chunk")
        if not c < ends[q] <= sizes[d]:
            raise InputError(f"section_ends[{q}] = {ends[q]} is not in ({c}, {sizes[d]}]")
    chunks = F.normalize(torch.cat(list(chunk_embs_per_doc), dim=0), dim=-1)
    scores = F.normalize(query_emb, dim=-1) @ chunks.T / temperature  # (Q, N)
    dev = scores.device
    doc_of = torch.repeat_interleave(torch.arange(len(sizes), device=dev), torch.tensor(sizes, device=dev))
    offsets = torch.tensor([0, *sizes], device=dev).cumsum(0)[:-1]
    t_doc = torch.tensor([d for d, _ in targets], device=dev)
    gold = offsets[t_doc] + torch.tensor([c for _, c in targets], device=dev)
    same = doc_of.unsqueeze(0) == t_doc.unsqueeze(1)  # (Q, N): column in the query's own document
    is_gold = torch.zeros_like(same)
    is_gold[torch.arange(len(targets), device=dev), gold] = True
    col = torch.arange(scores.shape[1], device=dev).unsqueeze(0)
    rest = (col > gold.unsqueeze(1)) & (col < (offsets[t_doc] + torch.tensor(ends, device=dev)).unsqueeze(1))
    neg_inf = torch.finfo(scores.dtype).min
    seq = F.cross_entropy(scores.masked_fill(~same | rest, neg_inf), gold)
    batch = F.cross_entropy(scores.masked_fill(same & ~is_gold, neg_inf), gold)
    return seq, batch


def insent_loss(
    query_emb: torch.Tensor,
    chunk_embs_per_doc: Sequence[torch.Tensor],
    targets: Sequence[tuple[int, int]],
    temperature: float = 0.05,
    lam: float = 0.5,
    section_ends: Sequence[int | None] | None = None,
) -> torch.Tensor:
    """``lam * L_in_sequence + (1 - lam) * L_in_batch`` (see ``insent_terms``); InSeNT's lambda_seq 0.5,
    cosine x 20 (temperature 0.05) are the defaults."""
    if not 0.0 <= lam <= 1.0:
        raise InputError(f"lam must be in [0, 1], got {lam}")
    seq, batch = insent_terms(query_emb, chunk_embs_per_doc, targets, temperature, section_ends)
    return lam * seq + (1.0 - lam) * batch


class InSeNTLoss(nn.Module):
    """The contextual stage's loss over a sentence-transformers model (Transformer -> Pooling).

    Chunks are late-chunked by ``late_chunk_embeddings`` (the runtime's layout, the model's document
    prompt) and queries go through the model as sentence-transformers embeds them (its query
    prompt), so both sides are what ``Embedder.encode_contextual`` / ``encode_query`` serve. QAT and
    Matryoshka apply as in the pairs stages: the loss is summed over each quantization view
    (``views``: mode -> weight, through the same straight-through quantizers) and each prefix size
    (``dims``; truncation and quantization are elementwise, so their order does not matter).
    """

    def __init__(self, model, *, temperature: float = 0.05, lam: float = 0.5,
                 views: dict[str, float] | None = None, dims: Sequence[int] = (),
                 batch_tokens: int | None = None) -> None:
        super().__init__()
        from diffembed.inference.tokens import prompt_skip
        from diffembed.training.quantize_aware import check_mode

        if not 0.0 <= lam <= 1.0:
            raise InputError(f"lam must be in [0, 1], got {lam}")
        self.model = model
        self.temperature, self.lam, self.batch_tokens = temperature, lam, batch_tokens
        self.views = tuple((check_mode(m), float(w)) for m, w in (views or {"float": 1.0}).items())
        full = model.get_embedding_dimension()
        self.dims = (full, *sorted({d for d in dims if d < full}, reverse=True))
        prompts = dict(model.prompts or {})
        self.query_prompt = prompts.get("query")
        self.doc_prompt = prompts.get("document", prompts.get("passage")) or ""
        pooling = next((m for m in model if type(m).__name__ == "Pooling"), None)
        include = True if pooling is None else bool(getattr(pooling, "include_prompt", True))
        self.skip = prompt_skip(model.tokenizer, self.doc_prompt, include, model.max_seq_length)

    def chunk_vectors(self, documents: Sequence[Sequence[str]], batch_tokens: int | None = None) -> list[torch.Tensor]:
        return late_chunk_embeddings(self.model[0].auto_model, self.model.tokenizer, documents,
                                     max_length=self.model.max_seq_length, prompt=self.doc_prompt, skip=self.skip,
                                     batch_tokens=batch_tokens or self.batch_tokens)

    def query_vectors(self, queries: Sequence[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        features = self.model.preprocess(list(queries), prompt=self.query_prompt)
        features = {k: v.to(device) if torch.is_tensor(v) else v for k, v in features.items()}
        return self.model(features)["sentence_embedding"]

    def forward(self, documents: Sequence[Sequence[str]], queries: Sequence[str], targets: Sequence[tuple[int, int]],
                section_ends: Sequence[int | None] | None = None) -> dict[str, torch.Tensor]:
        """``loss`` and its two terms (``in_sequence``, ``in_batch``), each summed over views and
        sizes with the views' weights, so ``loss = lam * in_sequence + (1 - lam) * in_batch``."""
        from diffembed.training.quantize_aware import quantize_ste

        chunks = self.chunk_vectors(documents)
        q = self.query_vectors(queries)
        seq_total = batch_total = q.new_zeros(())
        for mode, weight in self.views:
            qv = quantize_ste(q, mode)
            cv = [quantize_ste(c, mode) for c in chunks]
            for dim in self.dims:
                seq, batch = insent_terms(qv[:, :dim], [c[:, :dim] for c in cv], targets, self.temperature,
                                          section_ends)
                seq_total = seq_total + weight * seq
                batch_total = batch_total + weight * batch
        loss = self.lam * seq_total + (1.0 - self.lam) * batch_total
        return {"loss": loss, "in_sequence": seq_total.detach(), "in_batch": batch_total.detach()}
