"""Tokenization that keeps exact control of special tokens, truncation and spans.

Texts are tokenised without special tokens and the model's own template (e.g. BERT's [CLS] ... [SEP],
Llama's BOS) is added back here. That makes plain encoding and late chunking share one layout, so a
one-chunk document and the same text encoded alone see identical tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from diffembed.errors import InputError


@dataclass(frozen=True)
class SpecialTemplate:
    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    separator: tuple[int, ...]
    pad_id: int

    @property
    def n_special(self) -> int:
        return len(self.prefix) + len(self.suffix)

    def wrap(self, ids: list[int]) -> list[int]:
        return [*self.prefix, *ids, *self.suffix]


def special_template(tokenizer: PreTrainedTokenizerBase, separator: str | None = None) -> SpecialTemplate:
    """Find what the tokenizer adds around a text, and which ids separate chunks."""
    probe = "hello world"
    bare = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    start = next((i for i in range(len(full) - len(bare) + 1) if full[i : i + len(bare)] == bare), None)
    if start is None:
        prefix, suffix = (), ()
    else:
        prefix, suffix = tuple(full[:start]), tuple(full[start + len(bare) :])

    if separator is not None:
        sep_ids = tuple(tokenizer(separator, add_special_tokens=False)["input_ids"])
    elif tokenizer.sep_token_id is not None:
        sep_ids = (tokenizer.sep_token_id,)
    elif tokenizer.eos_token_id is not None:
        sep_ids = (tokenizer.eos_token_id,)
    else:
        sep_ids = tuple(tokenizer("\n", add_special_tokens=False)["input_ids"])
    if not sep_ids:
        raise InputError("the chunk separator tokenises to nothing; pass a different separator")

    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    return SpecialTemplate(prefix=prefix, suffix=suffix, separator=sep_ids, pad_id=int(pad))


def prompt_skip(tokenizer: PreTrainedTokenizerBase, prompt: str | None, include_prompt: bool, max_length: int) -> int:
    """Leading positions pooling leaves out for ``prompt`` (models saved with ``include_prompt=False``).

    Counted as sentence-transformers counts ``prompt_length``: the prompt tokenized alone with
    special tokens, less a trailing special one. So the leading special tokens ([CLS], BOS) are
    left out too, and the count is the prompt's own tokens even where the prompt's last token
    merges with the text's first (sentence-transformers then leaves that text token out as well).
    """
    if not prompt or include_prompt:
        return 0
    ids = tokenizer(prompt, add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"]
    return len(ids) - (1 if ids and ids[-1] in set(tokenizer.all_special_ids) else 0)


def tokenize_bare(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]


def tokenize_with_offsets(tokenizer: PreTrainedTokenizerBase, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    if not getattr(tokenizer, "is_fast", False):
        raise InputError("encode_document needs a fast (Rust) tokenizer for character offsets")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


# ---------------------------------------------------------------------------- bounded tokenization
# Single-vector paths keep at most ``limit`` tokens of a text, so tokenizing all of a multi-megabyte
# text only to drop nearly all of it costs seconds and gigabytes for nothing. ``tokenize_heads``
# tokenizes growing character prefixes instead and stops as soon as the kept tokens are settled:
#
# * First look: ``(limit + 1) * FIRST_CHARS_PER_TOKEN + BOUNDARY_CHARS`` characters. Real text runs
#   about 1 (CJK) to 5 (English) characters per token, so one look settles nearly every input.
# * A prefix settles the kept tokens when its token ``limit`` (the first one dropped) ends at least
#   ``BOUNDARY_CHARS`` characters before the cut. Tokenizers act locally (a pre-tokenizer splits
#   words; BPE, WordPiece and Unigram work within a word), so a cut that far away cannot change
#   them, and the text certainly has more than ``limit`` tokens.
# * Otherwise the prefix grows fourfold, up to ``head_char_cap(limit)`` characters: 256 per token,
#   at least 65,536, plus the boundary. A byte-level BPE token covers at most its longest vocabulary
#   entry (81 characters for SmolLM2), so only text that tokenizes to (almost) nothing reaches the
#   cap: WordPiece drops whitespace and control characters and makes one [UNK] of a word over 100
#   characters. Text beyond the cap is never read: such an input is encoded as its first cap
#   characters, and refused where truncation is off.
FIRST_CHARS_PER_TOKEN = 8
MAX_CHARS_PER_TOKEN = 256
MIN_CAP_CHARS = 65_536  # small limits (a server's max_tokens_per_input) still read this much
BOUNDARY_CHARS = 1024
# A slow tokenizer gives no offsets; then the dropped tokens past ``limit`` are the safety margin.
SLOW_MARGIN_TOKENS = 128


def head_char_cap(limit: int) -> int:
    """The most characters of one text read to find its first ``limit`` tokens."""
    return max(MIN_CAP_CHARS, (limit + 1) * MAX_CHARS_PER_TOKEN) + BOUNDARY_CHARS


@dataclass
class Head:
    """The first tokens of one text, found from a bounded prefix of it.

    ``complete``: the whole text was tokenized and ``ids`` are all its tokens. Otherwise, when
    ``len(ids) > limit`` the text has more than ``limit`` tokens and ``ids[:limit]`` are its first
    ones; when not, the text is longer than ``head_char_cap(limit)`` characters and ``ids`` are the
    tokens of that prefix (``capped``).
    """

    ids: list[int]
    offsets: list[tuple[int, int]] | None
    complete: bool
    chars: int  # characters of the text that were tokenized

    def over(self, limit: int) -> bool:
        return len(self.ids) > limit

    def capped(self, limit: int) -> bool:
        """True when the text was cut by characters at the cap with at most ``limit`` tokens read."""
        return not self.complete and len(self.ids) <= limit

    def count_text(self, limit: int) -> str:
        """The token count for a message: exact when known, else "more than LIMIT"."""
        return f"{len(self.ids)}" if self.complete else f"more than {limit}"


def tokenize_heads(tokenizer: PreTrainedTokenizerBase, texts: list[str], limit: int, *,
                   offsets: bool = False) -> list[Head]:
    """Tokenize each text only as far as needed to know its first ``limit`` tokens (see above).

    Texts no longer than the first look are tokenized whole, exactly as ``tokenize_bare`` would.
    ``offsets=True`` also returns character offsets (needs a fast tokenizer).
    """
    if limit < 1:
        raise ValueError("limit must be positive")
    fast = bool(getattr(tokenizer, "is_fast", False))
    if offsets and not fast:
        raise InputError("character offsets need a fast (Rust) tokenizer")
    cap = head_char_cap(limit)
    span = (limit + 1) * FIRST_CHARS_PER_TOKEN + BOUNDARY_CHARS
    heads: list[Head | None] = [None] * len(texts)
    pending = list(range(len(texts)))
    while pending:
        span = min(span, cap)
        whole = [i for i in pending if len(texts[i]) <= span]
        for i, (ids, offs) in zip(whole, _tokenize(tokenizer, [texts[i] for i in whole], offsets)):
            heads[i] = Head(ids, offs, complete=True, chars=len(texts[i]))
        cut = [i for i in pending if len(texts[i]) > span]
        pending = []
        for i, (ids, offs) in zip(cut, _tokenize(tokenizer, [texts[i][:span] for i in cut], fast)):
            if len(ids) > limit and (offs[limit][1] <= span - BOUNDARY_CHARS if fast
                                     else len(ids) > limit + SLOW_MARGIN_TOKENS):
                keep = limit + 1  # the kept tokens plus one that proves the text goes on
                heads[i] = Head(ids[:keep], offs[:keep] if offsets else None, complete=False, chars=span)
            elif span >= cap:
                heads[i] = Head(ids, offs if offsets else None, complete=False, chars=span)
            else:
                pending.append(i)
        span *= 4
    return heads  # type: ignore[return-value]


def _tokenize(tokenizer: PreTrainedTokenizerBase, texts: list[str], offsets: bool):
    if not texts:
        return []
    enc = tokenizer(texts, add_special_tokens=False, return_attention_mask=False, return_offsets_mapping=offsets)
    if not offsets:
        return [(list(ids), None) for ids in enc["input_ids"]]
    return [(list(ids), [tuple(o) for o in offs]) for ids, offs in zip(enc["input_ids"], enc["offset_mapping"])]
