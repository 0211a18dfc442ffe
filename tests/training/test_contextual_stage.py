"""The contextual stage (kind: contextual): recipe checks, the document plan, and end-to-end runs
whose output is an ordinary diffembed model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from diffembed.errors import InputError
from diffembed.training.contextual import ContextDoc, ContextQuery, DocumentPlan, read_documents
from diffembed.training.train_config import TrainRecipe
from stdlib_pairs import tiny_bert_for

# ------------------------------------------------------------------------------ a task that needs context
# Each document names a made-up town in its first chunk; every later chunk says "it ..." and is word
# for word the same in every document that has that feature. A query "<town> <feature>" is answered
# by one later chunk: alone, that chunk could belong to any town; in its document, only to one.
FEATURES = ["has a wide river", "exports copper and tin", "is famous for stone bridges", "holds a spring fair",
            "has an old castle", "grows apples on the hills", "builds wooden boats", "keeps a large library",
            "has a busy harbour", "brews dark beer", "makes glass bottles", "has a tall clock tower"]
KEYWORD = ["river", "copper", "bridges", "fair", "castle", "apples", "boats", "library", "harbour", "beer", "glass",
           "clock"]


def town_names(n: int) -> list[str]:
    first, second = ["bar", "cor", "del", "fen", "gal", "hol", "kir", "lom", "mar", "nor"], ["ton", "vik", "dun", "sby",
                                                                                            "ham", "mere"]
    names = [a + b for a in first for b in second]
    return [names[(i * 7) % len(names)] for i in range(n)]


def town_documents(names: list[str], seed: int, per_doc: int = 3) -> list[dict]:
    rng = np.random.default_rng(seed)
    docs = []
    for i, name in enumerate(names):
        picks = sorted(rng.choice(len(FEATURES), per_doc, replace=False).tolist())
        chunks = [f"{name} is a small town in the north."] + [f"it {FEATURES[f]}." for f in picks]
        queries = [{"query": f"{name} {KEYWORD[f]}", "chunk": k + 1} for k, f in enumerate(picks)]
        docs.append({"id": f"town-{i}", "chunks": chunks, "queries": queries})
    return docs


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_eval_set(root: Path, docs: list[dict]) -> Path:
    from diffembed.eval.datasets import chunk_id, write_contextual_dataset

    documents = {d["id"]: {"chunks": d["chunks"]} for d in docs}
    queries, qrels = {}, {}
    for d in docs:
        for n, q in enumerate(d["queries"]):
            queries[f"{d['id']}-q{n}"] = q["query"]
            qrels[f"{d['id']}-q{n}"] = {chunk_id(d["id"], q["chunk"]): 1}
    return write_contextual_dataset(root, documents, queries, qrels)


def recipe(out: Path, model: Path, data_file: Path, **stage) -> TrainRecipe:
    base = {"name": "ctx", "kind": "contextual", "data": {"train": [str(data_file)]}, "batch": {"size": 4},
            "train": {"steps": 2, "log_every": 1}, "eval": {"every": 1000}}
    for key, value in stage.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return TrainRecipe.model_validate({"output_dir": str(out), "model": {"path": str(model)}, "stages": [base]})


@pytest.fixture(scope="module")
def towns(tmp_path_factory):
    """(tiny BERT with the towns' word vocabulary, train file, held-out eval set of other towns)."""
    root = tmp_path_factory.mktemp("towns")
    names = town_names(60)
    train, held_out = town_documents(names[:40], seed=1), town_documents(names[40:], seed=2)
    texts = [c for d in train + held_out for c in d["chunks"]] + [q["query"] for d in train + held_out
                                                                  for q in d["queries"]]
    model = tiny_bert_for(texts, root / "tiny")
    return model, write_rows(root / "train.jsonl", train), write_eval_set(root / "eval", held_out)


# ------------------------------------------------------------------------------ recipe and data checks
def test_contextual_stage_rejects_settings_it_does_not_use(tmp_path):
    for bad in ({"loss": {"symmetric": True}}, {"loss": {"mini_batch_size": 2}}, {"data": {"negatives": 1}},
                {"loss": {"false_negative_margin": 0.1}}, {"batch": {"clusters": 4}}):
        with pytest.raises(ValidationError, match="contextual stage does not use"):
            recipe(tmp_path, tmp_path, tmp_path / "t.jsonl", **bad)
    with pytest.raises(ValidationError, match="in_sequence_weight"):
        recipe(tmp_path, tmp_path, tmp_path / "t.jsonl", loss={"in_sequence_weight": 1.5})


def test_read_documents_names_the_bad_line(tmp_path):
    good = {"id": "a", "chunks": ["one", "two"], "queries": [{"query": "q", "chunk": 1}]}
    path = write_rows(tmp_path / "d.jsonl", [good, {**good, "queries": [{"query": "q", "chunk": 2}]}])
    with pytest.raises(InputError, match=r"d.jsonl:2: .*outside the 2 chunks"):
        read_documents([str(path)])
    with pytest.raises(InputError, match="no such file"):
        read_documents([str(tmp_path / "missing.jsonl")])
    docs = read_documents([str(write_rows(tmp_path / "ok.jsonl", [good]))])
    assert docs == [ContextDoc("a", ("one", "two"), (ContextQuery("q", 1, 2),))]


def _docs(sizes: list[int]) -> list[ContextDoc]:
    return [ContextDoc(f"d{i}", tuple(f"c{i}-{k}" for k in range(n)),
                       tuple(ContextQuery(f"q{i}-{k}", k, min(k + 2, n)) for k in range(0, n, 2)))
            for i, n in enumerate(sizes)]


def test_document_plan_is_a_function_of_the_step_and_crops_around_queries():
    docs = _docs([3, 20, 5, 40, 7, 2, 9])
    a, b = DocumentPlan(docs, 3, 5, max_chunks=6, queries_per_document=2), DocumentPlan(docs, 3, 5, 6, 2)
    steps = [a.batch(s) for s in range(12)]
    assert [b.batch(s) for s in reversed(range(12))] == list(reversed(steps))  # any order, same answer
    for batch in steps:
        assert len({v.doc for v in batch}) == 3  # never one document twice in a batch
        for v in batch:
            n = len(docs[v.doc].chunks)
            assert 0 <= v.start < v.end <= n and v.end - v.start == min(n, 6)
            assert 1 <= len(v.queries) <= 2
            for q in v.queries:  # relative to the crop; the section stays inside it
                assert 0 <= q.chunk < q.section_end <= v.end - v.start
                assert docs[v.doc].chunks[v.start + q.chunk] == f"c{v.doc}-{v.start + q.chunk}"
    # every document is visited once per epoch (7 documents, 3 per step)
    first_epoch = [v.doc for batch in steps[:2] for v in batch] + [steps[2][0].doc]
    assert sorted(first_epoch) == list(range(7))
    with pytest.raises(InputError, match="exceeds"):
        DocumentPlan(docs, 8, 0, 6, 2)


# ------------------------------------------------------------------------------ end to end
def test_contextual_training_makes_late_chunking_win(towns, tmp_path):
    """The towns task: chunks that say "it" can only be told apart in their document. A random tiny
    BERT starts near chance both ways; 120 contextual steps lift late chunking far above naive on
    towns never trained on (the runtime's late chunking, through `Embedder` and the eval runner).
    Deterministic: fixed task, vocabulary, seeds and one thread."""
    from diffembed import Embedder
    from diffembed.eval.datasets import load_dataset
    from diffembed.eval.runner import DiffembedSystem, Grid, evaluate
    from diffembed.training.stages import run_recipe

    model, train, held_out = towns
    ds = load_dataset(held_out)

    def scores(folder) -> dict[str, float]:
        rows = evaluate(ds, DiffembedSystem(Embedder(str(folder), device="cpu", show_progress=False)), Grid())
        return {r["mode"]: r["ndcg@10"] for r in rows}

    before = scores(model)
    cfg = recipe(tmp_path / "run", model, train, batch={"size": 8}, optim={"lr": 2e-3},
                 train={"steps": 120, "log_every": 20, "threads": 1})
    out = run_recipe(cfg, progress=False)["ctx"]
    after = scores(out)
    assert after["late"] > after["naive"] + 0.25, (before, after)
    assert after["late"] > before["late"] + 0.25, (before, after)
    log = [json.loads(line) for line in (tmp_path / "run" / "ctx" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in log if r["kind"] == "train"]
    assert {"in_sequence", "in_batch", "loss"} <= set(train_rows[0])
    for r in train_rows:  # the logged terms make up the loss (lambda 0.5)
        assert r["loss"] == pytest.approx(0.5 * r["in_sequence"] + 0.5 * r["in_batch"], rel=1e-5)


def _losses(run: Path) -> list[float]:
    log = [json.loads(line) for line in (run / "ctx" / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in log if r["kind"] == "train"]


def _no_dropout(model: Path, out: Path) -> Path:
    import shutil

    shutil.copytree(model, out)
    cfg = json.loads((out / "config.json").read_text())
    cfg.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (out / "config.json").write_text(json.dumps(cfg))
    return out


def test_resume_and_gradient_checkpointing_replay_the_same_run(towns, tmp_path):
    """A run stopped at step 2 and resumed gives the uninterrupted run's losses and weights; gradient
    checkpointing changes memory, not the numbers."""
    from diffembed import Embedder
    from diffembed.training.stages import run_recipe

    model, train, _ = towns
    model = _no_dropout(model, tmp_path / "model")
    whole = recipe(tmp_path / "whole", model, train, train={"steps": 4, "log_every": 1})
    run_recipe(whole, progress=False)
    part = recipe(tmp_path / "part", model, train, train={"steps": 4, "log_every": 1, "max_minutes": 1e-6},
                  checkpoint={"every": 1})
    run_recipe(part, progress=False)  # stops after its first step (past the budget), with a checkpoint
    assert len(_losses(tmp_path / "part")) == 1
    import shutil

    shutil.rmtree(tmp_path / "part" / "ctx" / "final")  # as if killed right after that checkpoint
    run_recipe(recipe(tmp_path / "part", model, train, train={"steps": 4, "log_every": 1}), progress=False)
    np.testing.assert_allclose(_losses(tmp_path / "part"), _losses(tmp_path / "whole"), rtol=1e-5)
    texts = ["it has a wide river.", "barton is a small town in the north."]
    a = Embedder(str(tmp_path / "whole" / "ctx" / "final"), device="cpu").encode(texts)
    b = Embedder(str(tmp_path / "part" / "ctx" / "final"), device="cpu").encode(texts)
    np.testing.assert_allclose(a, b, atol=1e-5)

    ckpt = TrainRecipe.model_validate({**whole.model_dump(mode="json"), "output_dir": str(tmp_path / "ckpt"),
                                       "model": {"path": str(model), "gradient_checkpointing": True}})
    run_recipe(ckpt, progress=False)
    np.testing.assert_allclose(_losses(tmp_path / "ckpt"), _losses(tmp_path / "whole"), rtol=1e-5)


def test_export_is_an_ordinary_model(towns, tmp_path):
    """The stage's output loads in plain sentence-transformers and in `Embedder` with equal vectors,
    late-chunks documents, and records what trained it."""
    from sentence_transformers import SentenceTransformer

    from diffembed import Embedder
    from diffembed.training.stages import run_recipe

    model, train, held_out = towns
    cfg = recipe(tmp_path / "run", model, train, data={"dev": str(held_out), "dev_max_queries": 20},
                 loss={"quantization": "mixed", "matryoshka_dims": [32]})
    out = run_recipe(cfg, progress=False)["ctx"]
    texts = ["barton is a small town in the north.", "it exports copper and tin."]
    np.testing.assert_allclose(SentenceTransformer(str(out), device="cpu").encode(texts),
                               Embedder(str(out), device="cpu").encode(texts), atol=1e-5)
    vecs = Embedder(str(out), device="cpu").encode_contextual([texts], precision="binary")
    assert vecs[0].shape == (2, 64) and set(np.unique(vecs[0])) <= {-1, 1}
    info = json.loads((out / "diffembed_train.json").read_text())
    assert info["documents"] == 40 and info["stage"]["kind"] == "contextual"
    card = (out / "README.md").read_text()
    assert "| ctx | contextual |" in card and "late chunks" in card and "naive chunks" in card
