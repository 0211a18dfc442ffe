"""`diffembed data subset`: a smaller evaluation set keeps whole documents and only the queries whose
judged documents all survive, and replaces nothing but an earlier dataset folder."""

from __future__ import annotations

import pytest
from cli_helpers import assert_clean_error, run_cli
from diffembed.errors import InputError
from diffembed.eval.datasets import load_dataset, write_contextual_dataset, write_retrieval_dataset
from diffembed.eval.subset import subset_dataset


@pytest.fixture
def beir(tmp_path):
    corpus = {f"d{i}": {"title": f"t{i}", "text": f"text {i}"} for i in range(10)}
    queries = {f"q{i}": f"query {i}" for i in range(10)}
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(10)}
    qrels["q9"] = {"d0": 1, "d9": 1}  # judged in and out of the first four
    return write_retrieval_dataset(tmp_path / "beir", corpus, queries, qrels)


@pytest.fixture
def contextual(tmp_path):
    docs = {f"doc{j}": {"title": "", "chunks": [f"c{j}{k}" for k in range(j + 1)]} for j in range(5)}
    queries = {f"q{j}": f"query {j}" for j in range(5)}
    qrels = {f"q{j}": {f"doc{j}_{j}": 1} for j in range(5)}
    return write_contextual_dataset(tmp_path / "ctx", docs, queries, qrels)


def test_first_n_documents_and_their_queries(beir, tmp_path):
    result = subset_dataset(beir, tmp_path / "out", 4)
    ds = load_dataset(tmp_path / "out")
    assert list(ds.corpus) == ["d0", "d1", "d2", "d3"]
    assert ds.corpus["d2"] == {"title": "t2", "text": "text 2"}
    assert set(ds.queries) == {"q0", "q1", "q2", "q3"}  # q9 also needs d9: dropped, not left half-judged
    assert ds.qrels == {f"q{i}": {f"d{i}": 1} for i in range(4)}
    assert (result.documents, result.queries, result.source_documents, result.source_queries) == (4, 4, 10, 10)


def test_a_seeded_sample_is_reproducible_and_in_file_order(beir, tmp_path):
    subset_dataset(beir, tmp_path / "a", 5, seed=3)
    subset_dataset(beir, tmp_path / "b", 5, seed=3)
    a, b = load_dataset(tmp_path / "a"), load_dataset(tmp_path / "b")
    assert list(a.corpus) == list(b.corpus) and a.qrels == b.qrels
    assert list(a.corpus) == sorted(a.corpus, key=lambda d: int(d[1:]))
    others = {tuple(load_dataset(subset_dataset(beir, tmp_path / f"s{s}", 5, seed=s).out_dir).corpus)
              for s in range(4)}
    assert len(others) > 1  # the seed matters


def test_contextual_documents_keep_all_their_chunks(contextual, tmp_path):
    subset_dataset(contextual, tmp_path / "out", 3)
    ds = load_dataset(tmp_path / "out")
    assert ds.documents == {f"doc{j}": {"title": "", "chunks": [f"c{j}{k}" for k in range(j + 1)]} for j in range(3)}
    assert set(ds.queries) == {"q0", "q1", "q2"}


def test_errors_and_what_is_replaced(beir, tmp_path):
    with pytest.raises(InputError, match="is the source dataset itself"):
        subset_dataset(beir, beir, 3)
    keep = tmp_path / "notes"
    keep.mkdir()
    (keep / "mine.txt").write_text("x")
    with pytest.raises(InputError, match="non-empty folder that holds no dataset; it is not replaced"):
        subset_dataset(beir, keep, 3)
    assert (keep / "mine.txt").read_text() == "x"
    with pytest.raises(InputError, match="--documents must be positive"):
        subset_dataset(beir, tmp_path / "x", 0)
    subset_dataset(beir, tmp_path / "again", 6)
    subset_dataset(beir, tmp_path / "again", 2)  # an earlier subset is replaced whole
    assert list(load_dataset(tmp_path / "again").corpus) == ["d0", "d1"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp folder left


def test_cli(beir, tmp_path, monkeypatch, capsys):
    code, out, err = run_cli(["data", "subset", beir, "-n", "3", "-o", tmp_path / "out"], monkeypatch, capsys)
    assert code == 0, err
    assert "3 of 10 documents, 3 of 10 queries, 3 qrels" in out
    code, out, err = run_cli(["data", "subset", tmp_path / "missing", "-n", "3", "-o", tmp_path / "o2"],
                             monkeypatch, capsys)
    assert_clean_error(code, err, "does not exist")
    code, out, err = run_cli(["data", "subset", beir, "-n", "3", "-o", beir], monkeypatch, capsys)
    assert_clean_error(code, err, "is the source dataset itself")
