"""Read what a model folder says about itself, without importing or executing anything in it.

Three layouts are understood:

* ``sentence-transformers``: ``modules.json`` naming a Transformer module, a Pooling module (its
  ``config.json`` picks mean / cls / last-token) and optionally Normalize. Any other module (Dense,
  LayerNorm, ...) or pooling mode is refused: skipping it would silently change the vectors. Those
  files are read (and written, by the training export) in ``st_format``; this module only decides
  which layout a folder is and builds its ``ModelSpec`` from the parts;
* ``pplx``: the released pplx-embed checkpoints. ``config.json`` has ``model_type:
  bidirectional_pplx_qwen3`` and an ``auto_map`` to remote code; ``modules.json`` adds an
  ``st_quantize`` module. The model is a stock Qwen3 with bidirectional attention, so it is loaded as
  one and the remote code is never run; the quantize module means "int8 output by default";
* ``transformers``: a plain transformers folder (mean pooling unless told otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffembed.errors import ModelLoadError
from diffembed.modeling.causal import marked_causal
from diffembed.modeling.st_format import POOLING_MODES, OwnConfig, PoolingConfig, read_json, read_st_folder

# Custom model types that are a stock architecture with bidirectional attention. Mapping them here
# is what lets such folders load without their remote code.
BIDIRECTIONAL_ALIASES = {"bidirectional_pplx_qwen3": "qwen3"}

__all__ = ["BIDIRECTIONAL_ALIASES", "DECODER_MODEL_TYPES", "POOLING_MODES", "ModelSpec", "read_model_spec"]

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
    do_lower_case: bool = False
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    similarity_fn_name: str | None = None
    default_precision: str = "float32"

    @property
    def is_decoder(self) -> bool:
        return self.hf_model_type in DECODER_MODEL_TYPES or any(
            a.endswith("ForCausalLM") for a in self.config.get("architectures") or []
        )

    @property
    def marked_causal(self) -> bool:
        """The folder's config.json says ``"is_causal": true`` explicitly: a decoder exported by a
        ``model.attention: causal`` recipe (see ``modeling.causal``), loaded causal by default."""
        return self.is_decoder and marked_causal(self.config)


def read_model_spec(path: str | Path) -> ModelSpec:
    """Inspect a local folder. Raises ModelLoadError when it is not a model folder."""
    root = Path(path)
    if not root.is_dir():
        raise ModelLoadError(f"model folder {root} does not exist")

    st = read_st_folder(root)
    transformer_dir = root / st.transformer_dir
    if not (transformer_dir / "config.json").exists():
        raise ModelLoadError(f"{root} has no config.json: not a transformers or sentence-transformers model folder")
    config = read_json(transformer_dir / "config.json")
    if not isinstance(config, dict):
        raise ModelLoadError(f"{transformer_dir / 'config.json'} is not a JSON object")
    model_type = str(config.get("model_type", ""))
    if not model_type:
        raise ModelLoadError(f"{transformer_dir / 'config.json'} has no model_type")
    hf_model_type = BIDIRECTIONAL_ALIASES.get(model_type, model_type)
    if config.get("auto_map") and model_type not in BIDIRECTIONAL_ALIASES and not _is_stock_model_type(model_type):
        raise ModelLoadError(
            f"{root} declares model_type '{model_type}' that only its own remote code implements; "
            "diffembed never executes remote code. Convert it to a stock architecture first."
        )

    layout = "pplx" if model_type in BIDIRECTIONAL_ALIASES else ("sentence-transformers" if st.modules else "transformers")
    own = OwnConfig.load(root)
    pooling = st.pooling or PoolingConfig()
    return ModelSpec(
        path=transformer_dir, layout=layout, model_type=model_type, hf_model_type=hf_model_type, config=config,
        pooling=own.pooling or pooling.mode, include_prompt=pooling.include_prompt,
        max_length=st.transformer.max_seq_length, do_lower_case=st.transformer.do_lower_case,
        prompts={**st.model.prompts, **own.prompts}, default_prompt_name=st.model.default_prompt_name,
        similarity_fn_name=st.model.similarity_fn_name,
        default_precision="int8" if st.quantizer or layout == "pplx" else own.default_precision or "float32",
    )


def _is_stock_model_type(model_type: str) -> bool:
    from transformers import CONFIG_MAPPING

    return model_type in CONFIG_MAPPING
