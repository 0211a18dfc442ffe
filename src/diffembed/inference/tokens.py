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


def tokenize_bare(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]


def tokenize_with_offsets(tokenizer: PreTrainedTokenizerBase, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    if not getattr(tokenizer, "is_fast", False):
        raise InputError("encode_document needs a fast (Rust) tokenizer for character offsets")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
