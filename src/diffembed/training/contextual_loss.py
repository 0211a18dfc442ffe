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
) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_in_sequence, L_in_batch), each a mean cross-entropy over queries of cosine / temperature.

    Query q points at chunk ``targets[q] = (doc, chunk)``. In-sequence: the candidates are the chunks
    of its own document (the gold among them). In-batch: the gold plus every chunk of the *other*
    documents; the gold's own document siblings are left out here, since they are exactly what the
    in-sequence term weighs, so ``lam`` alone sets how hard same-document negatives push (the split
    DESIGN.md section 1 states: in-sequence = own document, in-batch = other documents).
    """
    if not temperature > 0:
        raise InputError(f"temperature must be > 0, got {temperature}")
    if query_emb.ndim != 2 or query_emb.shape[0] != len(targets):
        raise InputError(f"query_emb must be (n_queries, dim) with one row per target, got {tuple(query_emb.shape)} "
                         f"for {len(targets)} targets")
    if not chunk_embs_per_doc:
        raise InputError("no documents")
    sizes = [int(c.shape[0]) for c in chunk_embs_per_doc]
    for q, (d, c) in enumerate(targets):
        if not (0 <= d < len(sizes) and 0 <= c < sizes[d]):
            raise InputError(f"targets[{q}] = ({d}, {c}) points at no chunk")
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
    neg_inf = torch.finfo(scores.dtype).min
    seq = F.cross_entropy(scores.masked_fill(~same, neg_inf), gold)
    batch = F.cross_entropy(scores.masked_fill(same & ~is_gold, neg_inf), gold)
    return seq, batch


def insent_loss(
    query_emb: torch.Tensor,
    chunk_embs_per_doc: Sequence[torch.Tensor],
    targets: Sequence[tuple[int, int]],
    temperature: float = 0.05,
    lam: float = 0.5,
) -> torch.Tensor:
    """``lam * L_in_sequence + (1 - lam) * L_in_batch`` (see ``insent_terms``); InSeNT's lambda_seq 0.5,
    cosine x 20 (temperature 0.05) are the defaults."""
    if not 0.0 <= lam <= 1.0:
        raise InputError(f"lam must be in [0, 1], got {lam}")
    seq, batch = insent_terms(query_emb, chunk_embs_per_doc, targets, temperature)
    return lam * seq + (1.0 - lam) * batch
