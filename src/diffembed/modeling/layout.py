"""Read what a model folder says about itself, without importing or executing anything in it.

Three layouts are understood:

* ``sentence-transformers``: ``modules.json`` naming a Transformer module, a Pooling module (its
  ``config.json`` picks mean / cls / last-token) and optionally Normalize. Any other module (Dense,
  LayerNorm, ...) or pooling mode is refused: skipping it would silently change the vectors;
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


# sentence-transformers Pooling flags. Several set at once means the outputs are concatenated.
_POOLING_FLAGS = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean",
                  "pooling_mode_lasttoken": "last", "pooling_mode_max_tokens": "max",
                  "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len", "pooling_mode_weightedmean_tokens": "weightedmean"}


def _pooling_from_config(cfg: dict[str, Any], where: Path) -> str:
    if cfg.get("pooling_mode") in POOLING_MODES:
        return cfg["pooling_mode"]
    # An absent flag means sentence-transformers' default: mean on, the others off.
    modes = [mode for flag, mode in _POOLING_FLAGS.items() if cfg.get(flag, flag == "pooling_mode_mean_tokens")]
    if len(modes) == 1 and modes[0] in POOLING_MODES:
        return modes[0]
    got = " + ".join(modes) or "none"
    raise ModelLoadError(f"{where} asks for {got} pooling; diffembed pools by exactly one of mean, cls or last")


# modules.json entries diffembed implements, by class name: the backbone, its pooling, the final L2
# normalisation (every float output is normalised anyway) and pplx's int8 quantizer (default int8).
_KNOWN_MODULES = ("Transformer", "Pooling", "Normalize")


def _is_quantizer(module_type: str) -> bool:
    return module_type.startswith("st_quantize") or "quantiz" in module_type.lower()


def read_model_spec(path: str | Path) -> ModelSpec:
    """Inspect a local folder. Raises ModelLoadError when it is not a model folder."""
    root = Path(path)
    if not root.is_dir():
        raise ModelLoadError(f"model folder {root} does not exist")

    modules = _read_json(root / "modules.json") if (root / "modules.json").exists() else None
    transformer_dir = root
    pooling_cfg: dict[str, Any] | None = None
    pooling_where = root
    has_quantizer = False
    if modules is not None and not isinstance(modules, list):
        raise ModelLoadError(f"{root / 'modules.json'} is not a list of modules")
    for i, module in enumerate(modules or []):
        mtype = str(module.get("type", "")) if isinstance(module, dict) else ""
        mpath = root / (module.get("path", "") if isinstance(module, dict) else "")
        kind = mtype.rsplit(".", 1)[-1]
        if kind == "Transformer":
            transformer_dir = mpath
        elif kind == "Pooling":
            if not (mpath / "config.json").exists():
                raise ModelLoadError(f"{root / 'modules.json'} names a Pooling module without {mpath / 'config.json'}")
            pooling_cfg = _read_json(mpath / "config.json")
            pooling_where = mpath / "config.json"
        elif kind == "Normalize":
            pass
        elif _is_quantizer(mtype):
            has_quantizer = True
        else:
            raise ModelLoadError(
                f"{root / 'modules.json'} module {i} is {mtype or 'untyped'}, which diffembed does not implement "
                f"(it runs {', '.join(_KNOWN_MODULES)} and pplx's st_quantize); skipping it would give vectors "
                "other than the model's own")

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
        spec.pooling = _pooling_from_config(pooling_cfg, pooling_where)
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
