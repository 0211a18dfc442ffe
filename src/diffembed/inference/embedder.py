"""The embedding runtime every other part of diffembed uses.

One model load, three ways in: ``encode`` (independent texts), ``encode_contextual`` (documents given
as ordered chunks, late-chunked) and ``encode_document`` (raw text chunked here, late-chunked). All
three batch by a padded-token budget over length-sorted inputs and return results in input order.

Prompts resolve as in sentence-transformers: an explicit ``prompt`` ("" for none), else the named
one, else the model's ``default_prompt_name`` (config_sentence_transformers.json), else none. In
late chunking the prompt leads the first chunk; with ``include_prompt=False`` its tokens (and the
leading special tokens, as sentence-transformers counts them) belong to no chunk.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from diffembed.errors import InputError
from diffembed.inference.batching import token_budget_batches
from diffembed.inference.chunking import split_chunks
from diffembed.inference.late_chunking import (DocumentPlan, kept_owner, plan_from_chunks, plan_from_spans,
                                               plan_windows, tokenize_documents)
from diffembed.inference.pooling import accumulate_spans, pool
from diffembed.inference.quantize import check_dimensions, check_precision, empty_output, finalize
from diffembed.inference.tokens import (prompt_skip, special_template, tokenize_bare, tokenize_heads,
                                       tokenize_with_offsets)
from diffembed.inference.validation import check_documents, check_texts
from diffembed.modeling.loader import LoadedModel, load_model

# Padded tokens per forward batch. On CPU, small batches stay in cache: for MiniLM on 2 cores,
# 512-3072 tokens ran ~100 texts/s and 16384 only ~64 (BENCHMARKS.md). GPUs want large batches.
DEFAULT_BATCH_TOKENS = {"cpu": 2048, "cuda": 16384}


def default_batch_tokens(device_type: str) -> int:
    return DEFAULT_BATCH_TOKENS.get(device_type, DEFAULT_BATCH_TOKENS["cpu"])


@dataclass
class DocumentEmbedding:
    """A raw document chunked and late-chunk embedded: chunk i is ``text[spans[i][0]:spans[i][1]]``."""

    chunks: list[str]
    spans: list[tuple[int, int]]
    embeddings: np.ndarray


class Embedder:
    """Load a model once and embed texts, chunked documents and raw documents.

    ``model`` is a folder or hub id (``None``: the packaged all-MiniLM-L6-v2). Decoders are made
    bidirectional unless ``bidirectional=False`` or the folder's config.json says ``"is_causal": true``
    (a ``model.attention: causal`` export, see ``modeling.loader``). ``batch_tokens`` defaults to 2048
    on CPU and 16384 on CUDA.
    """

    def __init__(
        self,
        model: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        *,
        pooling: str | None = None,
        max_length: int | None = None,
        bidirectional: bool | None = None,
        batch_tokens: int | None = None,
        chunk_separator: str | None = None,
        show_progress: bool | None = None,
    ):
        self.loaded: LoadedModel = load_model(
            model, device=device, dtype=dtype, bidirectional=bidirectional, pooling=pooling, max_length=max_length
        )
        self.template = special_template(self.loaded.tokenizer, chunk_separator)
        self.batch_tokens = self._check_batch_tokens(
            default_batch_tokens(self.loaded.device.type) if batch_tokens is None else batch_tokens
        )
        self.show_progress = show_progress

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        return self.loaded.dim

    @property
    def max_length(self) -> int:
        return self.loaded.max_length

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    @property
    def model(self) -> torch.nn.Module:
        return self.loaded.model

    @property
    def default_precision(self) -> str:
        return self.loaded.spec.default_precision

    @property
    def prompts(self) -> dict[str, str]:
        return self.loaded.spec.prompts

    @property
    def default_prompt_name(self) -> str | None:
        """The prompt applied when a call names none (sentence-transformers' ``default_prompt_name``)."""
        return self.loaded.spec.default_prompt_name

    def info(self) -> dict:
        return self.loaded.describe()

    # ------------------------------------------------------------------ public API
    def encode(
        self,
        texts: str | Sequence[str],
        prompt: str | None = None,
        *,
        prompt_name: str | None = None,
        batch_tokens: int | None = None,
        precision: str | None = None,
        dimensions: int | None = None,
        normalize: bool = True,
        truncate: bool = True,
        show_progress: bool | None = None,
    ) -> np.ndarray:
        """Embed independent texts -> (n, dim) array (1-D for a single string).

        ``prompt`` (``""``: none) or ``prompt_name``; neither: the model's default prompt, if any."""
        single = isinstance(texts, str)
        items = check_texts(texts)
        precision = check_precision(precision or self.default_precision)
        dims = check_dimensions(dimensions, self.dim)
        if not items:
            return empty_output(precision, dims or self.dim)
        pooled = self.pooled(items, prompt=self._prompt(prompt, prompt_name), batch_tokens=batch_tokens,
                             truncate=truncate, show_progress=show_progress)
        out = finalize(pooled, precision, dims, normalize)
        return out[0] if single else out

    def encode_query(self, texts: str | Sequence[str], **kwargs) -> np.ndarray:
        """``encode`` with the model's ``query`` prompt when it defines one and the call gives no
        prompt (else as ``encode``: the default prompt), as sentence-transformers' ``encode_query``."""
        if kwargs.get("prompt") is None and kwargs.get("prompt_name") is None and "query" in self.prompts:
            kwargs["prompt_name"] = "query"
        return self.encode(texts, **kwargs)

    def encode_contextual(
        self,
        documents: Sequence[Sequence[str]],
        *,
        prompt: str | None = None,
        prompt_name: str | None = None,
        batch_tokens: int | None = None,
        precision: str | None = None,
        dimensions: int | None = None,
        normalize: bool = True,
        overlap: int | None = None,
        show_progress: bool | None = None,
    ) -> list[np.ndarray]:
        """Late-chunk documents given as ordered chunks -> one (n_chunks, dim) array per document.

        The prompt (resolved as in ``encode``) is prepended to each document's first chunk, so a
        one-chunk document gets the vector ``encode`` gives its text."""
        precision = check_precision(precision or self.default_precision)
        dims = check_dimensions(dimensions, self.dim)
        pooled = self.pooled_contextual(documents, prompt=self._prompt(prompt, prompt_name), batch_tokens=batch_tokens,
                                        overlap=overlap, show_progress=show_progress)
        return [finalize(p, precision, dims, normalize) for p in pooled]

    def pooled_contextual(self, documents: Sequence[Sequence[str]], *, prompt: str | None = None,
                          batch_tokens: int | None = None, overlap: int | None = None,
                          show_progress: bool | None = None) -> list[torch.Tensor]:
        """Late-chunked float32 vectors per document, before truncation or quantization.

        ``prompt``: None for the model's default prompt, "" for none."""
        docs = check_documents(documents)
        prompt = self._prompt(prompt, None)
        tokenized = tokenize_documents(self.tokenizer, docs, prompt)
        return self.pooled_chunk_ids(tokenized, skip=self.prompt_skip(prompt), batch_tokens=batch_tokens,
                                     overlap=overlap, show_progress=show_progress)

    def pooled_chunk_ids(self, documents: Sequence[Sequence[list[int]]], *, skip: int = 0,
                         batch_tokens: int | None = None, overlap: int | None = None,
                         show_progress: bool | None = None) -> list[torch.Tensor]:
        """``pooled_contextual`` after tokenization: each document as its chunks' token ids (no special
        tokens; a prompt's ids lead the first chunk, and ``skip`` is ``prompt_skip(prompt)``). A server
        tokenizes on request threads and leaves only this forward work to its model thread."""
        plans = [plan_from_chunks([list(c) for c in doc], self.template, skip=skip) for doc in documents]
        return self._late_pool(plans, batch_tokens, overlap, show_progress)

    def encode_document(self, text: str, **kwargs) -> DocumentEmbedding:
        """Chunk one raw text by a token budget at sentence boundaries and late-chunk embed it."""
        if not isinstance(text, str):
            raise InputError(f"text must be a string, got {type(text).__name__}")
        return self.encode_documents([text], **kwargs)[0]

    def encode_documents(
        self,
        texts: Sequence[str],
        *,
        prompt: str | None = None,
        prompt_name: str | None = None,
        chunk_tokens: int | None = None,
        batch_tokens: int | None = None,
        precision: str | None = None,
        dimensions: int | None = None,
        normalize: bool = True,
        overlap: int | None = None,
        show_progress: bool | None = None,
    ) -> list[DocumentEmbedding]:
        """Chunk raw texts and late-chunk embed them. The prompt (resolved as in ``encode``) leads
        each document and belongs to its first chunk; it is tokenized on its own, before the text's
        tokens, since chunk boundaries come from the text's own token offsets."""
        items = check_texts(texts, what="texts")
        precision = check_precision(precision or self.default_precision)
        dims = check_dimensions(dimensions, self.dim)
        prompt = self._prompt(prompt, prompt_name)
        lead, skip = self._lead_ids(prompt), self.prompt_skip(prompt)
        plans, layouts = [], []
        for text in items:
            content, pieces = self._split(text, chunk_tokens)
            spans = [(p.token_start + len(lead), p.token_end + len(lead)) for p in pieces]
            spans[0] = (0, spans[0][1])  # the prompt leads the first chunk
            plans.append(plan_from_spans(lead + content, spans, self.template, skip=skip))
            layouts.append([(p.char_start, p.char_end) for p in pieces])
        pooled = self._late_pool(plans, batch_tokens, overlap, show_progress)
        return [
            DocumentEmbedding(chunks=[text[a:b] for a, b in spans], spans=spans,
                              embeddings=finalize(p, precision, dims, normalize))
            for text, spans, p in zip(items, layouts, pooled)
        ]

    def chunk_spans(self, text: str, chunk_tokens: int | None = None) -> list[tuple[int, int]]:
        """The character spans ``encode_documents`` would cut ``text`` into (for naive chunk embedding)."""
        if not isinstance(text, str):
            raise InputError(f"text must be a string, got {type(text).__name__}")
        return [(p.char_start, p.char_end) for p in self._split(text, chunk_tokens)[1]]

    def _split(self, text: str, chunk_tokens: int | None):
        budget = chunk_tokens if chunk_tokens is not None else self.default_chunk_tokens
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise InputError(f"chunk_tokens must be a positive integer, got {budget!r}")
        content, offsets = tokenize_with_offsets(self.tokenizer, text)
        if not content:
            raise InputError("a document produced no tokens")
        return content, split_chunks(text, offsets, budget)

    @property
    def default_chunk_tokens(self) -> int:
        """Chunks a quarter of the window (at most 256 tokens), so each chunk sees real context."""
        return max(16, min(256, self.window_capacity // 4))

    @property
    def window_capacity(self) -> int:
        return self.max_length - self.template.n_special

    # ------------------------------------------------------------------ internals
    def pooled(self, items: list[str], *, prompt: str | None = None, batch_tokens: int | None = None,
               truncate: bool = True, show_progress: bool | None = None) -> torch.Tensor:
        """Pooled float32 vectors (n, dim) in input order, before truncation or quantization.

        ``prompt``: None for the model's default prompt, "" for none."""
        prompt = self._prompt(prompt, None)
        cap = self.window_capacity
        # Only as much of each text is tokenized as the window can keep (see tokenize_heads).
        heads = tokenize_heads(self.tokenizer, [prompt + t for t in items] if prompt else items, cap)
        for i, h in enumerate(heads):
            if not h.ids:
                raise InputError(f"input[{i}] produced no tokens")
            if not truncate and h.over(cap):
                raise InputError(f"input[{i}] has {h.count_text(cap)} tokens; the model takes at most {cap} "
                                 "(truncate=False)")
            if not truncate and h.capped(cap):
                raise InputError(f"input[{i}] is longer than {h.chars} characters, the most read for a {cap}-token "
                                 "window (truncate=False)")
        seqs = [self.template.wrap(h.ids[:cap]) for h in heads]
        del heads
        return self.pooled_token_ids(seqs, skip=self.prompt_skip(prompt), batch_tokens=batch_tokens,
                                     show_progress=show_progress)

    def prompt_skip(self, prompt: str | None) -> int:
        """Leading positions pooling leaves out for ``prompt`` (see ``tokens.prompt_skip``)."""
        return prompt_skip(self.tokenizer, prompt, self.loaded.spec.include_prompt, self.max_length)

    def pooled_token_ids(self, seqs: Sequence[list[int]], *, skip: int = 0, batch_tokens: int | None = None,
                         show_progress: bool | None = None) -> torch.Tensor:
        """``pooled`` after tokenization: forward passes and pooling only, (n, dim) float32 in input order.

        Each sequence is complete (``template.wrap`` applied, at most ``max_length`` tokens); ``skip``
        is ``prompt_skip(prompt)`` when the sequences start with a prompt: the first ``skip``
        positions are left out of pooling. A server tokenizes on request threads and leaves only
        this to its model thread.
        """
        for i, s in enumerate(seqs):
            if not 0 < len(s) <= self.max_length:
                raise InputError(f"input[{i}] has {len(s)} token ids; expected 1..{self.max_length}")
        out = torch.empty(len(seqs), self.dim, dtype=torch.float32)
        batches = token_budget_batches([len(s) for s in seqs], self._budget(batch_tokens))
        for batch in self._progress(batches, show_progress, "encode", len(seqs)):
            input_ids, mask = self._pad([seqs[i] for i in batch])
            hidden = self._forward(input_ids, mask)
            if skip:
                mask = mask.clone()
                mask[:, :skip] = 0
            out[batch] = pool(hidden, mask, self.loaded.pooling).cpu()
        return out

    def _late_pool(self, plans: list[DocumentPlan], batch_tokens: int | None, overlap: int | None,
                   show_progress: bool | None) -> list[torch.Tensor]:
        windows = plan_windows(plans, self.template, self.max_length, overlap)
        sums = [torch.zeros(p.n_chunks, self.dim) for p in plans]
        counts = [torch.zeros(p.n_chunks) for p in plans]
        batches = token_budget_batches([len(w.ids) for w in windows], self._budget(batch_tokens))
        for batch in self._progress(batches, show_progress, "late-chunk", len(windows)):
            input_ids, mask = self._pad([windows[i].ids for i in batch])
            hidden = self._forward(input_ids, mask).float().cpu()
            for row, wi in enumerate(batch):
                w = windows[wi]
                states = hidden[row, : len(w.ids)][torch.from_numpy(w.keep)]
                owner = torch.from_numpy(kept_owner(plans[w.doc], w))
                accumulate_spans(sums[w.doc], counts[w.doc], states, owner)
        return [s / c.clamp(min=1).unsqueeze(-1) for s, c in zip(sums, counts)]

    def _pad(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        longest = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), longest), self.template.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), longest), dtype=torch.long)
        for r, s in enumerate(seqs):
            ids[r, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[r, : len(s)] = 1
        return ids, mask

    @torch.inference_mode()
    def _forward(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        dev = self.loaded.device
        out = self.model(input_ids=input_ids.to(dev), attention_mask=mask.to(dev))
        return out.last_hidden_state

    def resolve_prompt(self, prompt: str | None = None, prompt_name: str | None = None) -> str:
        """The prompt text a call applies ("" for none): ``prompt`` as given, else the named prompt,
        else the default prompt, as sentence-transformers' ``encode`` resolves them."""
        return self._prompt(prompt, prompt_name)

    def _prompt(self, prompt: str | None, prompt_name: str | None) -> str:
        if prompt is not None and prompt_name is not None:
            raise InputError("pass prompt or prompt_name, not both")
        if prompt is not None:
            if not isinstance(prompt, str):
                raise InputError("prompt must be a string")
            return prompt
        if prompt_name is None:
            prompt_name = self.default_prompt_name
            if prompt_name is None:
                return ""
        if prompt_name not in self.prompts:
            known = ", ".join(sorted(self.prompts)) or "none"
            raise InputError(f"the model has no prompt named '{prompt_name}' (known: {known})")
        return self.prompts[prompt_name]

    def _lead_ids(self, prompt: str | None) -> list[int]:
        return list(tokenize_bare(self.tokenizer, [prompt])[0]) if prompt else []

    def _budget(self, batch_tokens: int | None) -> int:
        return self.batch_tokens if batch_tokens is None else self._check_batch_tokens(batch_tokens)

    @staticmethod
    def _check_batch_tokens(batch_tokens: int) -> int:
        if isinstance(batch_tokens, bool) or not isinstance(batch_tokens, int) or batch_tokens < 1:
            raise InputError(f"batch_tokens must be a positive integer, got {batch_tokens!r}")
        return batch_tokens

    def _progress(self, batches: list[list[int]], show: bool | None, desc: str, total: int) -> Iterable[list[int]]:
        if show is None:
            show = self.show_progress
        if show is None:
            show = sys.stderr.isatty() and len(batches) > 1
        if not show:
            return batches
        return _counted(batches, tqdm(total=total, desc=desc, unit="seq", leave=False))


def _counted(batches: list[list[int]], bar) -> Iterable[list[int]]:
    with bar:
        for b in batches:
            yield b
            bar.update(len(b))
