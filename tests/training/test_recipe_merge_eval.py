"""Merge stages and per-stage evaluation in a `diffembed train` recipe: two tiny pairs stages branch
from one parent and a merge stage joins them; every stage is scored on a retrieval and a contextual
dev set as it finishes, into results.jsonl, results.md and results.png."""

from __future__ import annotations

import json
import random

import pytest
import torch

from diffembed.config_io import ConfigError, load_config
from diffembed.training.train_config import TrainRecipe
from tiny_models import WORDS, assert_same_tensors, build_tiny, folder_tensors

VOCAB = sorted(set(WORDS) - {"!", ",", ".", "?"})


def _pairs(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a = rng.sample(VOCAB, 3)
        rows.append({"query": " ".join(a[:2]), "positive": " ".join(a + rng.sample(VOCAB, 2))})
    return rows


def _datasets(root):
    """A BEIR set and a contextual set, both of word lists from the tiny vocabulary."""
    from diffembed.eval.datasets import write_contextual_dataset, write_retrieval_dataset

    rows = _pairs(12, seed=7)
    retrieval = write_retrieval_dataset(root / "dev-beir", {f"d{i}": {"text": r["positive"]} for i, r in enumerate(rows)},
                                        {f"q{i}": r["query"] for i, r in enumerate(rows)},
                                        {f"q{i}": {f"d{i}": 1} for i in range(len(rows))})
    docs = {f"doc{j}": {"chunks": [rows[3 * j + k]["positive"] for k in range(3)]} for j in range(4)}
    contextual = write_contextual_dataset(root / "dev-ctx", docs, {f"q{i}": r["query"] for i, r in enumerate(rows)},
                                          {f"q{i}": {f"doc{i // 3}_{i % 3}": 1} for i in range(len(rows))})
    return retrieval, contextual


def _stage(name, pairs, start="previous", **extra):
    return {"name": name, "start_from": start, "data": {"train": [str(pairs)]}, "batch": {"size": 8},
            "train": {"steps": 3, "log_every": 1}, "checkpoint": {"every": 100}, "eval": {"every": 100},
            "optim": {"lr": 1e-3}, **extra}


def _recipe(root, model, pairs, dev, *, t=0.3, stages=None):
    merge = [{"name": "merged", "kind": "merge", "inputs": ["a", "b"], "t": t},
             {"name": "mean", "kind": "merge", "method": "average", "inputs": ["pairs", "a", "b"]}]
    return {"output_dir": str(root / "run"), "model": {"path": str(model)},
            "stages": stages or [_stage("pairs", pairs), _stage("a", pairs, "pairs"),
                                 _stage("b", pairs, "pairs", train={"steps": 3, "seed": 5, "log_every": 1}),
                                 *merge, _stage("tuned", pairs, "merged", train={"steps": 2})],
            "evaluate": {"datasets": [str(d) for d in dev], "max_queries": 10, "precisions": ["float32", "int8"],
                         "modes": ["naive", "late"]}}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe_merge")
    model = build_tiny(root / "bert", "bert")
    pairs = root / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in _pairs(64, seed=0)), encoding="utf-8")
    return root, model, pairs, _datasets(root)


@pytest.fixture(scope="module")
def run(setup):
    from diffembed.training.stages import run_recipe

    root, model, pairs, dev = setup
    cfg = TrainRecipe.model_validate(_recipe(root, model, pairs, dev))
    messages = []
    outputs = run_recipe(cfg, progress=False, on_stage=lambda n, w: messages.append((n, w)))
    return cfg, outputs, messages


