"""Write the pretrained backbone as a folder that `Embedder` and sentence-transformers load as is.

The LM head is dropped (embeddings come from the hidden states), LoRA adapters are merged, and the
config says `is_causal: false` and `use_bidirectional_attention: true`, so any loader that builds the
stock class from this config gets bidirectional attention without remote code. The
sentence-transformers files (modules.json, mean Pooling) make `SentenceTransformer(folder)` work too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn
from transformers import PreTrainedTokenizerBase

from diffembed.atomic import building_dir
from diffembed.modeling.bidirectional import set_bidirectional
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
        _write_json(tmp / "modules.json", [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ])
        _write_json(tmp / "sentence_bert_config.json", {"max_seq_length": limit, "do_lower_case": False})
        (tmp / "1_Pooling").mkdir()
        _write_json(tmp / "1_Pooling" / "config.json", {
            "word_embedding_dimension": int(config.hidden_size), "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False, "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": False, "include_prompt": True,
        })
        (tmp / "2_Normalize").mkdir()
        _write_json(tmp / "config_sentence_transformers.json", {
            "prompts": {}, "default_prompt_name": None, "similarity_fn_name": "cosine",
        })
        if provenance is not None:
            _write_json(tmp / "diffembed_pretrain.json", provenance)
    return out


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
