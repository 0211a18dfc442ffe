"""Tokenization of requests, once, on request threads: per-input limits, usage counts, cutting when
asked, and the token ids the model thread embeds.

It runs before a request is queued, so one bad input is refused on its own instead of failing a
batch shared with other clients, and the model thread only runs forward passes. Blank strings are
refused earlier, by the request schemas (``serve.schemas``); what is checked here needs tokens.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from diffembed.inference.tokens import Head, tokenize_bare, tokenize_heads
from diffembed.serve.errors import ApiError


@dataclass
class PreparedTexts:
    ids: list[list[int]]  # complete sequences for the model: prompt + text (cut only when asked), wrapped
    skip: int  # leading prompt tokens pooling leaves out (Embedder.prompt_skip)
    tokens: int  # input tokens the model sees, for usage


@dataclass
class PreparedDocuments:
    ids: list[list[list[int]]]  # per document, each chunk's token ids (no special tokens)
    lengths: list[int]  # padded cost per document, for the batch budget
    tokens: int


class RequestTokenizer:
    """Tokenizes on request threads with a private copy of the model's tokenizer.

    The Rust tokenizer object may be mutated by a call (transformers resets truncation/padding on
    it), and code beside the server may tokenize with the model's own (a searcher, library calls);
    sharing one object across threads can fail with "Already borrowed". The copy is guarded by its
    own lock.
    """

    def __init__(self, embedder):
        self._tok = copy.deepcopy(embedder.tokenizer)
        self._lock = threading.Lock()
        self.template = embedder.template
        self.n_separator = len(embedder.template.separator)
        self.window = embedder.window_capacity
        self.max_length = embedder.max_length
        # Requests only use the model's own prompts: count their pooled-out tokens once.
        self._skips = {p: embedder.prompt_skip(p) for p in embedder.prompts.values() if p}

    def bare(self, texts: Sequence[str]) -> list[list[int]]:
        with self._lock:
            return tokenize_bare(self._tok, list(texts))

    def heads(self, texts: Sequence[str], limit: int, *, offsets: bool) -> list[Head]:
        """Each text's first tokens, tokenizing only a bounded prefix of a long text."""
        with self._lock:
            return tokenize_heads(self._tok, list(texts), limit, offsets=offsets)

    def cut(self, text: str, head: Head, limit: int) -> tuple[str, list[int]]:
        """The longest prefix of ``text`` (at a token boundary) with at most ``limit`` tokens, and its ids.

        ``head`` holds the offsets of the text's first tokens; only the cut prefix, at most
        ``limit`` tokens long, is ever tokenized again.
        """
        if head.offsets is None:
            raise ApiError(400, "truncation below the model window needs a fast tokenizer", "unsupported")
        ids, offsets = head.ids, head.offsets
        for _ in range(4):  # re-tokenising a prefix can merge differently; tighten until it fits
            if len(offsets) <= limit:
                break
            text = text[: offsets[limit - 1][1]]
            with self._lock:
                enc = self._tok(text, add_special_tokens=False, return_offsets_mapping=True)
            ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
        return text, ids[:limit]

    def prepare_texts(self, texts: list[str], *, prompt: str | None, limit: int, truncate: bool,
                      what: str) -> PreparedTexts:
        """Token ids of ``prompt + text`` for each text, refused (or, with ``truncate``, cut) past ``limit``."""
        full = [prompt + t for t in texts] if prompt else list(texts)
        below = limit < self.window
        heads = self.heads(full, limit, offsets=below and truncate and getattr(self._tok, "is_fast", False))
        seqs, used = [], 0
        for i, head in enumerate(heads):
            if not head.ids:
                raise ApiError(400, f"{what}[{i}] produced no tokens", "empty_input")
            ids = head.ids
            too_long = head.over(limit) or head.capped(limit)
            if too_long and not truncate:
                if head.over(limit):
                    message = f"{what}[{i}] has {head.count_text(limit)} tokens"
                else:
                    message = f"{what}[{i}] is longer than {head.chars} characters"
                raise ApiError(400, f"{message}; this server takes at most {limit} tokens per input", "input_too_long")
            if too_long and below and head.over(limit):
                # Cut at a token boundary and keep the cut text's own tokens (a prefix may merge
                # differently), as encoding the cut text gives. A capped text is its first
                # characters, whose tokens ``head.ids`` already are; at the window the first
                # ``limit`` tokens are kept, as Embedder.encode does.
                cut, ids = self.cut(full[i], head, limit)
                if prompt and len(cut) <= len(prompt):
                    raise ApiError(400, f"the prompt alone fills the {limit}-token limit", "input_too_long")
            ids = ids[:limit]
            seqs.append(self.template.wrap(ids))
            used += len(ids)
        return PreparedTexts(seqs, self._skips.get(prompt, 0) if prompt else 0, used)

    def prepare_documents(self, documents: list[list[str]], *, max_tokens: int, what: str) -> PreparedDocuments:
        """Each chunk's token ids, with the per-document limit checked and the batch cost counted."""
        flat = iter(self.bare([c for doc in documents for c in doc]))
        out, lengths, total = [], [], 0
        for d, doc in enumerate(documents):
            chunk_ids = [next(flat) for _ in doc]
            for c, ids in enumerate(chunk_ids):
                if not ids:
                    raise ApiError(400, f"{what}[{d}][{c}] produced no tokens", "empty_input")
            n_doc = sum(len(ids) for ids in chunk_ids)
            if n_doc > max_tokens:
                raise ApiError(400, f"{what}[{d}] has {n_doc} tokens; this server takes at most {max_tokens} "
                                    "tokens per document", "document_too_long")
            total += n_doc
            out.append(chunk_ids)
            # Padded cost for the batch budget: long documents run as windows of the model length.
            full = n_doc + (len(doc) - 1) * self.n_separator + self.template.n_special
            lengths.append(min(full, self.max_length))
        return PreparedDocuments(out, lengths, total)
