"""Recipe parsing: YAML + overrides, and validation errors that name the field before any work starts."""

from __future__ import annotations

import time

import pytest
import yaml

from cli_helpers import run_cli
from diffembed.config_io import ConfigError, load_config, parse_overrides
from diffembed.training.pretrain_config import PretrainConfig
from pretrain_helpers import recipe


def write(tmp_path, data) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return str(path)


def test_overrides_are_typed_and_accept_three_spellings():
    got = parse_overrides(["optim.lr=3e-4", "--train.steps=20", "--data.seq-len", "64", "model.lora=null",
                           "data.train=[a, b]", "train.precision=bf16"])
    assert got == {"optim.lr": 3e-4, "train.steps": 20, "data.seq_len": 64, "model.lora": None,
                   "data.train": ["a", "b"], "train.precision": "bf16"}
    for bad in (["optim.lr"], ["=3"], ["a..b=1"]):
        with pytest.raises(ConfigError):
            parse_overrides(bad)


def test_yaml_plus_overrides_validate(tmp_path, tiny_lm, word_corpus):
    path = write(tmp_path, recipe(tiny_lm, word_corpus, tmp_path / "out"))
    cfg = load_config(PretrainConfig, path, ["optim.lr=5e-4", "train.steps=9", "model.lora.r=4"])
    assert cfg.optim.lr == 5e-4 and cfg.train.steps == 9 and cfg.model.lora.r == 4
    assert cfg.model.lora.target_modules  # defaults filled in for a section created by an override
    assert cfg.objective.kind == "diffusion" and cfg.objective.eps == 1e-3


@pytest.mark.parametrize("overrides, needles", [
    (["optim.lrr=1"], ["optim.lrr", "unknown field"]),
    (["optim.lr=-1"], ["optim.lr", "greater than 0"]),
    (["train.steps=many"], ["train.steps", "integer"]),
    (["objective.kind=bert"], ["objective.kind", "diffusion", "mntp"]),
    (["schedule.warmup_steps=10", "train.steps=5"], ["warmup_steps"]),
    (["data.heldout_fraction=0"], ["held-out"]),
    (["optim.betas=[0.9, 1.5]"], ["optim.betas"]),
    (["train.precision=fp8"], ["train.precision"]),
    (["model.lora.r=0"], ["model.lora.r"]),
])
def test_validation_errors_name_the_field(tmp_path, tiny_lm, word_corpus, overrides, needles):
    path = write(tmp_path, recipe(tiny_lm, word_corpus, tmp_path / "out"))
    with pytest.raises(ConfigError) as info:
        load_config(PretrainConfig, path, overrides)
    for needle in needles:
        assert needle in str(info.value), str(info.value)


def test_missing_sections_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="model"):
        load_config(PretrainConfig, None, ["output_dir=x", "data.train=[a]", "train.steps=1"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(PretrainConfig, tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(PretrainConfig, tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(PretrainConfig, tmp_path / "broken.yaml")
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load_config(PretrainConfig, None, ["output_dir=x", "output_dir.sub=1"])


def test_cli_reports_config_errors_fast_and_exits_2(tmp_path, tiny_lm, word_corpus, monkeypatch, capsys):
    path = write(tmp_path, recipe(tiny_lm, word_corpus, tmp_path / "out"))
    start = time.perf_counter()
    code, out, err = run_cli(["pretrain", "-c", path, "optim.lr=-1", "train.stepz=3"], monkeypatch, capsys)
    assert code == 2 and "error:" in err and "optim.lr" in err and "train.stepz" in err and "Traceback" not in err
    # a missing data path is found before the model is loaded
    code, out, err = run_cli(["pretrain", "-c", path, f"data.train=[{tmp_path / 'missing'}]"], monkeypatch, capsys)
    assert code == 2 and "missing" in err and "no such file" in err
    assert time.perf_counter() - start < 20  # generous: no model was loaded, no training ran
    assert not (tmp_path / "out").exists()


def test_cli_dry_run_prints_the_resolved_config(tmp_path, tiny_lm, word_corpus, monkeypatch, capsys):
    path = write(tmp_path, recipe(tiny_lm, word_corpus, tmp_path / "out"))
    code, out, err = run_cli(["pretrain", "-c", path, "--dry-run", "--optim.lr=7e-4"], monkeypatch, capsys)
    assert code == 0, err
    resolved = yaml.safe_load(out)
    assert resolved["optim"]["lr"] == 7e-4 and resolved["objective"]["kind"] == "diffusion"
    assert "40 training files" in err
    assert not (tmp_path / "out").exists()
