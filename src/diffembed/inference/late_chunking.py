"""Late chunking over documents of any length.

A document is a token sequence ``prefix + content + suffix`` with chunk spans over the content. It is
cut into model-sized windows that overlap by ``overlap`` tokens; each window gets the model's special
tokens around it, and the outputs of a later window's first ``overlap`` tokens are dropped, so every
token is embedded exactly once, with context on both sides (Jina's "long late chunking").

Span ownership: separator tokens between chunks belong to no chunk; the document's leading special
tokens belong to the first chunk and its trailing ones to the last. A prompt leads the first chunk
and belongs to it, unless the model pools without its prompt (``include_prompt=False``): then the
first ``skip`` positions (``Embedder.prompt_skip``: the leading special tokens and the prompt) belong
to no chunk. A one-chunk document therefore pools exactly the tokens that plain ``encode`` pools.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diffembed.errors import InputError
from diffembed.inference.tokens import SpecialTemplate, tokenize_bare


@dataclass
class DocumentPlan:
    """One document as global positions with an owning chunk per position."""

    content: list[int]
    owner: np.ndarray  # chunk index per global position (prefix + content + suffix), -1 = none
    n_chunks: int


@dataclass
class Window:
    doc: int
    ids: list[int]
    positions: np.ndarray  # global position of each window token
    keep: np.ndarray  # bool per window token: is this output used?


def plan_from_chunks(chunk_ids: list[list[int]], template: SpecialTemplate, *, skip: int = 0) -> DocumentPlan:
    """Join tokenised chunks with the separator and record which chunk owns each token."""
    content: list[int] = []
    owner: list[int] = [0] * len(template.prefix)
    for i, ids in enumerate(chunk_ids):
        if i:
            content.extend(template.separator)
            owner.extend([-1] * len(template.separator))
        content.extend(ids)
        owner.extend([i] * len(ids))
    owner.extend([len(chunk_ids) - 1] * len(template.suffix))
    return DocumentPlan(content=content, owner=_skip_prompt(np.asarray(owner, dtype=np.int64), skip),
                        n_chunks=len(chunk_ids))


def plan_from_spans(content: list[int], spans: list[tuple[int, int]], template: SpecialTemplate, *,
                    skip: int = 0) -> DocumentPlan:
    """Contiguous text already tokenised: chunks are token ranges of the content."""
    owner = np.full(len(template.prefix) + len(content) + len(template.suffix), -1, dtype=np.int64)
    base = len(template.prefix)
    for i, (a, b) in enumerate(spans):
        owner[base + a : base + b] = i
    owner[:base] = 0
    owner[base + len(content) :] = len(spans) - 1
    return DocumentPlan(content=content, owner=_skip_prompt(owner, skip), n_chunks=len(spans))


def _skip_prompt(owner: np.ndarray, skip: int) -> np.ndarray:
    """Leave the first ``skip`` positions out of the first chunk (never out of a later one, should a
    prompt counted alone be longer than the tokens it became next to the text)."""
    head = owner[:skip]
    head[head == 0] = -1
    return owner


def window_bounds(n_content: int, capacity: int, overlap: int) -> list[tuple[int, int, int]]:
    """(start, end, keep_from) content ranges; keep_from is where this window's kept outputs begin."""
    if capacity < 1:
        raise InputError("the model window is too small for its own special tokens")
    if not 0 <= overlap < capacity:
        raise InputError(f"window overlap {overlap} must be >= 0 and smaller than the window ({capacity} tokens)")
    bounds = [(0, min(n_content, capacity), 0)]
    while bounds[-1][1] < n_content:
        prev_end = bounds[-1][1]
        start = prev_end - overlap
        bounds.append((start, min(n_content, start + capacity), prev_end))
    return bounds


def make_windows(doc: int, plan: DocumentPlan, template: SpecialTemplate, max_length: int, overlap: int) -> list[Window]:
    capacity = max_length - template.n_special
    n = len(plan.content)
    bounds = window_bounds(n, capacity, overlap)
    pre, suf = len(template.prefix), len(template.suffix)
    windows = []
    for k, (start, end, keep_from) in enumerate(bounds):
        first, last = k == 0, k == len(bounds) - 1
        ids = template.wrap(plan.content[start:end])
        positions = np.concatenate([
            np.arange(pre), pre + np.arange(start, end), pre + n + np.arange(suf)
        ]).astype(np.int64)
        keep = np.concatenate([
            np.full(pre, first), np.arange(start, end) >= keep_from, np.full(suf, last)
        ]).astype(bool)
        windows.append(Window(doc=doc, ids=ids, positions=positions, keep=keep))
    return windows


# ---------------------------------------------------------------------------- shared with training
# The runtime (Embedder) and the contextual training stage both go through these, so a chunk is
# pooled over the same tokens, windows and separators in training as at inference.


def default_overlap(capacity: int) -> int:
    """Window overlap when the caller gives none: a quarter of the window, at most 128 tokens."""
    return min(128, capacity // 4)


def tokenize_documents(tokenizer, documents: list[list[str]], prompt: str = "") -> list[list[list[int]]]:
    """Each document's chunks as token ids (no special tokens). The prompt is tokenized with the first
    chunk's text, as plain encoding tokenizes prompt + text (a BPE prompt ending in a space merges
    with the next word)."""
    flat_ids = tokenize_bare(tokenizer, [prompt + c if prompt and c_i == 0 else c
                                         for doc in documents for c_i, c in enumerate(doc)])
    tokenized, k = [], 0
    for d, doc in enumerate(documents):
        chunk_ids = flat_ids[k : k + len(doc)]
        k += len(doc)
        for c, ids in enumerate(chunk_ids):
            if not ids:
                raise InputError(f"documents[{d}][{c}] produced no tokens")
        tokenized.append([list(ids) for ids in chunk_ids])
    return tokenized


def plan_windows(plans: list[DocumentPlan], template: SpecialTemplate, max_length: int,
                 overlap: int | None = None) -> list[Window]:
    """All windows of all documents, in document order (``overlap`` None: ``default_overlap``)."""
    ov = default_overlap(max_length - template.n_special) if overlap is None else int(overlap)
    return [w for d, plan in enumerate(plans) for w in make_windows(d, plan, template, max_length, ov)]


def kept_owner(plan: DocumentPlan, window: Window) -> np.ndarray:
    """The owning chunk (-1: none) of each kept output of the window, in window order."""
    return plan.owner[window.positions[window.keep]]
