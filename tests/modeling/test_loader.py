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


# ---------------------------------------------------------------------------- pickle weights (F8)
def _pickle_only_copy(src, dst, extra_object: bool):
    """A copy of a saved model whose safetensors are replaced by torch pickles (pytorch_model.bin)."""
    import argparse
    import shutil

    import torch
    from safetensors.torch import load_file

    shutil.copytree(src, dst)
    state = load_file(dst / "model.safetensors")
    if extra_object:  # an object torch's weights_only unpickler refuses: the case that printed its advice
        state["_meta"] = argparse.Namespace(note="not a tensor")
    torch.save(state, dst / "pytorch_model.bin")
    (dst / "model.safetensors").unlink()
    return dst


@pytest.mark.parametrize("extra_object", [False, True], ids=["tensors-only", "with-object"])
def test_pickle_only_model_is_refused_in_one_line(tiny_dir, tmp_path, monkeypatch, capsys, extra_object):
    """Even a pickle of plain tensors (which torch's weights_only mode would load) is never read."""
    from cli_helpers import assert_clean_error, run_cli

    folder = _pickle_only_copy(tiny_dir("bert"), tmp_path / "pickled", extra_object)
    (tmp_path / "texts.txt").write_text("some text\n")
    out = tmp_path / "out.npy"
    for args in (["info", folder], ["encode", tmp_path / "texts.txt", "-o", out, "--model", folder]):
        code, _out, err = run_cli(args, monkeypatch, capsys)
        line = assert_clean_error(code, err, "only pickle weights (pytorch_model.bin)", "safetensors only",
                                  "can run code")
        assert "weights_only" not in line
    assert not out.exists()


def test_folder_without_any_weights(tiny_dir, tmp_path):
    import shutil

    shutil.copytree(tiny_dir("bert"), tmp_path / "empty")
    (tmp_path / "empty" / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=r"has no weights: no \*\.safetensors"):
        load_model(tmp_path / "empty")


# ---------------------------------------------------------------------------- modules.json (F10)
def _st_folder(tiny_dir, tmp_path, modules: list[dict], pooling: dict | None = None):
    """The tiny BERT as a sentence-transformers folder with the given modules.json."""
    import shutil

    folder = tmp_path / "st"
    shutil.copytree(tiny_dir("bert"), folder)
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling or {
        "word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True}))
    return folder


ST = "sentence_transformers.models."
BASE_MODULES = [{"idx": 0, "name": "0", "path": "", "type": ST + "Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": ST + "Pooling"}]


def test_known_modules_load(tiny_dir, tmp_path):
    folder = _st_folder(tiny_dir, tmp_path, [*BASE_MODULES, {"idx": 2, "name": "2", "path": "2_Normalize",
                                                             "type": ST + "Normalize"}])
    spec = read_model_spec(folder)
    assert spec.layout == "sentence-transformers" and spec.pooling == "mean"


@pytest.mark.parametrize("module_type", [ST + "Dense", ST + "LayerNorm", "my_package.CustomHead"])
def test_unknown_module_is_refused_by_name(tiny_dir, tmp_path, monkeypatch, capsys, module_type):
    from cli_helpers import assert_clean_error, run_cli

    folder = _st_folder(tiny_dir, tmp_path, [*BASE_MODULES, {"idx": 2, "name": "2", "path": "2_Dense",
                                                             "type": module_type}])
    with pytest.raises(ModelLoadError, match=rf"module 2 is {module_type}, which diffembed does not implement"):
        read_model_spec(folder)
    code, _out, err = run_cli(["info", folder], monkeypatch, capsys)
    assert_clean_error(code, err, module_type, "does not implement")


@pytest.mark.parametrize("pooling,needle", [
    ({"pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": True}, "asks for max pooling"),
    ({"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": True}, r"asks for cls \+ mean pooling"),
    ({"pooling_mode": "max"}, "asks for max pooling"),
    ({"pooling_mode": ["cls", "mean"]}, r"asks for cls \+ mean pooling"),
    ({"pooling_mode": "weightedmean", "pooling_mode_mean_tokens": True}, "asks for weightedmean pooling"),
])
def test_pooling_diffembed_cannot_reproduce_is_refused(tiny_dir, tmp_path, pooling, needle):
    """Both spellings: the <= 5 flags and 6.x's pooling_mode (which wins over flags, as there)."""
    folder = _st_folder(tiny_dir, tmp_path, BASE_MODULES, pooling={"word_embedding_dimension": 32, **pooling})
    with pytest.raises(ModelLoadError, match=needle):
        read_model_spec(folder)


def test_pooling_module_without_its_config_is_refused(tiny_dir, tmp_path):
    folder = _st_folder(tiny_dir, tmp_path, BASE_MODULES)
    (folder / "1_Pooling" / "config.json").unlink()
    with pytest.raises(ModelLoadError, match="Pooling module without"):
        read_model_spec(folder)


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_a_decoder_folder_marked_causal_stays_causal(tiny_dir, tmp_path, family):
    """config.json with an explicit "is_causal": true (what a `model.attention: causal` recipe exports)
    loads causal; a stock decoder folder (no such key) still loads bidirectional; an explicit
    bidirectional= argument wins over the folder."""
    import shutil

    from diffembed.modeling.bidirectional import attends_to_future

    stock = tiny_dir(family)
    assert "is_causal" not in json.loads((stock / "config.json").read_text())
    plain = load_model(str(stock), device="cpu")
    assert plain.bidirectional and attends_to_future(plain.model, plain.model.config.vocab_size)

    marked = tmp_path / family
    shutil.copytree(stock, marked)
    cfg = json.loads((marked / "config.json").read_text())
    (marked / "config.json").write_text(json.dumps({**cfg, "is_causal": True}))
    assert read_model_spec(marked).marked_causal
    causal = load_model(str(marked), device="cpu")
    assert not causal.bidirectional and not attends_to_future(causal.model, causal.model.config.vocab_size)
    assert causal.describe()["bidirectional"] is False
    forced = load_model(str(marked), device="cpu", bidirectional=True)
    assert forced.bidirectional and attends_to_future(forced.model, forced.model.config.vocab_size)
