"""Request checks that need tokens: per-input limits, usage counts, and cutting when asked.

They run before a request is queued, so one bad input is refused on its own instead of failing a
batch shared with other clients, and the batcher learns each input's length for its token budget.
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
    texts: list[str]  # what goes to the model (cut only when truncation was asked for)
    lengths: list[int]  # padded sequence lengths, special tokens included
    tokens: int  # input tokens the model sees, for usage


@dataclass
class PreparedDocuments:
    lengths: list[int]
    tokens: int


class RequestTokenizer:
    """Tokenizes on request threads with a private copy of the model's tokenizer.

    The Rust tokenizer object may be mutated by a call (transformers resets truncation/padding on
    it), and the model thread tokenizes too; sharing one object across threads can fail with
    "Already borrowed". The copy is guarded by its own lock.
    """

    def __init__(self, embedder):
        self._tok = copy.deepcopy(embedder.tokenizer)
        self._lock = threading.Lock()
        self.n_special = embedder.template.n_special
        self.n_separator = len(embedder.template.separator)
        self.window = embedder.window_capacity
        self.max_length = embedder.max_length

    def counts(self, texts: Sequence[str]) -> list[int]:
        with self._lock:
            return [len(x) for x in tokenize_bare(self._tok, list(texts))]

    def heads(self, texts: Sequence[str], limit: int, *, offsets: bool) -> list[Head]:
        """Each text's first tokens, tokenizing only a bounded prefix of a long text."""
        with self._lock:
            return tokenize_heads(self._tok, list(texts), limit, offsets=offsets)

    def cut(self, text: str, head: Head, limit: int) -> str:
        """The longest prefix of ``text`` (at a token boundary) with at most ``limit`` tokens.

        ``head`` holds the offsets of the text's first tokens; only the cut prefix, at most
        ``limit`` tokens long, is ever tokenized again.
        """
        if head.offsets is None:
            raise ApiError(400, "truncation below the model window needs a fast tokenizer", "unsupported")
        offsets = head.offsets
        for _ in range(4):  # re-tokenising a prefix can merge differently; tighten until it fits
            if len(offsets) <= limit:
                return text
            text = text[: offsets[limit - 1][1]]
            with self._lock:
                offsets = self._tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        return text

    def prepare_texts(self, texts: list[str], *, prompt: str | None, limit: int, truncate: bool,
                      what: str) -> PreparedTexts:
        for i, t in enumerate(texts):
            if not t.strip():
                raise ApiError(400, f"{what}[{i}] is an empty string; empty inputs are not allowed", "empty_input")
        full = [prompt + t for t in texts] if prompt else list(texts)
        # Below the window a cut needs offsets; at the window the model cuts as Embedder.encode does.
        below = limit < self.window
        heads = self.heads(full, limit, offsets=below and truncate and getattr(self._tok, "is_fast", False))
        out, used = list(texts), []
        for i, head in enumerate(heads):
            n = len(head.ids)
            if n == 0:
                raise ApiError(400, f"{what}[{i}] produced no tokens", "empty_input")
            too_long = head.over(limit) or head.capped(limit)
            if too_long and not truncate:
                if head.over(limit):
                    message = f"{what}[{i}] has {head.count_text(limit)} tokens"
                else:
                    message = f"{what}[{i}] is longer than {head.chars} characters"
                raise ApiError(400, f"{message}; this server takes at most {limit} tokens per input", "input_too_long")
            if too_long and (below or head.capped(limit)):
                # A capped text is what its first characters hold; otherwise cut at a token boundary.
                cut = full[i][: head.chars] if head.capped(limit) else self.cut(full[i], head, limit)
                if prompt and len(cut) <= len(prompt):
                    raise ApiError(400, f"the prompt alone fills the {limit}-token limit", "input_too_long")
                out[i] = cut[len(prompt):] if prompt else cut
            used.append(min(n, limit))
        return PreparedTexts(out, [n + self.n_special for n in used], sum(used))

    def prepare_documents(self, documents: list[list[str]], *, max_tokens: int, what: str) -> PreparedDocuments:
        for d, doc in enumerate(documents):
            for c, chunk in enumerate(doc):
                if not chunk.strip():
                    raise ApiError(400, f"{what}[{d}][{c}] is an empty string; empty chunks are not allowed",
                                   "empty_input")
        counts = iter(self.counts([c for doc in documents for c in doc]))
        lengths, total = [], 0
        for d, doc in enumerate(documents):
            per_chunk = [next(counts) for _ in doc]
            for c, n in enumerate(per_chunk):
                if n == 0:
                    raise ApiError(400, f"{what}[{d}][{c}] produced no tokens", "empty_input")
            n_doc = sum(per_chunk)
            if n_doc > max_tokens:
                raise ApiError(400, f"{what}[{d}] has {n_doc} tokens; this server takes at most {max_tokens} "
                                    "tokens per document", "document_too_long")
            total += n_doc
            # Padded cost for the batch budget: long documents run as windows of the model length.
            full = n_doc + (len(doc) - 1) * self.n_separator + self.n_special
            lengths.append(min(full, self.max_length))
        return PreparedDocuments(lengths, total)