def test_merge_stage_is_diffembed_merge_of_its_inputs(run, tmp_path):
    from diffembed import Embedder
    from diffembed.training.merge import merge_folders

    cfg, outputs, messages = run
    assert list(outputs) == ["pairs", "a", "b", "merged", "mean", "tuned"]
    assert ("merged", "merging: SLERP (t = 0.3; t = 0 gives a, 1 gives b) of a, b") in messages
    merge_folders([outputs["a"], outputs["b"]], tmp_path / "slerp", t=0.3, progress=False)
    assert_same_tensors(outputs["merged"], tmp_path / "slerp")
    merge_folders([outputs["pairs"], outputs["a"], outputs["b"]], tmp_path / "mean", method="linear", t=None,
                  progress=False)
    assert_same_tensors(outputs["mean"], tmp_path / "mean")
    assert not torch.equal(folder_tensors(outputs["a"])["embeddings.word_embeddings.weight"],
                           folder_tensors(outputs["b"])["embeddings.word_embeddings.weight"])  # a real merge

    info = json.loads((outputs["merged"] / "diffembed_train.json").read_text())
    assert info["lineage"] == ["pairs", "a", "b", "merged"]
    assert info["inputs"] == {"a": str(outputs["a"]), "b": str(outputs["b"])}
    assert info["merge"]["method"] == "slerp" and info["merge"]["t"] == 0.3 and info["fingerprint"]
    assert json.loads((outputs["mean"] / "diffembed_train.json").read_text())["lineage"] == ["pairs", "a", "b", "mean"]
    tuned = json.loads((outputs["tuned"] / "diffembed_train.json").read_text())  # a stage trained on from a merge
    assert tuned["lineage"] == ["pairs", "a", "b", "merged", "tuned"] and tuned["start_from"] == str(outputs["merged"])
    assert "| merged | merge | SLERP t=0.3 of a, b | - |" in (outputs["tuned"] / "README.md").read_text()
    card = (outputs["merged"] / "README.md").read_text()
    assert "# diffembed model: merged" in card and "SLERP (t = 0.3; t = 0 gives `a`, 1 gives `b`) of `a`, `b`" in card
    assert "| a | pairs |" in card and "| b | pairs |" in card and "| merged | merge | SLERP t=0.3 of a, b |" in card
    assert Embedder(str(outputs["merged"]), device="cpu").encode(["alpha beta"]).shape == (1, 32)


def test_every_stage_is_scored_with_diffembed_eval_code(run, setup):
    from diffembed import Embedder
    from diffembed.eval.datasets import load_dataset
    from diffembed.eval.runner import DiffembedSystem, Grid, evaluate

    cfg, outputs, _ = run
    rows = [json.loads(line) for line in (cfg.out / "results.jsonl").read_text().splitlines()]
    # per stage: the BEIR set at 2 precisions, the contextual set at 2 modes x 2 precisions
    assert len(rows) == 6 * 6
    assert [r["stage"] for r in rows[::6]] == list(outputs)
    assert {(r["name"], r["mode"], r["precision"]) for r in rows if r["stage"] == "merged"} == {
        ("dev-beir", "naive", "float32"), ("dev-beir", "naive", "int8"), ("dev-ctx", "naive", "float32"),
        ("dev-ctx", "naive", "int8"), ("dev-ctx", "late", "float32"), ("dev-ctx", "late", "int8")}
    _, _, _, dev = setup
    system = DiffembedSystem(Embedder(str(outputs["merged"]), show_progress=False))
    ours = evaluate(load_dataset(dev[1]), system, Grid(precisions=("float32", "int8"), max_queries=10))
    theirs = {(r["mode"], r["precision"]): r["ndcg@10"] for r in rows if r["stage"] == "merged" and r["name"] == "dev-ctx"}
    assert {(r["mode"], r["precision"]): r["ndcg@10"] for r in ours} == pytest.approx(theirs, abs=1e-9)
    assert all(r["queries"] == 10 for r in rows)


