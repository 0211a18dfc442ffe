"""The released pplx-embed folder layout loads as a stock bidirectional Qwen3 without remote code."""

import json

import numpy as np
import torch
from transformers import Qwen3Config, Qwen3Model

from diffembed import Embedder
from diffembed.modeling import read_model_spec

TEXTS = ["the cat sat on the mat", "berlin is the capital of germany", "one two three"]


def _reference(folder, texts):
    cfg = {k: v for k, v in json.loads((folder / "config.json").read_text()).items() if k not in ("model_type", "auto_map", "architectures")}
    config = Qwen3Config(**cfg)
    config.is_causal = False
    model = Qwen3Model.from_pretrained(folder, config=config).eval()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    out = []
    with torch.no_grad():
        for t in texts:
            ids = torch.tensor([tok(t)["input_ids"]])
            out.append(model(input_ids=ids).last_hidden_state[0].mean(0))
    return torch.stack(out)


def test_spec_reads_pplx_layout(tiny_dir):
    spec = read_model_spec(tiny_dir("pplx"))
    assert spec.layout == "pplx"
    assert spec.hf_model_type == "qwen3"
    assert spec.default_precision == "int8"
    assert spec.pooling == "mean"


def test_pplx_folder_gives_int8_tanh_of_mean_pool(tiny_dir):
    folder = tiny_dir("pplx")
    emb = Embedder(str(folder), show_progress=False)
    assert emb.loaded.bidirectional
    assert type(emb.model).__name__ == "Qwen3Model"
    got = emb.encode(TEXTS)  # default precision comes from the st_quantize module: int8
    assert got.dtype == np.int8
    expected = torch.clamp(torch.round(127 * torch.tanh(_reference(folder, TEXTS))), -128, 127).to(torch.int8).numpy()
    np.testing.assert_array_equal(got, expected)


def test_remote_code_files_are_never_imported(tiny_dir):
    # The folder's modeling.py raises on import; loading and encoding must not touch it.
    emb = Embedder(str(tiny_dir("pplx")), show_progress=False)
    assert emb.encode("the cat", precision="float32").shape == (32,)
