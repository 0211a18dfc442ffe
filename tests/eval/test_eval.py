"""Dataset loading errors, the eval grid, and late > naive where context matters (real model)."""

import json
import sys

import pytest

from diffembed.errors import DataFileError, InputError
from diffembed.eval.datasets import load_dataset, write_contextual_dataset, write_retrieval_dataset
from diffembed.eval.runner import DiffembedSystem, Grid, evaluate, parse_dimensions, parse_precisions

CITIES = [("Springfield", "Oregon", "1850", "rivers"), ("Riverton", "Wyoming", "1906", "bridges"),
          ("Maplewood", "Minnesota", "1888", "lakes"), ("Ashford", "Kent", "1212", "markets"),
          ("Bayside", "Queensland", "1959", "beaches"), ("Hillcrest", "Ontario", "1871", "gardens")]


def city_dataset(root):
    """Chunks after the first only make sense with their document: they say 'it', never the name."""
    docs, queries, qrels = {}, {}, {}
    for i, (name, region, year, known) in enumerate(CITIES):
        did = f"c{i}"
        docs[did] = {"title": name, "chunks": [
            f"{name} is a town in {region}, famous for its {known}.",
            f"It was founded in {year} by a group of settlers.",
            "The town has a large public library and a small museum.",
        ]}
        queries[f"{did}-founded"] = f"When was {name} founded?"
        queries[f"{did}-library"] = f"Does {name} have a public library?"
        qrels[f"{did}-founded"] = {f"{did}_1": 1}
        qrels[f"{did}-library"] = {f"{did}_2": 1}
    return write_contextual_dataset(root, docs, queries, qrels)


@pytest.mark.integration
def test_late_beats_naive_when_context_matters(minilm, tmp_path):
    ds = load_dataset(city_dataset(tmp_path / "cities"))
    rows = {r["mode"]: r for r in evaluate(ds, DiffembedSystem(minilm), Grid())}
    assert rows["late"]["ndcg@10"] > rows["naive"]["ndcg@10"] + 0.1, rows


@pytest.mark.integration
def test_grid_covers_precisions_and_dimensions(minilm, tmp_path):
    ds = load_dataset(city_dataset(tmp_path / "cities"))
    grid = Grid(precisions=("float32", "int8", "binary"), dimensions=(128, None))
    rows = evaluate(ds, DiffembedSystem(minilm), grid)
    assert len(rows) == 2 * 3 * 2
    assert {r["dimensions"] for r in rows} == {128, 384}
    for r in rows:  # each cell equals nDCG@10 computed here from Embedder vectors, apart from the runner
        assert r["queries"] == 12
        dims = None if r["dimensions"] == 384 else r["dimensions"]
        assert r["ndcg@10"] == pytest.approx(_reference_ndcg10(minilm, ds, r["mode"], r["precision"], dims),
                                             abs=1e-6), r


def _reference_ndcg10(embedder, ds, mode, precision, dims):
    """Chunks embedded alone (naive) or late-chunked per document, compared by cosine (float32, int8)
    or dot product (binary), ranked and scored by pytrec_eval."""
    import numpy as np
    import pytrec_eval

    kw = {"precision": precision, "dimensions": dims}
    ids = [f"{d}_{i}" for d, doc in ds.documents.items() for i in range(len(doc["chunks"]))]
    if mode == "naive":
        vecs = embedder.encode([c for doc in ds.documents.values() for c in doc["chunks"]], **kw)
    else:
        vecs = np.concatenate(embedder.encode_contextual([doc["chunks"] for doc in ds.documents.values()], **kw))
    q = embedder.encode_query(list(ds.queries.values()), **kw)
    vecs, q = vecs.astype(np.float64), q.astype(np.float64)
    if precision != "binary":
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
    scores = q @ vecs.T
    run = {qid: {ids[j]: float(scores[i, j]) for j in range(len(ids))} for i, qid in enumerate(ds.queries)}
    per_query = pytrec_eval.RelevanceEvaluator(ds.qrels, {"ndcg_cut.10"}).evaluate(run)
    return float(np.mean([v["ndcg_cut_10"] for v in per_query.values()]))