def test_results_table_and_plot(run):
    cfg, outputs, messages = run
    table = (cfg.out / "results.md").read_text().splitlines()
    header = [line for line in table if line.startswith("| stage")][0]
    assert header == ("| stage | kind | dev-beir float32 | dev-beir int8 | dev-ctx naive float32 | dev-ctx naive int8 "
                      "| dev-ctx late float32 | dev-ctx late int8 |")
    body = [line for line in table if line.startswith("| ") and not line.startswith(("| stage", "|---"))]
    assert [line.split(" | ")[0][2:] for line in body] == list(outputs)
    assert body[3].startswith("| merged | merge | 0.") and "-" not in body[3].split(" | ")[2:]
    assert (cfg.out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert messages[-1][0] == "results"


def test_rerun_skips_every_stage_and_evaluation(run, monkeypatch):
    from diffembed.training.stages import run_recipe

    cfg, outputs, _ = run
    before = (cfg.out / "results.jsonl").read_bytes()
    folders = {name: (path / "model.safetensors").stat().st_mtime_ns for name, path in outputs.items()}

    def no_scoring(*args, **kwargs):
        raise AssertionError("a scored stage was evaluated again")

    monkeypatch.setattr("diffembed.eval.runner.evaluate", no_scoring)
    messages = []
    run_recipe(cfg, progress=False, on_stage=lambda n, w: messages.append((n, w)))
    by_stage = [w for n, w in messages if n != "results"]
    assert sum("already finished" in w for w in by_stage) == 6
    assert sum("already evaluated" in w for w in by_stage) == 6 and len(by_stage) == 12
    assert (cfg.out / "results.jsonl").read_bytes() == before
    assert {name: (path / "model.safetensors").stat().st_mtime_ns for name, path in outputs.items()} == folders


def test_a_changed_t_merges_and_scores_that_stage_again(run, setup):
    from diffembed.training.merge import merge_folders
    from diffembed.training.stages import run_recipe

    cfg, outputs, _ = run
    root, model, pairs, dev = setup
    # without "tuned": trained from the merge, it would now be retrained (its parent changed), and its
    # old checkpoints would refuse the new settings (test_a_retrained_parent_changes_its_childs_fingerprint)
    stages = [st for st in _recipe(root, model, pairs, dev, t=0.7)["stages"] if st["name"] != "tuned"]
    changed = TrainRecipe.model_validate(_recipe(root, model, pairs, dev, t=0.7, stages=stages))
    messages = []
    run_recipe(changed, progress=False, on_stage=lambda n, w: messages.append((n, w)))
    assert [n for n, w in messages if w.startswith("merging")] == ["merged"]
    rows = [json.loads(line) for line in (cfg.out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 7 * 6 and {r["stage"] for r in rows[36:]} == {"merged"}
    merge_folders([outputs["a"], outputs["b"]], root / "slerp07", t=0.7, progress=False)
    assert_same_tensors(outputs["merged"], root / "slerp07")
    # the table shows the merge's current rows only: one row per stage still
    body = [line for line in (cfg.out / "results.md").read_text().splitlines() if line.startswith("| merged ")]
    new = {r["ndcg@10"] for r in rows[36:] if r["name"] == "dev-beir" and r["precision"] == "float32"}
    assert len(body) == 1 and body[0].split(" | ")[2] == f"{new.pop():.4f}"


def test_a_retrained_parent_changes_its_childs_fingerprint(setup):
    """A stage trained from another stage is not skipped as finished once that parent has changed."""
    from diffembed.training.contrastive import ContrastiveTask
    from diffembed.training.train_config import StageConfig

    root, model, pairs, _ = setup
    stage = StageConfig.model_validate({**_stage("child", pairs), "output_dir": str(root / "child")})
    fps = [ContrastiveTask(stage, model, provenance=p).fingerprint()
           for p in ({}, {"parent_fingerprint": "aaaa"}, {"parent_fingerprint": "bbbb"}, {"parent_fingerprint": "aaaa"})]
    assert len(set(fps[:3])) == 3 and fps[1] == fps[3]


def _bad(tmp_path, stages, match):
    import yaml

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "out"), "stages": stages}))
    with pytest.raises(ConfigError, match=match):
        load_config(TrainRecipe, path)


