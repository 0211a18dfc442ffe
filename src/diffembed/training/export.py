"""Write the pretrained backbone as a folder that `Embedder` and sentence-transformers load as is.

The LM head is dropped (embeddings come from the hidden states), LoRA adapters are merged, and the
config says `is_causal: false` and `use_bidirectional_attention: true`, so any loader that builds the
stock class from this config gets bidirectional attention without remote code. The
sentence-transformers files (mean Pooling, Normalize), written by `modeling.st_format` (the module the
runtime reads them with), make `SentenceTransformer(folder)` work too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn
from transformers import PreTrainedTokenizerBase

from diffembed.atomic import building_dir
from diffembed.modeling.bidirectional import set_bidirectional
from diffembed.modeling.st_format import ModelConfig, PoolingConfig, STFolder, TransformerConfig, write_st_files
from diffembed.training.denoiser import causal_lm_of

MAX_EXPORT_LENGTH = 8192


def export_backbone(lm: nn.Module, tokenizer: PreTrainedTokenizerBase, out_dir: str | Path, *,
                    provenance: dict[str, Any] | None = None, max_seq_length: int | None = None) -> Path:
    out = Path(out_dir)
    with building_dir(out) as tmp:
        if hasattr(lm, "merge_and_unload"):  # peft: fold the adapters into the weights
            lm = lm.merge_and_unload()
        backbone = causal_lm_of(lm).get_decoder()
        set_bidirectional(backbone.config, True)
        backbone.config.use_cache = False
        backbone.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)

        config = backbone.config
        limit = max_seq_length or min(int(getattr(config, "max_position_embeddings", 512) or 512), MAX_EXPORT_LENGTH)
        write_st_files(tmp, STFolder(transformer=TransformerConfig(max_seq_length=limit),
                                     pooling=PoolingConfig(mode="mean", dimension=int(config.hidden_size)),
                                     normalize=True, model=ModelConfig(similarity_fn_name="cosine")))
        if provenance is not None:
            (tmp / "diffembed_pretrain.json").write_text(
                json.dumps(provenance, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return out

