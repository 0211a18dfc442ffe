"""`diffembed train`: recipe validation, batches, the losses against naive references, GradCache,
false-negative filtering, stages (branching, skipping, resume), export, and a real-text lift."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffembed.config_io import ConfigError, load_config
from diffembed.training.pair_batches import BatchPlan, PairRow, read_pairs
from diffembed.training.run_log import read_log
from diffembed.training.train_config import TrainRecipe
from stdlib_pairs import tiny_bert_for, write_task
from tiny_models import WORDS, build_tiny

VOCAB = sorted(set(WORDS) - {"!", ",", ".", "?"})


def word_pairs(n: int, seed: int = 0, negatives: int = 1) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a = rng.sample(VOCAB, 3)
        rows.append({"query": " ".join(a[:2]), "positive": " ".join(a + rng.sample(VOCAB, 2)),
                     "negatives": [" ".join(rng.sample(VOCAB, 4)) for _ in range(negatives)]})
    return rows


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("contrastive")
    model = build_tiny(root / "bert", "bert")
    pairs = root / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in word_pairs(200)), encoding="utf-8")
    return model, pairs


def recipe(out, model, pairs, stages=None, **first):
    base = {"name": "pairs", "data": {"train": [str(pairs)]}, "batch": {"size": 16},
            "train": {"steps": 6, "log_every": 1}, "checkpoint": {"every": 2}, "eval": {"every": 3},
            "optim": {"lr": 1e-3}}
    for key, value in first.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return TrainRecipe.model_validate({"output_dir": str(out), "model": {"path": str(model)},
                                       "stages": [base, *(stages or [])]})


# ------------------------------------------------------------------------------------------ recipe
@pytest.mark.parametrize("stage,match", [
    ({"name": "b", "start_from": "nope"}, "starts from 'nope', which is no earlier stage"),
    ({"name": "pairs"}, "two stages are named 'pairs'"),
    ({"name": "t", "kind": "triplets"}, "needs data.negatives >= 1"),
    ({"name": "g", "loss": {"mini_batch_size": 64}}, r"mini_batch_size \(64\) exceeds batch.size \(16\)"),
    ({"name": "base"}, "must be letters"),
    ({"name": "q", "loss": {"quantization": "int4"}}, "quantization"),
])
def test_bad_recipes_are_refused_by_field(tmp_path, tiny, stage, match):
    model, pairs = tiny
    full = {"data": {"train": [str(pairs)]}, "batch": {"size": 16}, "train": {"steps": 4}, **stage}
    with pytest.raises(Exception, match=match):
        recipe(tmp_path, model, pairs, stages=[full])


def test_overrides_reach_a_stage_by_name_or_index(tmp_path, tiny):
    model, pairs = tiny
    path = tmp_path / "r.yaml"
    path.write_text(json.dumps(recipe(tmp_path / "out", model, pairs).model_dump(mode="json")))
    cfg = load_config(TrainRecipe, path, ["stages.pairs.train.steps=9", "stages.0.optim.lr=0.5"])
    assert cfg.stages[0].train.steps == 9 and cfg.stages[0].optim.lr == 0.5
    assert cfg.stages[0].output_dir == str(tmp_path / "out" / "pairs")
    with pytest.raises(ConfigError, match="names no item"):
        load_config(TrainRecipe, path, ["stages.nope.train.steps=9"])


# ------------------------------------------------------------------------------------------ batches
def test_batches_are_deterministic_without_duplicate_texts_and_cover_the_epoch():
    rows = [PairRow(f"q{i % 30}", f"p{i}") for i in range(90)]  # each query three times
    plan = BatchPlan(rows, 8, seed=3)
    again = BatchPlan(rows, 8, seed=3)
    batches = [plan.batch(s) for s in range(plan.per_epoch * 2)]
    assert batches == [again.batch(s) for s in range(plan.per_epoch * 2)]
    for b in batches:
        texts = [t for i in b for t in rows[i].texts()]
        assert len(b) == 8 and len(texts) == len(set(texts))
    first_epoch = [i for b in batches[: plan.per_epoch] for i in b]
    assert len(first_epoch) == len(set(first_epoch)) >= 80  # no row twice; at most one batch's rows wait
    assert BatchPlan(rows, 8, seed=4).batch(0) != plan.batch(0)


def test_cluster_batches_come_from_one_cluster():
    rows = [PairRow(f"q{i}", f"p{i}") for i in range(64)]
    labels = np.repeat(np.arange(4), 16)
    plan = BatchPlan(rows, 8, seed=0, clusters=labels)
    for s in range(plan.per_epoch):
        assert len({labels[i] for i in plan.batch(s)}) == 1


def test_pairs_files_are_checked_with_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "a", "positive": "b"}\n{"query": "", "positive": "b"}\n')
    with pytest.raises(Exception, match=r"bad.jsonl:2: 'query' and 'positive' must be non-empty"):
        read_pairs([bad])
    ok = tmp_path / "ok.jsonl"
    ok.write_text('{"query": "a", "positive": "b", "negatives": ["c"]}\n{"query": "d", "positive": "e"}\n')
    assert [r.negatives for r in read_pairs([ok], negatives=1)] == [("c",)]  # rows without a negative skipped


# ------------------------------------------------------------------------------------------ losses
def _embed(st, texts):
    return st(st.preprocess(texts))["sentence_embedding"]


def naive_infonce(q, d, temperature, symmetric=False, mask=None):
    """Cross-entropy of cosine / temperature, positives on the diagonal (extra columns: negatives)."""
    s = F.normalize(q, dim=-1) @ F.normalize(d, dim=-1).T / temperature
    if mask is not None:
        s = s.masked_fill(mask, float("-inf"))
    target = torch.arange(len(q))
    loss = F.cross_entropy(s, target)
    if symmetric:
        back = F.normalize(d[: len(q)], dim=-1) @ F.normalize(q, dim=-1).T / temperature
        loss = (loss + F.cross_entropy(back, target)) / 2
    return loss


def stage_of(model, pairs, tmp_path, **loss):
    cfg = recipe(tmp_path, model, pairs, loss=loss, **({"data": {"negatives": 1}, "kind": "triplets"}
                                                       if loss.pop("_negatives", False) else {}))
    return cfg.stages[0]


def features(st, cols):
    return [st.preprocess(c) for c in cols]


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("negatives", [False, True])
def test_infonce_equals_a_naive_reference(tiny, tmp_path, symmetric, negatives):
    from diffembed.training.contrastive import build_loss, load_st_model

    model, pairs = tiny
    st, _ = load_st_model(model)
    st.eval()  # no dropout: the loss and the reference must see the same embeddings
    rows = word_pairs(6, seed=1)
    cols = [[r["query"] for r in rows], [r["positive"] for r in rows]] + ([[r["negatives"][0] for r in rows]]
                                                                           if negatives else [])
    stage = stage_of(model, pairs, tmp_path, temperature=0.05, symmetric=symmetric, _negatives=negatives)
    loss = build_loss(st, stage)(features(st, cols), torch.zeros(6))
    q, d = _embed(st, cols[0]), torch.cat([_embed(st, c) for c in cols[1:]])
    if symmetric and not negatives:
        ref = naive_infonce(q, d, 0.05, symmetric=True)
    elif symmetric:  # sentence-transformers' doc_to_query term scores positives only against the queries
        s = F.normalize(q, dim=-1) @ F.normalize(d, dim=-1).T / 0.05
        back = F.normalize(d[:6], dim=-1) @ F.normalize(q, dim=-1).T / 0.05
        ref = (F.cross_entropy(s, torch.arange(6)) + F.cross_entropy(back, torch.arange(6))) / 2
    else:
        ref = naive_infonce(q, d, 0.05)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)


def test_gradcache_gradients_equal_the_full_batch(tiny, tmp_path):
    from diffembed.training.contrastive import build_loss, load_st_model

    model, pairs = tiny
    rows = word_pairs(8, seed=2)
    cols = [[r["query"] for r in rows], [r["positive"] for r in rows]]
    grads = []
    for mini in (None, 2):
        st, _ = load_st_model(model)
        st.eval()  # no dropout: the two runs must see the same function
        stage = stage_of(model, pairs, tmp_path, mini_batch_size=mini)
        build_loss(st, stage)(features(st, cols), torch.zeros(8)).backward()
        grads.append(torch.cat([p.grad.flatten() for p in st.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6, rtol=1e-4)


def test_false_negative_filter_masks_exactly_the_candidates_above_the_line(tiny, tmp_path):
    from diffembed.training.contrastive import build_loss, load_st_model

    model, pairs = tiny
    st, _ = load_st_model(model)
    st.eval()
    guide, _ = load_st_model(build_tiny(tmp_path / "guide", "bert", seed=7))
    guide.eval()
    rows = word_pairs(8, seed=3)
    qs, ps = [r["query"] for r in rows], [r["positive"] for r in rows]
    margin, temperature = 0.05, 0.05
    stage = stage_of(model, pairs, tmp_path, temperature=temperature, false_negative_margin=margin)
    with torch.no_grad():
        loss = build_loss(st, stage, guide)(features(st, [qs, ps]), torch.zeros(8)).item()
        gq, gp = F.normalize(_embed(guide, qs), dim=-1), F.normalize(_embed(guide, ps), dim=-1)
        q, p = _embed(st, qs), _embed(st, ps)
    g_qp, g_qq, g_pp = gq @ gp.T, gq @ gq.T, gp @ gp.T
    line = g_qp.diagonal().unsqueeze(1) - margin
    eye = torch.eye(8, dtype=torch.bool)
    # GISTEmbed's terms: query-positive, query-query and positive-positive blocks, each masked where
    # the guide scores a candidate above the positive's score minus the margin (the diagonal kept).
    blocks = []
    for model_sims, guide_sims, keep_diag in ((F.normalize(q, dim=-1) @ F.normalize(p, dim=-1).T, g_qp, True),
                                              (F.normalize(q, dim=-1) @ F.normalize(q, dim=-1).T, g_qq, False),
                                              (F.normalize(p, dim=-1) @ F.normalize(p, dim=-1).T, g_pp, False)):
        mask = guide_sims > line
        mask = mask & ~eye if keep_diag else mask
        blocks.append((model_sims / temperature).masked_fill(mask, float("-inf")))
    ref = F.cross_entropy(torch.cat(blocks, dim=1), torch.arange(8)).item()
    assert (g_qp > line).sum() - 8 > 0  # the filter actually masks something here
    assert loss == pytest.approx(ref, rel=1e-5)


# ------------------------------------------------------------------------------------------ stages
@pytest.fixture(scope="module")
def two_stage_run(tiny, tmp_path_factory):
    from diffembed.training.stages import run_recipe

    model, pairs = tiny
    out = tmp_path_factory.mktemp("stages") / "run"
    cfg = recipe(out, model, pairs, loss={"quantization": "int8", "matryoshka_dims": [16]}, stages=[
        {"name": "triplets", "kind": "triplets", "start_from": "pairs", "data": {"train": [str(pairs)], "negatives": 1},
         "batch": {"size": 8}, "train": {"steps": 3}, "loss": {"quantization": "mixed", "mini_batch_size": 4}},
        {"name": "gist", "start_from": "pairs", "data": {"train": [str(pairs)]}, "batch": {"size": 8, "clusters": 3},
         "train": {"steps": 2}, "loss": {"false_negative_margin": 0.1, "symmetric": True}},
    ])
    messages = []
    outputs = run_recipe(cfg, progress=False, on_stage=lambda n, w: messages.append((n, w)))
    return cfg, outputs, messages


def test_stages_branch_from_their_parent_and_export_loadable_folders(two_stage_run):
    from sentence_transformers import SentenceTransformer

    from diffembed import Embedder

    cfg, outputs, messages = two_stage_run
    assert list(outputs) == ["pairs", "triplets", "gist"]
    assert [w.split(" from ")[-1] for _, w in messages[1:]] == [str(outputs["pairs"])] * 2
    texts = ["alpha beta gamma", "the cat sat"]
    for name, folder in outputs.items():
        info = json.loads((folder / "diffembed_train.json").read_text())
        assert info["lineage"] == (["pairs"] if name == "pairs" else ["pairs", name])
        modules = [m["type"] for m in json.loads((folder / "modules.json").read_text())]
        assert modules[-1].endswith("Normalize") and not any("Quantize" in m for m in modules)
        card = (folder / "README.md").read_text()
        assert f"# diffembed model: {name}" in card and "| pairs | pairs |" in card
        ours = Embedder(str(folder), device="cpu").encode(texts)
        theirs = SentenceTransformer(str(folder), device="cpu").encode(texts)
        np.testing.assert_allclose(ours, theirs, atol=1e-5)
    log = read_log(cfg.stages[0].out / "metrics.jsonl")
    assert [r["step"] for r in log if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert (cfg.stages[2].out / "clusters.npy").is_file()


def test_a_finished_stage_is_skipped_and_a_changed_one_retrained(two_stage_run):
    from diffembed.training.stages import run_recipe

    cfg, outputs, _ = two_stage_run
    messages = []
    run_recipe(cfg, progress=False, on_stage=lambda n, w: messages.append((n, w)))
    assert all("skipped" in w for _, w in messages) and len(messages) == 3
    changed = cfg.model_copy(deep=True)
    changed.stages[2].loss.temperature = 0.1
    from diffembed.errors import DiffembedError

    with pytest.raises(DiffembedError, match="--resume none"):  # its checkpoints belong to the old settings
        run_recipe(changed, progress=False, only=["gist"])
    messages.clear()
    run_recipe(changed, progress=False, resume="none", on_stage=lambda n, w: messages.append((n, w)), only=["gist"])
    assert [n for n, w in messages if "training" in w] == ["gist"]
    assert json.loads((outputs["gist"] / "diffembed_train.json").read_text())["stage"]["loss"]["temperature"] == 0.1


class Interrupt(Exception):
    pass


def test_resume_after_an_interruption_continues_the_same_run(tiny, tmp_path):
    from diffembed.training.stages import run_recipe

    model, pairs = tiny

    def losses(out):
        return [r["loss"] for r in read_log(out / "pairs" / "metrics.jsonl") if r["kind"] == "train"]

    run_recipe(recipe(tmp_path / "full", model, pairs), progress=False)

    def stop_at_5(record):
        if record["kind"] == "train" and record["step"] == 5:
            raise Interrupt

    part = recipe(tmp_path / "part", model, pairs)
    with pytest.raises(Interrupt):
        run_recipe(part, progress=False, on_log=stop_at_5)
    run_recipe(part, progress=False)  # resumes from the step-4 checkpoint
    assert losses(tmp_path / "part") == pytest.approx(losses(tmp_path / "full"), rel=1e-5)
    from diffembed import Embedder

    a = Embedder(str(tmp_path / "full" / "pairs" / "final"), device="cpu").encode(["alpha beta"])
    b = Embedder(str(tmp_path / "part" / "pairs" / "final"), device="cpu").encode(["alpha beta"])
    np.testing.assert_allclose(a, b, atol=1e-6)


# ------------------------------------------------------------------------------------------ real text
def test_training_lifts_retrieval_on_real_text(tmp_path):
    """Standard-library docstrings (first paragraph -> the rest), a random 2-layer BERT with a
    vocabulary of that text: 30 steps of pairs training lift dev nDCG@10 far above its start
    (0.102 -> 0.346 when written; the task, vocabulary and seeds are fixed, so the run is deterministic)."""
    from diffembed import Embedder
    from diffembed.eval.datasets import load_dataset
    from diffembed.eval.runner import DiffembedSystem, Grid, evaluate
    from diffembed.training.stages import run_recipe

    train, dev, texts = write_task(tmp_path / "task")
    folder = tiny_bert_for(texts, tmp_path / "tiny")
    ds = load_dataset(dev)
    before = evaluate(ds, DiffembedSystem(Embedder(str(folder), device="cpu")), Grid())[0]["ndcg@10"]
    cfg = TrainRecipe.model_validate({"output_dir": str(tmp_path / "run"), "model": {"path": str(folder),
                                                                                    "max_length": 128},
                                      "stages": [{"name": "pairs", "data": {"train": [str(train)]},
                                                  "batch": {"size": 32}, "train": {"steps": 30, "log_every": 10},
                                                  "eval": {"every": 1000}, "optim": {"lr": 3e-3}}]})
    out = run_recipe(cfg, progress=False)["pairs"]
    after = evaluate(ds, DiffembedSystem(Embedder(str(out), device="cpu")), Grid())[0]["ndcg@10"]
    assert after > before + 0.12 and after > 2 * before, (before, after)


@pytest.mark.parametrize("loss", [{}, {"mini_batch_size": 4}], ids=["plain", "gradcache"])
def test_two_process_gloo_ddp_equals_one_process(tiny, tmp_path, loss):
    """torchrun with 2 CPU processes, each with half the batch and the other's documents gathered as
    negatives, gives the losses of one process with the whole batch; with GradCache too (each process
    embeds its half in mini-batches of 4, and the cached gradients flow back across the gather)."""
    import os
    import subprocess
    import sys

    import yaml

    from diffembed.training.stages import run_recipe

    _, pairs = tiny
    model = build_tiny(tmp_path / "nodrop", "bert")
    cfg = json.loads((model / "config.json").read_text())
    cfg.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # same function in both runs
    (model / "config.json").write_text(json.dumps(cfg))
    one = recipe(tmp_path / "one", model, pairs, train={"steps": 4}, loss=loss)
    run_recipe(one, progress=False)
    two = recipe(tmp_path / "two", model, pairs, train={"steps": 4}, loss=loss)
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(two.model_dump(mode="json")))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "diffembed", "train", "-c", str(path), "-q"], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    def losses(out):
        return [r["loss"] for r in read_log(out / "pairs" / "metrics.jsonl") if r["kind"] == "train"]

    assert len(losses(tmp_path / "two")) == 4
    np.testing.assert_allclose(losses(tmp_path / "two"), losses(tmp_path / "one"), rtol=1e-5)


def test_a_decoder_trains_bidirectional_as_the_runtime_embeds_it(tmp_path):
    """The runtime makes decoders bidirectional; a stage starting from a causal decoder folder must
    train that same function, and its export must load bidirectional everywhere."""
    from diffembed import Embedder
    from diffembed.modeling.bidirectional import attends_to_future
    from diffembed.training.contrastive import load_st_model
    from diffembed.training.stages import run_recipe

    llama = build_tiny(tmp_path / "llama", "llama")
    st, _ = load_st_model(llama)
    backbone = st[0].auto_model
    assert attends_to_future(backbone, backbone.config.vocab_size)
    texts = ["the cat sat on the mat", "red green blue"]
    runtime = Embedder(str(llama), device="cpu").encode(texts)
    with torch.no_grad():
        ours = F.normalize(st.encode(texts, convert_to_tensor=True), dim=-1).numpy()
    np.testing.assert_allclose(ours, runtime, atol=1e-5)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in word_pairs(40)), encoding="utf-8")
    out = run_recipe(recipe(tmp_path / "run", llama, pairs, train={"steps": 2}, batch={"size": 8}),
                     progress=False)["pairs"]
    assert json.loads((out / "config.json").read_text())["is_causal"] is False
    emb = Embedder(str(out), device="cpu")
    assert attends_to_future(emb.loaded.model, emb.loaded.model.config.vocab_size)
