"""Recipe parsing: YAML + overrides, and validation errors that name the field before any work starts."""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path

import pytest
import yaml

from cli_helpers import run_cli
from diffembed.config_io import ConfigError, dump_config, load_config, parse_overrides
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
    (["schedule.warmup_steps=10", "train.steps=5"], ["warmup_steps", "warmup_ratio"]),
    (["schedule.warmup_ratio=1.0"], ["schedule.warmup_ratio", "less than 1"]),
    (["schedule.warmup_ratio=0.5", "schedule.warmup_steps=2"], ["warmup_steps (2) disagrees", "= 3"]),
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


REPO_RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "smollm2-debian.yaml"


@pytest.mark.parametrize("steps, warmup", [(400, 20), (20, 1), (10, 0), (1, 0)])
def test_warmup_ratio_scales_with_the_run(tmp_path, tiny_lm, word_corpus, steps, warmup):
    """The README's `train.steps=20` override of the shipped recipe validates (it used to fail with
    warmup_steps (20) must be below train.steps (20)): its warmup is a fraction of the run."""
    cfg = load_config(PretrainConfig, REPO_RECIPE, [f"train.steps={steps}"])
    assert cfg.schedule.warmup_ratio == 0.05 and cfg.schedule.warmup_steps == warmup
    # the dumped config (output_dir/config.yaml, --dry-run) holds both and loads again to the same
    again = load_config(PretrainConfig, write(tmp_path, yaml.safe_load(dump_config(cfg))))
    assert again == cfg
    # a dumped config of a short run reused for a longer one: the ratio and the stale count disagree
    with pytest.raises(ConfigError, match="disagrees") if warmup != 20 else nullcontext():
        load_config(PretrainConfig, write(tmp_path, yaml.safe_load(dump_config(cfg))), ["train.steps=400"])
    # without a ratio, warmup_steps is taken as given
    data = recipe(tiny_lm, word_corpus, tmp_path / "out", **{"schedule": {"warmup_steps": 3}, "train.steps": 8})
    assert load_config(PretrainConfig, write(tmp_path, data)).schedule.warmup_steps == 3


def test_the_scheduler_warms_up_for_the_derived_steps(tmp_path, tiny_lm, word_corpus):
    import torch

    from diffembed.training.loop import make_scheduler

    data = recipe(tiny_lm, word_corpus, tmp_path / "out", **{"schedule": {"warmup_ratio": 0.25}, "train.steps": 12})
    cfg = load_config(PretrainConfig, write(tmp_path, data))
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_scheduler(opt, cfg.schedule, cfg.train.steps)
    lrs = []
    for _ in range(5):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0]) and lrs[4] < 1.0  # 3 warmup steps, then decay


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
