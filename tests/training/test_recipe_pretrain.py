"""Stage 0 inside a `diffembed train` recipe (`kind: pretrain`): it runs `diffembed pretrain`'s code into
<output_dir>/<name>/final, later stages start from that folder, a re-run skips it, an interrupted one
resumes, and the whole pplx-embed chain (pretrain -> pairs -> contextual + triplets -> SLERP merge, each
scored) runs from recipes/smoke-pplx.yaml on a tiny random decoder."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml

from diffembed.config_io import ConfigError, load_config
from diffembed.training.pretrain import run_pretrain
from diffembed.training.pretrain_config import PretrainConfig
from diffembed.training.run_log import read_log
from diffembed.training.train_config import TrainRecipe
from pretrain_helpers import recipe as pretrain_recipe
from tiny_models import WORDS, assert_same_tensors

REPO = Path(__file__).resolve().parents[2]
VOCAB = sorted(set(WORDS[:60]) - {"!", ",", ".", "?"})


class Interrupt(Exception):
    pass


def _pairs(n: int, seed: int, negatives: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a = rng.sample(VOCAB, 3)
        row = {"query": " ".join(a[:2]), "positive": " ".join(a + rng.sample(VOCAB, 2))}
        if negatives:
            row["negatives"] = [" ".join(rng.sample(VOCAB, 4)) for _ in range(negatives)]
        rows.append(row)
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


PRETRAIN = {"data": {"heldout_fraction": 0.2, "seq_len": 32},
            "train": {"steps": 3, "micro_batch_size": 2, "grad_accum": 1, "log_every": 1, "threads": 1},
            "optim": {"lr": 1e-3}, "schedule": {"warmup_steps": 1}, "checkpoint": {"every": 1, "keep": 3},
            "eval": {"every": 100, "rows": 4}}


def _pretrain_stage(corpus, name="stage0", **extra) -> dict:
    stage = json.loads(json.dumps(PRETRAIN))
    stage["data"]["train"] = [str(corpus)]
    return {"name": name, "kind": "pretrain", **stage, **extra}


def _pairs_stage(pairs, name="pairs", **extra) -> dict:
    return {"name": name, "data": {"train": [str(pairs)]}, "batch": {"size": 8},
            "train": {"steps": 2, "log_every": 1}, "checkpoint": {"every": 100}, "eval": {"every": 100},
            "optim": {"lr": 1e-3}, **extra}


def _recipe(out, model, corpus, pairs, **pretrain_extra) -> TrainRecipe:
    return TrainRecipe.model_validate({"output_dir": str(out), "model": {"path": str(model)},
                                       "stages": [_pretrain_stage(corpus, **pretrain_extra), _pairs_stage(pairs)]})


def _run(cfg, **kw):
    from diffembed.training.stages import run_recipe

    messages = []
    outputs = run_recipe(cfg, progress=False, on_stage=lambda n, w: messages.append((n, w)), **kw)
    return outputs, messages


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> Path:
    return _write_jsonl(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", _pairs(48, seed=0))


@pytest.fixture(scope="module")
def chain(tiny_lm, word_corpus, pairs_file, tmp_path_factory):
    """pretrain (3 diffusion steps) -> pairs (2 steps), run once."""
    root = tmp_path_factory.mktemp("recipe_pretrain")
    cfg = _recipe(root / "run", tiny_lm, word_corpus, pairs_file)
    outputs, messages = _run(cfg)
    return cfg, outputs, messages


def test_pretrain_stage_runs_and_the_next_stage_starts_from_its_export(chain, tiny_lm):
    from diffembed import Embedder

    cfg, outputs, messages = chain
    assert list(outputs) == ["stage0", "pairs"]
    assert outputs["stage0"] == cfg.out / "stage0" / "final"
    assert ("stage0", f"pretraining (diffusion) from {tiny_lm}") in messages
    assert ("pairs", f"training from {outputs['stage0']}") in messages
    p0 = json.loads((outputs["stage0"] / "diffembed_train.json").read_text())
    assert p0["lineage"] == ["stage0"] and p0["start_from"] == str(tiny_lm) and p0["fingerprint"]
    assert p0["state"]["step"] == 3 and p0["stage"]["kind"] == "pretrain" and not p0["stopped_early"]
    assert (outputs["stage0"] / "diffembed_pretrain.json").is_file()  # diffembed pretrain's own provenance too
    config = json.loads((outputs["stage0"] / "config.json").read_text())
    assert config["is_causal"] is False and config["architectures"] == ["LlamaModel"]
    assert [r["step"] for r in read_log(cfg.out / "stage0" / "metrics.jsonl") if r["kind"] == "train"] == [1, 2, 3]
    card = (outputs["stage0"] / "README.md").read_text()
    assert "# diffembed model: stage0" in card and "masked diffusion" in card
    assert "| stage0 | pretrain (diffusion) | docs | 3 | 2 x 32 tokens | 0.001 |" in card
    p1 = json.loads((outputs["pairs"] / "diffembed_train.json").read_text())
    assert p1["lineage"] == ["stage0", "pairs"] and p1["start_from"] == str(outputs["stage0"])
    assert p1["parent_fingerprint"] == p0["fingerprint"]
    assert "| stage0 | pretrain (diffusion) |" in (outputs["pairs"] / "README.md").read_text()
    assert Embedder(str(outputs["pairs"]), device="cpu").encode(["alpha beta"]).shape == (1, 32)


def test_pretrain_stage_export_equals_diffembed_pretrain(chain, tiny_lm, word_corpus, tmp_path):
    """The same settings through `diffembed pretrain` give the same tensors (same seed, same code)."""
    cfg, outputs, _ = chain
    data = pretrain_recipe(tiny_lm, word_corpus, tmp_path / "pretrain", **{
        "train.steps": 3, "train.grad_accum": 1, "checkpoint.every": 1, "eval.rows": 4, "eval.every": 100})
    final = run_pretrain(PretrainConfig.model_validate(data), progress=False)
    assert_same_tensors(final, outputs["stage0"])
    timeless = lambda path: [{k: v for k, v in r.items() if k not in ("tokens_per_s", "elapsed_s", "mfu")}
                             for r in read_log(path)]
    assert timeless(tmp_path / "pretrain" / "metrics.jsonl") == timeless(cfg.out / "stage0" / "metrics.jsonl")


def test_rerun_skips_both_stages(chain):
    cfg, outputs, _ = chain
    stamps = {n: (p / "model.safetensors").stat().st_mtime_ns for n, p in outputs.items()}
    again, messages = _run(cfg)
    assert again == outputs
    assert [w for _, w in messages] == [f"already finished ({outputs[n]}); skipped" for n in outputs]
    assert {n: (p / "model.safetensors").stat().st_mtime_ns for n, p in outputs.items()} == stamps


def test_changed_pretrain_settings_retrain_it_and_its_child(chain, tmp_path):
    """More steps: a new fingerprint, so stage 0 trains on from its last checkpoint and pairs retrains."""
    import shutil

    cfg, outputs, _ = chain
    out = tmp_path / "run"
    shutil.copytree(cfg.out, out)
    shutil.rmtree(out / "pairs" / "checkpoints")  # written under the old parent, they refuse to resume (by design)
    data = cfg.model_dump(mode="json")
    data["output_dir"] = str(out)
    data["stages"][0]["train"]["steps"] = 4
    for s in data["stages"]:
        s.pop("output_dir")
    changed = TrainRecipe.model_validate(data)
    again, messages = _run(changed)
    assert ("stage0", f"pretraining (diffusion) from {changed.model.path}") in messages
    assert json.loads((again["stage0"] / "diffembed_train.json").read_text())["state"]["step"] == 4
    steps = [r["step"] for r in read_log(out / "stage0" / "metrics.jsonl") if r["kind"] == "train"]
    assert steps == [1, 2, 3, 4]  # resumed at step 3's checkpoint, not from scratch
    assert ("pairs", f"training from {again['stage0']}") in messages


def test_interrupted_pretrain_stage_resumes_to_the_same_model(chain, tiny_lm, word_corpus, pairs_file, tmp_path):
    cfg_full, outputs, _ = chain
    cfg = _recipe(tmp_path / "run", tiny_lm, word_corpus, pairs_file)

    def kill_at_step_2(record):
        if record["kind"] == "train" and record["step"] == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        _run(cfg, on_log=kill_at_step_2)
    stage0 = cfg.out / "stage0"
    assert not (stage0 / "final").exists() and (stage0 / "checkpoints" / "step-00000001").is_dir()
    resumed, _ = _run(cfg)
    assert_same_tensors(resumed["stage0"], outputs["stage0"])
    losses = lambda out: [r["loss"] for r in read_log(out / "stage0" / "metrics.jsonl") if r["kind"] == "train"]
    assert len(losses(cfg.out)) == 3  # the log was cut back to the checkpoint on resume
    assert losses(cfg.out) == losses(cfg_full.out)  # bit for bit: the same rows, masks and optimizer state
    assert json.loads((resumed["pairs"] / "diffembed_train.json").read_text())["start_from"] == str(resumed["stage0"])


def test_mntp_objective(tiny_lm, word_corpus, tmp_path):
    cfg = TrainRecipe.model_validate({"output_dir": str(tmp_path / "run"), "model": {"path": str(tiny_lm)},
                                      "stages": [_pretrain_stage(word_corpus, name="mntp",
                                                                 objective={"kind": "mntp", "mask_rate": 0.3})]})
    cfg.stages[0].train.steps = 2
    outputs, _ = _run(cfg)
    info = json.loads((outputs["mntp"] / "diffembed_pretrain.json").read_text())
    assert info["config"]["objective"]["kind"] == "mntp" and info["config"]["objective"]["mask_rate"] == 0.3
    assert json.loads((outputs["mntp"] / "diffembed_train.json").read_text())["state"]["step"] == 2
    assert "MNTP (mask rate 0.3)" in (outputs["mntp"] / "README.md").read_text()


def _load(tmp_path, data) -> TrainRecipe:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(TrainRecipe, path)


@pytest.mark.parametrize("extra, message", [
    ({"loss": {"temperature": 0.05}}, "stages.0: Value error, a pretrain stage takes no loss"),
    ({"batch": {"size": 8}}, "a pretrain stage takes no batch"),
    ({"inputs": ["a", "b"]}, "a pretrain stage takes no inputs"),
    ({"data": {"train": ["x"], "negatives": 1}}, "stages.0.data.negatives: unknown field"),
    ({"train": {"steps": 2, "micro_batch_sise": 2}}, "stages.0.train.micro_batch_sise: unknown field"),
    ({"objective": {"kind": "mlm"}}, "stages.0.objective.kind"),
    ({"data": {"train": ["x"], "heldout_fraction": 0.0}}, "no held-out data"),
])
def test_pretrain_stage_config_errors(tmp_path, extra, message):
    stage = {**_pretrain_stage("corpus"), **extra}
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, {"output_dir": "out", "model": {"path": "m"}, "stages": [stage]})
    assert message in str(exc.value)


def test_pairs_stage_errors_keep_their_dotted_names(tmp_path):
    with pytest.raises(ConfigError, match=r"stages\.0\.loss\.temprature: unknown field"):
        _load(tmp_path, {"output_dir": "out", "stages": [_pairs_stage("p.jsonl", loss={"temprature": 1})]})


def test_causal_attention_with_a_pretrain_stage_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="model.attention: causal keeps the decoder causal with no stage 0"):
        _load(tmp_path, {"output_dir": "out", "model": {"path": "m", "attention": "causal"},
                         "stages": [_pretrain_stage("corpus"), _pairs_stage("p.jsonl")]})


def test_dry_run_shows_the_pretrain_stage(tiny_lm, word_corpus, pairs_file, tmp_path, monkeypatch, capsys):
    from cli_helpers import run_cli

    cfg = _recipe(tmp_path / "run", tiny_lm, word_corpus, pairs_file)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    code, out, err = run_cli(["train", "-c", path, "--dry-run", "stages.0.train.steps=5"], monkeypatch, capsys)
    assert code == 0, err
    err = " ".join(err.split())
    assert f"stage stage0: diffusion pretraining from {tiny_lm}, 40 training files (20.0% of documents held out), " \
           "0 separate eval files, 5 steps of 2 x 32 tokens" in err
    dumped = yaml.safe_load(out)
    assert dumped["stages"][0]["kind"] == "pretrain" and dumped["stages"][0]["train"]["steps"] == 5
    assert TrainRecipe.model_validate(dumped).stages[0].objective.kind == "diffusion"  # the dump loads again
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------ the smoke recipe
def _smoke_data(root: Path) -> None:
    """data/smoke/ as recipes/smoke-pplx.yaml names it: text for stage 0, pairs, triplets with mined
    negatives written in, contextual documents, and a BEIR and a contextual dev set."""
    from diffembed.eval.datasets import write_contextual_dataset, write_retrieval_dataset
    from pretrain_helpers import write_corpus

    d = root / "data" / "smoke"
    write_corpus(d / "text", n_docs=16)
    _write_jsonl(d / "pairs.jsonl", _pairs(32, seed=1))
    _write_jsonl(d / "triplets.jsonl", _pairs(32, seed=2, negatives=1))
    rows = _pairs(24, seed=3)
    docs = [{"id": f"doc{j}", "chunks": [rows[4 * j + k]["positive"] for k in range(4)],
             "queries": [{"query": rows[4 * j + k]["query"], "chunk": k} for k in range(4)]} for j in range(6)]
    _write_jsonl(d / "documents.jsonl", docs)
    dev = _pairs(12, seed=4)
    write_retrieval_dataset(d / "dev-beir", {f"d{i}": {"text": r["positive"]} for i, r in enumerate(dev)},
                            {f"q{i}": r["query"] for i, r in enumerate(dev)}, {f"q{i}": {f"d{i}": 1} for i in range(12)})
    write_contextual_dataset(d / "dev-ctx", {f"doc{j}": {"chunks": [dev[3 * j + k]["positive"] for k in range(3)]}
                                             for j in range(4)},
                             {f"q{i}": r["query"] for i, r in enumerate(dev)},
                             {f"q{i}": {f"doc{i // 3}_{i % 3}": 1} for i in range(12)})


def test_smoke_recipe_runs_the_whole_chain_from_the_cli(tiny_lm, tmp_path, monkeypatch, capsys):
    from cli_helpers import run_cli

    _smoke_data(tmp_path)
    monkeypatch.chdir(tmp_path)
    args = ["train", "-c", REPO / "recipes" / "smoke-pplx.yaml", "-q", f"model.path={tiny_lm}",
            "output_dir=runs/smoke"]
    code, out, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    names = ["diffusion", "pairs", "contextual", "triplets", "merged"]
    assert [line.split("\t")[0] for line in out.splitlines()] == names
    run = tmp_path / "runs" / "smoke"
    info = {n: json.loads((run / n / "final" / "diffembed_train.json").read_text()) for n in names}
    assert info["pairs"]["lineage"] == ["diffusion", "pairs"]
    assert info["pairs"]["start_from"] == "runs/smoke/diffusion/final"
    assert info["contextual"]["lineage"] == ["diffusion", "pairs", "contextual"]
    assert info["triplets"]["lineage"] == ["diffusion", "pairs", "triplets"]
    assert info["diffusion"]["stage"]["objective"]["kind"] == "diffusion" and info["triplets"]["stage"]["loss"][
        "quantization"] == "int8"
    assert info["merged"]["lineage"] == ["diffusion", "pairs", "contextual", "triplets", "merged"]
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    # per stage: the BEIR set at 3 precisions, the contextual set at 2 modes x 3 precisions
    assert [r["stage"] for r in rows[::9]] == names and len(rows) == 5 * 9
    assert (run / "results.md").is_file() and (run / "results.png").is_file()
    code, _, err = run_cli(args, monkeypatch, capsys)  # a re-run skips every stage and scores nothing again
    assert code == 0, err
    assert " ".join(err.split()).count("already finished") == 5
    assert len((run / "results.jsonl").read_text().splitlines()) == 5 * 9
