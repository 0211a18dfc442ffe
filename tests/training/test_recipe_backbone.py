"""The recipe's backbone switch (`backbone: diffusion | mntp | bidirectional | causal`, issue 14): one
recipe, four ablation arms with everything else equal. Resolved at validation time (so --dry-run prints
the resolved stages and the printed recipe loads to itself); bidirectional and causal drop the pretrain
stages and re-point the stages that started from them; `{backbone}` in output_dir is substituted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from diffembed.config_io import ConfigError, load_config
from diffembed.training.train_config import TrainRecipe

REPO = Path(__file__).resolve().parents[2]


def _stages() -> list[dict]:
    return [
        {"name": "stage0", "kind": "pretrain", "objective": {"kind": "diffusion", "eps": 0.01, "mask_rate": 0.3},
         "data": {"train": ["corpus"]}, "train": {"steps": 3}},
        {"name": "pairs", "data": {"train": ["p.jsonl"]}, "train": {"steps": 2}},
        {"name": "contextual", "kind": "contextual", "start_from": "pairs", "data": {"train": ["d.jsonl"]},
         "train": {"steps": 2}},
        {"name": "triplets", "kind": "triplets", "start_from": "stage0",
         "data": {"train": ["t.jsonl"], "negatives": 1}, "train": {"steps": 2}},
        {"name": "merged", "kind": "merge", "inputs": ["contextual", "triplets"]},
    ]


def _recipe(backbone=None, stages=None, output_dir="runs/{backbone}", **model) -> TrainRecipe:
    data = {"output_dir": output_dir, "model": {"path": "m", **model}, "stages": stages or _stages()}
    if backbone is not None:
        data["backbone"] = backbone
    return TrainRecipe.model_validate(data)


def _starts(recipe: TrainRecipe) -> dict[str, str]:
    return {s.name: s.start_from for s in recipe.stages if s.kind != "merge"}


@pytest.mark.parametrize("backbone", ["diffusion", "mntp"])
def test_diffusion_and_mntp_run_the_pretrain_stage_with_that_objective(backbone):
    r = _recipe(backbone)
    assert [s.name for s in r.stages] == ["stage0", "pairs", "contextual", "triplets", "merged"]
    ob = r.stages[0].objective
    assert ob.kind == backbone and ob.eps == 0.01 and ob.mask_rate == 0.3  # the stage's other settings kept
    assert r.model.attention == "bidirectional" and r.backbone == backbone
    assert _starts(r) == {"stage0": "previous", "pairs": "previous", "contextual": "pairs", "triplets": "stage0"}
    assert r.output_dir == f"runs/{backbone}" and r.stages[1].output_dir == f"runs/{backbone}/pairs"


@pytest.mark.parametrize("backbone", ["bidirectional", "causal"])
def test_bidirectional_and_causal_drop_stage_0_and_start_from_the_base(backbone):
    r = _recipe(backbone)
    assert [s.name for s in r.stages] == ["pairs", "contextual", "triplets", "merged"]
    assert all(s.kind != "pretrain" for s in r.stages)
    assert r.model.attention == backbone
    # pairs started from stage0 as `previous`, triplets by name: both now start where stage0 did (the base)
    assert _starts(r) == {"pairs": "base", "contextual": "pairs", "triplets": "base"}
    assert r.stages[-1].inputs == ["contextual", "triplets"]
    assert r.output_dir == f"runs/{backbone}"


def test_a_dropped_stage_hands_on_its_own_start():
    """Two pretrain stages in a row, the first from a folder: the stage after them starts from that folder."""
    stages = _stages()
    second = {**stages[0], "name": "stage0b", "start_from": "previous"}
    stages[0]["start_from"] = "runs/somewhere/final"
    stages.insert(1, second)
    stages[4]["start_from"] = "stage0b"  # triplets
    r = _recipe("causal", stages)
    assert _starts(r) == {"pairs": "runs/somewhere/final", "contextual": "pairs", "triplets": "runs/somewhere/final"}


def test_a_stage_after_a_kept_stage_keeps_previous():
    stages = _stages()
    stages[2]["start_from"] = "previous"  # contextual after pairs
    r = _recipe("bidirectional", stages)
    assert _starts(r)["contextual"] == "previous"


def test_a_merge_input_that_was_dropped_is_replaced_by_its_start():
    stages = _stages()[:4] + [{"name": "merged", "kind": "merge", "inputs": ["stage0b", "triplets"]}]
    stages.insert(1, {**stages[0], "name": "stage0b", "start_from": "pairs0"})
    stages.insert(0, {"name": "pairs0", "data": {"train": ["p.jsonl"]}, "train": {"steps": 2}})
    r = _recipe("bidirectional", stages)
    assert r.stages[-1].inputs == ["pairs0", "triplets"]
    with pytest.raises(ValueError, match="merge stage 'merged' takes one of them as an input"):
        _recipe("bidirectional", _stages()[:4] + [{"name": "merged", "kind": "merge", "inputs": ["stage0", "pairs"]}])


def test_no_backbone_leaves_the_recipe_as_written():
    plain = _recipe(None, output_dir="runs/x")
    assert plain.backbone is None and [s.kind for s in plain.stages][0] == "pretrain"
    assert _starts(plain)["triplets"] == "stage0"
    dumped = plain.model_dump(mode="json")
    assert dumped["backbone"] is None
    dumped.pop("backbone")
    assert TrainRecipe.model_validate(dumped).model_dump() == plain.model_dump()


def test_the_switch_overrides_the_attention_written_in_the_recipe():
    stages = [s for s in _stages() if s.get("kind") != "pretrain"]
    stages[2]["start_from"] = "pairs"
    assert _recipe("bidirectional", stages, attention="causal").model.attention == "bidirectional"
    assert _recipe("diffusion", _stages(), attention="causal").model.attention == "bidirectional"


@pytest.mark.parametrize("backbone", ["diffusion", "mntp", "bidirectional", "causal"])
def test_the_resolved_recipe_reloads_to_itself(backbone):
    r = _recipe(backbone)
    again = TrainRecipe.model_validate(yaml.safe_load(yaml.safe_dump(r.model_dump(mode="json"))))
    assert again.model_dump() == r.model_dump()


def _load(tmp_path, data, overrides=()) -> TrainRecipe:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(TrainRecipe, path, list(overrides))


def test_errors(tmp_path):
    base = {"output_dir": "runs/{backbone}", "model": {"path": "m"}, "stages": _stages()}
    with pytest.raises(ConfigError, match=r"backbone: Input should be 'diffusion', 'mntp', 'bidirectional' or "
                                          r"'causal'"):
        _load(tmp_path, base, ["backbone=llm2vec"])
    no_stage0 = {"output_dir": "out", "model": {"path": "m"},
                 "stages": [{"name": "pairs", "data": {"train": ["p.jsonl"]}, "train": {"steps": 2}}]}
    for arm in ("diffusion", "mntp"):
        with pytest.raises(ConfigError, match=f"backbone: {arm} runs the recipe's pretrain stage .* but this "
                                              "recipe has no kind: pretrain stage"):
            _load(tmp_path, no_stage0, [f"backbone={arm}"])
    assert _load(tmp_path, no_stage0, ["backbone=causal"]).model.attention == "causal"  # nothing to drop: fine
    with pytest.raises(ConfigError, match=r"output_dir 'runs/\{backbone\}' names \{backbone\} but no backbone is set"):
        _load(tmp_path, base)


@pytest.mark.parametrize("name", ["pplx-smollm2.yaml", "pplx-smollm2-gpu.yaml"])
@pytest.mark.parametrize("backbone", ["diffusion", "mntp", "bidirectional", "causal"])
def test_the_real_recipes_resolve_for_every_backbone(name, backbone):
    """Validation only (it does not read the data; --dry-run does)."""
    r = load_config(TrainRecipe, REPO / "recipes" / name, [f"backbone={backbone}"])
    gpu = "-gpu" if "gpu" in name else ""
    assert r.output_dir == f"runs/pplx-smollm2{gpu}-{backbone}"
    names = [s.name for s in r.stages]
    kept = ["pairs", "contextual", "triplets", "merged"]
    assert names == (["stage0", *kept] if backbone in ("diffusion", "mntp") else kept)
    assert r.model.path == "smollm2-135m"
    assert r.model.attention == ("causal" if backbone == "causal" else "bidirectional")
    if backbone in ("diffusion", "mntp"):
        assert r.stages[0].objective.kind == backbone and r.stages[1].start_from == "previous"
    else:
        assert r.stages[0].start_from == "base"
    by = {s.name: s for s in r.stages}
    assert by["contextual"].start_from == "pairs" and by["triplets"].start_from == "pairs"
    assert by["merged"].method == "slerp" and by["merged"].inputs == ["contextual", "triplets"]
    assert all(by[n].loss.quantization in ("mixed", "int8") for n in ("pairs", "contextual", "triplets"))
    assert r.evaluate.datasets == ["data/pairs/dev-beir", "data/contextual-500/dev-contextual"]
    text = (REPO / "recipes" / name).read_text()
    every_path = json.dumps(r.model_dump(mode="json")).lower()
    for reserved in ("squad", "korquad", "/faq", "libreoffice"):
        assert reserved not in every_path
    assert "diffembed mine data/pairs/train.jsonl -o data/pairs/train-mined.jsonl" in \
        (REPO / "recipes" / "pplx-smollm2.yaml").read_text()
    assert "train-mined.jsonl" in text
    if not gpu:  # the CPU profile has a time budget on every training stage
        assert all(s.train.max_minutes for s in r.stages if s.kind != "merge")
    else:
        assert all(s.train.precision == "bf16" for s in r.stages if s.kind != "merge")


def test_the_default_backbone_of_the_real_recipe_is_diffusion():
    r = load_config(TrainRecipe, REPO / "recipes" / "pplx-smollm2.yaml")
    assert r.backbone == "diffusion" and r.stages[0].objective.kind == "diffusion"


# ------------------------------------------------------------------ tiny runs through the CLI
def _tiny_recipe(tmp_path, model, corpus) -> Path:
    from test_recipe_pretrain import PRETRAIN, _pairs, _write_jsonl

    pairs = _write_jsonl(tmp_path / "pairs.jsonl", _pairs(48, seed=0))
    stage0 = {"name": "stage0", "kind": "pretrain", **json.loads(json.dumps(PRETRAIN))}
    stage0["data"]["train"] = [str(corpus)]
    data = {"output_dir": str(tmp_path / "runs" / "{backbone}"), "backbone": "diffusion",
            "model": {"path": str(model)},
            "stages": [stage0, {"name": "pairs", "data": {"train": [str(pairs)]}, "batch": {"size": 8},
                                "train": {"steps": 2, "log_every": 1}, "checkpoint": {"every": 100},
                                "eval": {"every": 100}, "optim": {"lr": 1e-3}}]}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("backbone", ["causal", "bidirectional"])
def test_a_tiny_recipe_runs_each_arm_without_stage_0(backbone, tiny_lm, word_corpus, tmp_path, monkeypatch, capsys):
    from cli_helpers import run_cli

    recipe = _tiny_recipe(tmp_path, tiny_lm, word_corpus)
    code, out, err = run_cli(["train", "-c", recipe, "--dry-run", f"backbone={backbone}"], monkeypatch, capsys)
    assert code == 0, err
    assert f"backbone {backbone}: model.attention {backbone}, stage 0: none" in " ".join(err.split())
    dumped = yaml.safe_load(out)
    assert [s["name"] for s in dumped["stages"]] == ["pairs"] and dumped["stages"][0]["start_from"] == "base"
    code, out, err = run_cli(["train", "-c", recipe, "-q", f"backbone={backbone}"], monkeypatch, capsys)
    assert code == 0, err
    run = tmp_path / "runs" / backbone
    assert out.splitlines() == [f"pairs\t{run / 'pairs' / 'final'}"]
    assert not (run / "stage0").exists()
    info = json.loads((run / "pairs" / "final" / "diffembed_train.json").read_text())
    assert info["start_from"] == str(tiny_lm) and info["lineage"] == ["pairs"]
    config = json.loads((run / "pairs" / "final" / "config.json").read_text())
    assert config["is_causal"] is (backbone == "causal")
    pooling = json.loads((run / "pairs" / "final" / "1_Pooling" / "config.json").read_text())
    assert (pooling["pooling_mode"] == "lasttoken") is (backbone == "causal")


def test_a_tiny_recipe_runs_mntp_stage_0(tiny_lm, word_corpus, tmp_path, monkeypatch, capsys):
    from cli_helpers import run_cli

    recipe = _tiny_recipe(tmp_path, tiny_lm, word_corpus)
    code, out, err = run_cli(["train", "-c", recipe, "-q", "backbone=mntp"], monkeypatch, capsys)
    assert code == 0, err
    run = tmp_path / "runs" / "mntp"
    assert [line.split("\t")[0] for line in out.splitlines()] == ["stage0", "pairs"]
    info = json.loads((run / "stage0" / "final" / "diffembed_pretrain.json").read_text())
    assert info["config"]["objective"]["kind"] == "mntp"
    assert json.loads((run / "pairs" / "final" / "diffembed_train.json").read_text())["lineage"] == ["stage0", "pairs"]


@pytest.mark.parametrize("backbone", ["diffusion", "mntp", "bidirectional", "causal"])
def test_evaluate_stages_naming_stage_0_hold_for_every_arm(backbone):
    """One evaluate section serves all four arms: an arm that drops stage 0 does not score it."""
    data = {"output_dir": "runs/{backbone}", "backbone": backbone, "model": {"path": "m"}, "stages": _stages(),
            "evaluate": {"datasets": ["dev"], "stages": ["stage0", "merged"]}}
    recipe = TrainRecipe.model_validate(data)
    dropped = backbone in ("bidirectional", "causal")
    assert recipe.evaluate.stages == (["merged"] if dropped else ["stage0", "merged"])
    only_stage0 = {**data, "evaluate": {"datasets": ["dev"], "stages": ["stage0"]}}
    assert TrainRecipe.model_validate(only_stage0).evaluate.stages == ([] if dropped else ["stage0"])
