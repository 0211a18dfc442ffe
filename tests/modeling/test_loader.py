"""Model resolution and clear errors for bad model paths."""

import json

import pytest

from diffembed.errors import ModelLoadError
from diffembed.modeling import load_model, read_model_spec, resolve_model_path
from diffembed.modeling.loader import default_model_path


def test_default_is_the_packaged_minilm():
    path, name = resolve_model_path(None)
    assert path == default_model_path()
    assert (path / "config.json").exists()
    assert "MiniLM" in name


def test_packaged_minilm_spec():
    spec = read_model_spec(default_model_path())
    assert spec.layout == "sentence-transformers"
    assert spec.pooling == "mean" and spec.max_length == 256


@pytest.mark.parametrize("bad", ["/nonexistent/model", "./missing-folder", "not a valid id!"])
def test_unknown_model_path_is_a_clear_error(bad):
    with pytest.raises(ModelLoadError, match="not found|could not be fetched"):
        resolve_model_path(bad)


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="could not be fetched from the hub"):
        resolve_model_path("some-org/some-model-that-is-not-cached")


def test_file_instead_of_folder(tmp_path):
    f = tmp_path / "model.bin"
    f.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="is a file"):
        resolve_model_path(str(f))


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path))


def test_remote_code_only_model_type_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "my_custom_arch", "auto_map": {"AutoModel": "m.M"}}))
    with pytest.raises(ModelLoadError, match="remote code"):
        read_model_spec(tmp_path)


def test_bad_pooling_and_dtype(tiny_dir):
    with pytest.raises(ModelLoadError, match="pooling"):
        load_model(tiny_dir("bert"), pooling="max")
    with pytest.raises(ModelLoadError, match="dtype"):
        load_model(tiny_dir("bert"), dtype="int3")


def test_architecture_without_sdpa_falls_back_to_its_default_kernel(tmp_path):
    import shutil

    import torch
    from transformers import MPNetConfig, MPNetModel

    from diffembed.modeling.loader import default_model_path

    cfg = MPNetConfig(vocab_size=30527, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    MPNetModel(cfg).save_pretrained(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(default_model_path() / name, tmp_path / name)
    loaded = load_model(str(tmp_path))  # sdpa requested by default; MPNet only has eager
    assert type(loaded.model).__name__ == "MPNetModel"
    assert loaded.model.config._attn_implementation == "eager"
