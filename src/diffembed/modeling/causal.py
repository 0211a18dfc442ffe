"""The causal backbone variant: a decoder kept causal, pooled at its last token, which is an EOS.

Most of diffembed makes decoders bidirectional (``bidirectional.set_bidirectional``). A recipe with
``model.attention: causal`` keeps them causal instead, as LLM-embedders without a bidirectional
conversion do (the baseline of pplx-embed's ablation). Under causal attention only the last position
sees the whole text, so the vector is that position's state, and that position must be the same
token for every text: an EOS appended to each input.

How a folder says it is causal, so that every loader gives the same vectors:

* ``config.json`` records ``"is_causal": true`` (and ``"use_bidirectional_attention": false``)
  explicitly. Stock decoder configs never write ``is_causal``, so its explicit ``true`` is the marker
  ``loader.load_model`` honours; transformers and sentence-transformers keep decoders causal anyway;
* ``1_Pooling/config.json`` says last-token pooling (read by diffembed and sentence-transformers);
* the saved tokenizer appends the EOS itself (its ``tokenizer.json`` post-processor), so
  ``SentenceTransformer(path)``, ``Embedder`` (whose token template is probed from the tokenizer)
  and the training stage all tokenize alike, and truncation keeps the EOS.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedTokenizerBase

from diffembed.errors import ModelLoadError

ATTENTION_VARIANTS = ("bidirectional", "causal")


def marked_causal(config: dict[str, Any]) -> bool:
    """True when a folder's ``config.json`` (as a dict) explicitly asks for causal attention."""
    return config.get("is_causal") is True


def special_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """(prefix, suffix): the ids the tokenizer puts around a text when adding special tokens."""
    probe = "hello world"
    bare = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for i in range(len(full) - len(bare) + 1):
        if full[i:i + len(bare)] == bare:
            return list(full[:i]), list(full[i + len(bare):])
    raise ModelLoadError("cannot tell which special tokens the tokenizer adds around a text")


def appends_eos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Does the tokenizer end every text with its EOS token (with special tokens on)?"""
    eos = tokenizer.eos_token_id
    if eos is None:
        return False
    suffix = special_ids(tokenizer)[1]
    return bool(suffix) and suffix[-1] == eos


def append_eos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Make the tokenizer end every text with its EOS token, keeping what it already adds around a
    text (e.g. a BOS). Changes the fast tokenizer's post-processor in place, so the change is saved
    with it (``tokenizer.json``). Returns whether anything changed."""
    if appends_eos(tokenizer):
        return False
    if tokenizer.eos_token_id is None:
        raise ModelLoadError("attention: causal pools the last token, an EOS appended to every text, but the "
                             "tokenizer has no eos_token")
    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError("attention: causal appends an EOS through the tokenizer's post-processor, which "
                             "only fast (Rust) tokenizers have")
    from tokenizers import processors

    prefix, suffix = special_ids(tokenizer)
    ids = [*prefix, *suffix, tokenizer.eos_token_id]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    pre, post = tokens[:len(prefix)], tokens[len(prefix):]
    specials = list(dict.fromkeys(zip(tokens, ids)))
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=[*pre, "$A", *post], pair=[*pre, "$A", *post, "$B:1", *(f"{t}:1" for t in post)],
        special_tokens=specials)
    # transformers rebuilds the post-processor from add_bos/eos_token flags when told to; not this one
    if hasattr(tokenizer, "_should_update_post_processor"):
        tokenizer._should_update_post_processor = False
    if not appends_eos(tokenizer):
        raise ModelLoadError("could not make the tokenizer append its EOS token")
    return True