def test_merge_config_errors_are_clear(tmp_path):
    pairs = str(tmp_path / "pairs.jsonl")
    a, b = _stage("a", pairs), _stage("b", pairs, "a")
    _bad(tmp_path, [a, b, {"name": "m", "kind": "merge", "inputs": ["a", "c"]}],
         r"merge stage 'm' takes 'c', which is no earlier stage \(earlier: a, b\) or a folder path")
    _bad(tmp_path, [a, b, {"name": "m", "kind": "merge", "inputs": ["a", "b"], "data": {"train": [pairs]}}],
         r"stages\.2: .*a merge stage trains nothing, so it takes no data ")
    _bad(tmp_path, [a, b, {"name": "m", "kind": "merge", "inputs": ["a", "b"], "optim": {"lr": 1.0},
                           "train": {"steps": 2}}], "so it takes no optim, train ")
    _bad(tmp_path, [a, {"name": "m", "kind": "merge", "method": "average", "inputs": ["a"]}],
         r"method: average needs at least two inputs, got 1 \(a\)")
    _bad(tmp_path, [a, b, {"name": "m", "kind": "merge", "inputs": ["a", "b", "./x"]}],
         "method: slerp merges exactly two inputs, got 3")
    _bad(tmp_path, [a, b, {"name": "m", "kind": "merge", "method": "average", "inputs": ["a", "b"], "t": 0.2}],
         "t is for method: slerp")
    _bad(tmp_path, [a, b, {"name": "m", "kind": "merge", "inputs": ["a", "b"], "t": 1.5}], r"stages\.2\.t")
    _bad(tmp_path, [{**a, "t": 0.5}], r"t belongs to merge stages \(kind: merge\), not to a pairs stage")
    _bad(tmp_path, [{"name": "a", "data": {"train": [pairs]}}], "a pairs stage needs a train section")


def test_evaluate_section_is_typed_and_off_by_default(tmp_path):
    pairs = str(tmp_path / "pairs.jsonl")
    base = {"output_dir": str(tmp_path / "out"), "stages": [_stage("a", pairs)]}
    assert TrainRecipe.model_validate(base).evaluate is None
    with pytest.raises(Exception, match="precisions"):
        TrainRecipe.model_validate({**base, "evaluate": {"datasets": ["d"], "precisions": ["int4"]}})
    with pytest.raises(Exception, match="datasets"):
        TrainRecipe.model_validate({**base, "evaluate": {"datasets": []}})


def test_dry_run_shows_the_merge_and_evaluate(setup, tmp_path, monkeypatch, capsys):
    import yaml

    from cli_helpers import run_cli

    root, model, pairs, dev = setup
    recipe = _recipe(tmp_path, model, pairs, dev)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    code, out, err = run_cli(["train", "-c", path, "--dry-run"], monkeypatch, capsys)
    assert code == 0, err
    err = " ".join(err.split())  # the console wraps long lines
    assert "stage merged: SLERP t=0.3 merge of a, b" in err and "stage mean: mean merge of pairs, a, b" in err
    assert f"evaluate after each stage: {dev[1]} (contextual, 12 queries; naive, late; float32, int8)" in err
    dumped = yaml.safe_load(out)
    assert dumped["stages"][3] == {"name": "merged", "kind": "merge", "inputs": ["a", "b"], "method": "slerp",
                                   "t": 0.3, "weights": None, "output_dir": str(tmp_path / "run" / "merged")}
    assert TrainRecipe.model_validate(dumped).stages[3].t == 0.3  # the dump loads again
    assert not (tmp_path / "run").exists()


def test_evaluate_stages_scores_only_the_named_stages(setup, tmp_path):
    from diffembed.training.recipe_results import read_results
    from diffembed.training.stages import run_recipe

    root, model, pairs, dev = setup
    data = _recipe(root, model, pairs, dev, stages=[_stage("pairs", pairs), _stage("a", pairs, "pairs")])
    data["output_dir"] = str(tmp_path / "run")
    data["evaluate"]["stages"] = ["a"]
    cfg = TrainRecipe.model_validate(data)
    run_recipe(cfg, progress=False)
    rows = read_results(cfg.out / "results.jsonl")
    assert rows and {r["stage"] for r in rows} == {"a"}
    table = (cfg.out / "results.md").read_text()
    assert "\n| a | pairs |" in table and "\n| pairs |" not in table  # rows: the scored stages only
    data["evaluate"]["stages"] = ["pairs", "nope"]
    with pytest.raises(ValueError, match=r"evaluate.stages names 'nope', which is no stage of this recipe "
                                         r"\(stages: pairs, a\)"):
        TrainRecipe.model_validate(data)
