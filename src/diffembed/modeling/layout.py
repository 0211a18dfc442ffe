"""Read what a model folder says about itself, without importing or executing anything in it.

Three layouts are understood:

* ``sentence-transformers``: ``modules.json`` naming a Transformer module, a Pooling module (its
  ``config.json`` picks mean / cls / last-token) and optionally Normalize;
* ``pplx``: the released pplx-embed checkpoints. ``config.json`` has ``model_type:
  bidirectional_pplx_qwen3`` and an ``auto_map`` to remote code; ``modules.json`` adds an
  ``st_quantize`` module. The model is a stock Qwen3 with bidirectional attention, so it is loaded as
  one and the remote code is never run; the quantize module means "int8 output by default";
* ``transformers``: a plain transformers folder (mean pooling unless told otherwise).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffembed.errors import ModelLoadError

# Custom model types that are a stock architecture with bidirectional attention. Mapping them here
# is what lets such folders load without their remote code.
BIDIRECTIONAL_ALIASES = {"bidirectional_pplx_qwen3": "qwen3"}

POOLING_MODES = ("mean", "cls", "last")

# Families whose stock transformers class is a decoder that `config.is_causal = False` turns into
# an encoder (transformers >= 5.2).
DECODER_MODEL_TYPES = {
    "qwen2", "qwen3", "qwen3_moe", "llama", "mistral", "gemma", "gemma2", "gemma3", "gemma3_text",
    "phi3", "olmo", "olmo2", "smollm3", "granite",
}


@dataclass
class ModelSpec:
    """Everything diffembed needs to know about a model folder before loading weights."""

    path: Path
    layout: str
    model_type: str
    hf_model_type: str
    config: dict[str, Any]
    pooling: str = "mean"
    include_prompt: bool = True
    max_length: int | None = None
    prompts: dict[str, str] = field(default_factory=dict)
    default_precision: str = "float32"
    declared_bidirectional: bool | None = None

    @property
    def is_decoder(self) -> bool:
        return self.hf_model_type in DECODER_MODEL_TYPES or any(
            a.endswith("ForCausalLM") for a in self.config.get("architectures") or []
        )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc


def _pooling_from_config(cfg: dict[str, Any]) -> str:
    if cfg.get("pooling_mode") in POOLING_MODES:
        return cfg["pooling_mode"]
    if cfg.get("pooling_mode_cls_token"):
        return "cls"
    if cfg.get("pooling_mode_lasttoken"):
        return "last"
    if cfg.get("pooling_mode_mean_tokens", True):
        return "mean"
    raise ModelLoadError(f"unsupported pooling configuration {cfg}; diffembed pools by mean, cls or last")


def read_model_spec(path: str | Path) -> ModelSpec:
    """Inspect a local folder. Raises ModelLoadError when it is not a model folder."""
    root = Path(path)
    if not root.is_dir():
        raise ModelLoadError(f"model folder {root} does not exist")

    modules = _read_json(root / "modules.json") if (root / "modules.json").exists() else None
    transformer_dir = root
    pooling_cfg: dict[str, Any] | None = None
    has_quantizer = False
    for module in modules or []:
        mtype = str(module.get("type", ""))
        mpath = root / module.get("path", "")
        if mtype.endswith("Transformer"):
            transformer_dir = mpath
        elif mtype.endswith("Pooling") and (mpath / "config.json").exists():
            pooling_cfg = _read_json(mpath / "config.json")
        elif mtype.startswith("st_quantize") or "quantiz" in mtype.lower():
            has_quantizer = True

    if not (transformer_dir / "config.json").exists():
        raise ModelLoadError(f"{root} has no config.json: not a transformers or sentence-transformers model folder")
    config = _read_json(transformer_dir / "config.json")
    model_type = str(config.get("model_type", ""))
    if not model_type:
        raise ModelLoadError(f"{transformer_dir / 'config.json'} has no model_type")
    hf_model_type = BIDIRECTIONAL_ALIASES.get(model_type, model_type)

    layout = "pplx" if model_type in BIDIRECTIONAL_ALIASES else ("sentence-transformers" if modules else "transformers")
    spec = ModelSpec(path=transformer_dir, layout=layout, model_type=model_type, hf_model_type=hf_model_type, config=config)

    if pooling_cfg is not None:
        spec.pooling = _pooling_from_config(pooling_cfg)
        spec.include_prompt = bool(pooling_cfg.get("include_prompt", True))
    st_cfg_path = transformer_dir / "sentence_bert_config.json"
    if not st_cfg_path.exists():
        st_cfg_path = root / "sentence_bert_config.json"
    if st_cfg_path.exists():
        spec.max_length = _read_json(st_cfg_path).get("max_seq_length")
    if (root / "config_sentence_transformers.json").exists():
        st_meta = _read_json(root / "config_sentence_transformers.json")
        spec.prompts = dict(st_meta.get("prompts") or {})
    if (root / "diffembed.json").exists():
        own = _read_json(root / "diffembed.json")
        spec.pooling = own.get("pooling", spec.pooling)
        spec.default_precision = own.get("default_precision", spec.default_precision)
        spec.prompts.update(own.get("prompts") or {})
    if has_quantizer or layout == "pplx":
        spec.default_precision = "int8"

    if config.get("use_bidirectional_attention") is True or config.get("is_causal") is False:
        spec.declared_bidirectional = True
    elif config.get("is_causal") is True:
        spec.declared_bidirectional = False

    if config.get("auto_map") and model_type not in BIDIRECTIONAL_ALIASES and not _is_stock_model_type(model_type):
        raise ModelLoadError(
            f"{root} declares model_type '{model_type}' that only its own remote code implements; "
            "diffembed never executes remote code. Convert it to a stock architecture first."
        )
    return spec


def _is_stock_model_type(model_type: str) -> bool:
    from transformers import CONFIG_MAPPING

    return model_type in CONFIG_MAPPING
