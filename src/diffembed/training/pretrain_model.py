"""Load the decoder to pretrain: stock *ForCausalLM class, bidirectional attention, a mask token.

The mask token is decided once here, because every later step (masking, export, the runtime) must
agree on it: the tokenizer's own, a reserved token of the vocabulary (Qwen3 ships `<|MASK|>` but does
not register it), or a new special token with the embedding matrix resized.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from diffembed.errors import ModelLoadError
from diffembed.extras import require
from diffembed.modeling.bidirectional import set_bidirectional
from diffembed.modeling.layout import read_model_spec
from diffembed.modeling.loader import load_tokenizer, quiet_transformers, resolve_model_path
from diffembed.training.activations import checkpoint_activations
from diffembed.training.pretrain_config import ModelSection, ObjectiveSection

RESERVED_MASK_TOKENS = ("<|MASK|>", "<|mask|>", "<mask>", "[MASK]")
ADDED_MASK_TOKEN = "<|mask|>"


@dataclass
class PretrainModel:
    lm: PreTrainedModel  # possibly peft-wrapped
    tokenizer: PreTrainedTokenizerBase
    mask_id: int
    mask_token: str
    special_ids: list[int]  # never masked
    source: str  # the resolved folder


def resolve_mask_token(tokenizer: PreTrainedTokenizerBase, objective: ObjectiveSection) -> tuple[str, bool]:
    """(token, must_add). Registers nothing; the caller adds and resizes when must_add."""
    vocab = tokenizer.get_vocab()
    wanted = objective.mask_token
    if wanted == "auto":
        if tokenizer.mask_token is not None:
            return tokenizer.mask_token, False
        for tok in RESERVED_MASK_TOKENS:
            if tok in vocab:
                return tok, False
        return ADDED_MASK_TOKEN, True
    if wanted in vocab:
        return wanted, False
    if objective.add_mask_token:
        return wanted, True
    raise ModelLoadError(f"objective.mask_token {wanted!r} is not in the tokenizer's vocabulary; "
                         f"set objective.add_mask_token: true to add it (resizes the embeddings) or use 'auto'")


def load_pretrain_model(model_cfg: ModelSection, objective: ObjectiveSection) -> PretrainModel:
    path, _ = resolve_model_path(model_cfg.path)
    quiet_transformers()
    tokenizer = load_tokenizer(path)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"cannot read the config in {path}: {exc}") from exc
    if not read_model_spec(path).is_decoder:
        raise ModelLoadError(f"{path} is not a decoder LM ({config.model_type}); pretraining needs a *ForCausalLM")
    set_bidirectional(config, True)
    config.use_cache = False
    dtype = torch.bfloat16 if model_cfg.dtype == "bfloat16" else torch.float32
    try:
        lm = AutoModelForCausalLM.from_pretrained(path, config=config, dtype=dtype, trust_remote_code=False,
                                                  attn_implementation=model_cfg.attn_implementation)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"cannot load {path} as a causal LM: {exc}") from exc

    token, add = resolve_mask_token(tokenizer, objective)
    if add:
        tokenizer.add_special_tokens({"mask_token": token})
        lm.resize_token_embeddings(len(tokenizer))
    elif tokenizer.mask_token is None:
        tokenizer.add_special_tokens({"mask_token": token})  # already in the vocab: registers, no new id
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    mask_id = tokenizer.convert_tokens_to_ids(token)
    if mask_id is None or mask_id >= lm.get_input_embeddings().num_embeddings:
        raise ModelLoadError(f"mask token {token!r} has id {mask_id}, outside the embedding matrix")

    if model_cfg.gradient_checkpointing:
        checkpoint_activations(lm)
    if model_cfg.lora is not None:
        lm = _wrap_lora(lm, model_cfg)
    special = set(tokenizer.all_special_ids) | {mask_id}
    return PretrainModel(lm=lm, tokenizer=tokenizer, mask_id=int(mask_id), mask_token=token,
                         special_ids=sorted(special), source=str(path))


def _wrap_lora(lm: PreTrainedModel, model_cfg: ModelSection):
    require("peft", "train", "model.lora")
    from peft import LoraConfig, get_peft_model
    lora = model_cfg.lora
    names = {n.rsplit(".", 1)[-1] for n, _ in lm.named_modules()}
    missing = [m for m in lora.target_modules if m not in names]
    if missing:
        raise ModelLoadError(f"model.lora.target_modules {missing} match no module of {type(lm).__name__}")
    if model_cfg.gradient_checkpointing:
        lm.enable_input_require_grads()
    peft_cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                          target_modules=list(lora.target_modules), bias="none")
    return get_peft_model(lm, peft_cfg)