@pytest.mark.integration
def test_cli_eval_writes_json_and_png(tmp_path, monkeypatch, capsys):
    from diffembed.cli.app import main

    root = city_dataset(tmp_path / "cities")
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    monkeypatch.setattr(sys, "argv", ["diffembed", "eval", str(root), "--precision", "float32,int8",
                                      "--dimensions", "128,full", "--json", str(out), "--plot", str(png)])
    try:
        main()
    except SystemExit as exc:
        assert exc.code in (0, None)
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 2 * 2 * 2
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "nDCG@10" in capsys.readouterr().out


def _beir(root, corpus_lines=None, qrels_lines=None):
    root.mkdir(parents=True, exist_ok=True)
    (root / "corpus.jsonl").write_text(corpus_lines or '{"_id": "d1", "title": "", "text": "alpha"}\n{"_id": "d2", "text": "beta"}\n')
    (root / "queries.jsonl").write_text('{"_id": "q1", "text": "alpha?"}\n')
    (root / "qrels").mkdir(exist_ok=True)
    (root / "qrels" / "test.tsv").write_text(qrels_lines or "query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    return root


def test_beir_round_trip(tmp_path):
    ds = load_dataset(_beir(tmp_path / "ok"))
    assert ds.kind == "retrieval" and set(ds.corpus) == {"d1", "d2"} and ds.qrels == {"q1": {"d1": 1}}
    again = write_retrieval_dataset(tmp_path / "copy", ds.corpus, ds.queries, ds.qrels)
    assert load_dataset(again).corpus == ds.corpus


@pytest.mark.parametrize("corpus,qrels,match", [
    ('{"_id": "d1", "text": "a"}\n{"_id": "d2", "text": \n', None, r"corpus.jsonl:2: malformed JSON"),
    ('{"_id": "d1", "text": ""}\n', None, r"corpus.jsonl:1: 'text' must be a non-empty string"),
    ('{"_id": "d1", "text": "a"}\n{"_id": "d1", "text": "b"}\n', None, r"corpus.jsonl:2: duplicate _id 'd1'"),
    ('{"_id": "d1", "text": "a"}\n{"text": "no id"}\n', None, r"corpus.jsonl:2: '_id' must be a string or integer"),
    ('[1, 2]\n', None, r"corpus.jsonl:1: expected a JSON object, got list"),
    (None, "query-id\tcorpus-id\tscore\nq1\tnope\t1\n", r"corpus-id 'nope'.*not in the corpus"),
    (None, "query-id\tcorpus-id\tscore\nqX\td1\t1\n", r"query-id 'qX' is not in queries.jsonl"),
    (None, "q\td\ts\nq1\td1\t1\n", r"test.tsv:1: expected the header"),
    (None, "query-id\tcorpus-id\tscore\nq1\td1\thigh\n", r"test.tsv:2: score 'high' is not a number"),
])
def test_bad_beir_files(tmp_path, corpus, qrels, match):
    with pytest.raises(DataFileError, match=match):
        load_dataset(_beir(tmp_path / "bad", corpus, qrels))


def test_missing_files(tmp_path):
    with pytest.raises(DataFileError, match="does not exist"):
        load_dataset(tmp_path / "nowhere")
    root = _beir(tmp_path / "noqrels")
    (root / "qrels" / "test.tsv").unlink()
    with pytest.raises(DataFileError, match="missing file .*test.tsv"):
        load_dataset(root)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "queries.jsonl").write_text('{"_id": "q", "text": "x"}\n')
    with pytest.raises(DataFileError, match="neither corpus.jsonl"):
        load_dataset(tmp_path / "empty")


def test_contextual_qrels_must_name_existing_chunks(tmp_path):
    root = write_contextual_dataset(tmp_path / "ctx", {"a": {"title": "", "chunks": ["x", "y"]}}, {"q": "x?"}, {"q": {"a_2": 1}})
    with pytest.raises(DataFileError, match="corpus-id 'a_2'"):
        load_dataset(root)


def test_grid_parsing():
    assert parse_dimensions("128, 256,full") == (128, 256, None)
    assert parse_precisions("float32,int8,binary") == ("float32", "int8", "binary")
    with pytest.raises(InputError):
        parse_dimensions("12x")
    with pytest.raises(InputError):
        parse_precisions("int4")
