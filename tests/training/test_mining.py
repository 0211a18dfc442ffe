"""`diffembed mine`: exact rank-range and margin filtering, the embedding cache, the CLI, and the same
negatives as sentence-transformers' `mine_hard_negatives` for the same model and settings."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import assert_clean_error, run_cli
from diffembed.training import mining
from diffembed.training.mining import MineSettings, mine_file, select_candidates


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


class FixedEncoder:
    """Returns given unit vectors, so every score is known; records what it was asked to embed."""

    prompts = {"query": None, "corpus": None}

    def __init__(self, vectors: dict[str, tuple[float, ...]], fail_after: int | None = None):
        self.vectors = vectors
        self.calls: list[tuple[str, list[str]]] = []
        self.fail_after = fail_after

    def __call__(self, texts: list[str], kind: str) -> np.ndarray:
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt  # a kill part-way through
        self.calls.append((kind, list(texts)))
        return np.array([self.vectors[t] for t in texts], dtype=np.float32)

    def identity(self) -> dict:
        return {"fixed": sorted(self.vectors)}

    def embedded(self, kind: str) -> int:
        return sum(len(t) for k, t in self.calls if k == kind)


# --------------------------------------------------------------------------- selection on fixed scores
def test_select_removes_positives_and_margin_before_counting_ranks():
    # hits best first (dyadic scores, exact in float32): id 7 scores above the positive (id 1, 0.75)
    scores = np.array([[0.875, 0.75, 0.625, 0.5, 0.375, 0.25, -3.4e38]], dtype=np.float32)
    ids = np.array([[7, 1, 2, 3, 4, 5, -1]])  # -1: faiss found no more

    def window(**kw):
        return select_candidates(scores, ids, [[1]], np.array([0.75], dtype=np.float32),
                                 MineSettings(**{"count": 1, **kw}))

    none = window(range_min=0, range_max=10, margin_kind="none")
    assert none.windows == [[7, 2, 3, 4, 5]] and none.dropped_positive == 1 and none.dropped_margin == 0
    # absolute: dropped when score + margin > positive; 0.5 + 0.25 is on the line and stays
    absolute = window(range_min=0, range_max=10, margin=0.25, margin_kind="absolute")
    assert absolute.windows == [[3, 4, 5]] and absolute.dropped_margin == 2
    # ranks count among what is left: range_min=1 skips 3, range_max=2 stops before 5
    assert window(range_min=1, range_max=2, margin=0.25, margin_kind="absolute").windows == [[4]]
    # relative: dropped when score > positive - |positive| * margin = 0.375, which stays
    relative = window(range_min=0, range_max=10, margin=0.5, margin_kind="relative")
    assert relative.windows == [[4, 5]] and relative.dropped_margin == 3


def test_relative_margin_below_a_negative_positive_score():
    """sentence-transformers >= 5.2 subtracts |positive| * margin; (1 - margin) * positive would raise
    the line above a negative positive score and keep candidates that score higher than it."""
    scores = np.array([[-0.25, -0.5, -0.8]], dtype=np.float32)
    ids = np.array([[2, 3, 4]])
    sel = select_candidates(scores, ids, [[0]], np.array([-0.5], dtype=np.float32),
                            MineSettings(range_min=0, range_max=5, margin=0.5, margin_kind="relative", count=1))
    assert sel.windows == [[4]]  # line -0.75: -0.25 and -0.5 are dropped; (1 - m) * p = -0.25 would keep -0.5


# --------------------------------------------------------------------------- whole files, fixed vectors
def _unit(s1: float, s2: float) -> tuple[float, float, float]:
    return (s1, s2, math.sqrt(1.0 - s1 * s1 - s2 * s2))


# Scores against q1 = e1 and q2 = e2 are the first two coordinates.
SCORES = {"P1": (0.80, 0.10), "P1b": (0.70, 0.00), "P2": (0.00, 0.60), "A": (0.90, 0.30), "B": (0.68, 0.50),
          "C": (0.60, 0.40), "X": (0.55, 0.20), "D": (0.50, 0.45), "E": (0.40, 0.58), "F": (0.10, 0.05)}
VECTORS = {"q1": (1.0, 0.0, 0.0), "q2": (0.0, 1.0, 0.0), **{t: _unit(*s) for t, s in SCORES.items()}}
ROWS = [{"id": "a", "query": "q1", "positive": "P1", "negatives": ["X", "X"]},
        {"id": "b", "query": "q2", "positive": "P2", "source": "kept"},
        {"id": "c", "query": "q1", "positive": "P1b"}]


@pytest.fixture
def fixed_files(tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", ROWS)
    (tmp_path / "extra.txt").write_text("A\nB\n\nC\nX\nP2\n", encoding="utf-8")
    write_jsonl(tmp_path / "extra.jsonl", [{"_id": "1", "text": "D"}, {"_id": "2", "title": "", "text": "E"},
                                           {"_id": "3", "text": "F"}])
    return pairs, [tmp_path / "extra.txt", tmp_path / "extra.jsonl"]


def test_mine_file_exact(tmp_path, fixed_files):
    pairs, extra = fixed_files
    out = tmp_path / "out.jsonl"
    settings = MineSettings(range_min=1, range_max=5, margin=0.05, margin_kind="absolute", count=2)
    result = mine_file(pairs, out, FixedEncoder(VECTORS), settings, corpus_files=extra)
    # q1: 2 rows -> search depth 5 + 2 = 7: A P1 P1b B C X D. Positives P1, P1b go; the line is the
    # lower positive 0.70, so A (0.90) and B (0.68 + 0.05 > 0.70) go; left C X D; ranks [1, 5): X D.
    # q2: P2 E B D C A X; P2 goes, E (0.58 + 0.05 > 0.60) goes; left B D C A X; ranks [1, 5): D C A X.
    assert read_jsonl(out) == [
        {"id": "a", "query": "q1", "positive": "P1", "negatives": ["X", "D"]},  # X already there: D only
        {"id": "b", "query": "q2", "positive": "P2", "source": "kept", "negatives": ["D", "C"]},
        {"id": "c", "query": "q1", "positive": "P1b", "negatives": ["X", "D"]},
    ]
    assert (result.rows, result.queries, result.corpus) == (3, 2, 10)
    assert (result.full, result.fewer, result.none, result.mined, result.dropped_margin) == (2, 1, 0, 5, 3)

    no_margin = mine_file(pairs, out, FixedEncoder(VECTORS), MineSettings(range_min=0, range_max=5, margin_kind="none",
                                                                           count=2), corpus_files=extra)
    assert [r["negatives"] for r in read_jsonl(out)] == [["X", "A", "B"], ["E", "B"], ["A", "B"]]
    assert no_margin.dropped_margin == 0 and no_margin.full == 3


def test_rows_with_too_few_candidates_are_kept_and_counted(tmp_path, fixed_files):
    pairs, _ = fixed_files  # corpus = the three positives only
    out = tmp_path / "out.jsonl"
    result = mine_file(pairs, out, FixedEncoder(VECTORS),
                       MineSettings(range_min=0, range_max=4, margin_kind="none", count=2))
    assert [r["negatives"] for r in read_jsonl(out)] == [["X", "P2"], ["P1", "P1b"], ["P2"]]
    assert (result.full, result.fewer, result.none, result.mined) == (1, 2, 0, 4)
    # absolute 0.65: q1 keeps P2 (0.00 + 0.65 <= 0.70); q2 loses P1 (0.10) and P1b (0.00) to 0.60
    tight = mine_file(pairs, out, FixedEncoder(VECTORS),
                      MineSettings(range_min=0, range_max=4, margin=0.65, margin_kind="absolute", count=2))
    assert read_jsonl(out)[1] == {**ROWS[1], "negatives": []}
    assert [r["negatives"] for r in read_jsonl(out)] == [["X", "P2"], [], ["P2"]]
    assert (tight.full, tight.fewer, tight.none, tight.dropped_margin) == (0, 3, 1, 2)


def test_second_run_reads_the_cache_and_a_killed_run_resumes(tmp_path, fixed_files, monkeypatch):
    pairs, extra = fixed_files
    monkeypatch.setattr(mining, "SHARD_TEXTS", 3)  # 10 corpus texts -> 4 shards
    settings = MineSettings(range_min=1, range_max=5, margin=0.05, margin_kind="absolute", count=2)
    out = tmp_path / "out.jsonl"

    killed = FixedEncoder(VECTORS, fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        mine_file(pairs, out, killed, settings, corpus_files=extra)
    assert killed.embedded("corpus") == 6 and not out.exists()

    resumed = FixedEncoder(VECTORS)
    first = mine_file(pairs, out, resumed, settings, corpus_files=extra)
    assert resumed.embedded("corpus") == 4 and resumed.embedded("query") == 2  # only the two missing shards
    assert first.corpus_embedding["cached"] == 6
    expected = out.read_text()

    again = FixedEncoder(VECTORS)
    second = mine_file(pairs, out, again, settings, corpus_files=extra)
    assert again.calls == [] and second.corpus_embedding == {**first.corpus_embedding, "embedded": 0, "cached": 10}
    assert out.read_text() == expected
    assert Path(second.cache_dir) == tmp_path / ".out.jsonl.cache"

    # a damaged shard is embedded again; another corpus is another cache entry
    shard = next(Path(first.corpus_embedding["folder"]).glob("shard-00001.npy"))
    shard.write_bytes(shard.read_bytes()[:40])
    repaired = FixedEncoder(VECTORS)
    mine_file(pairs, out, repaired, settings, corpus_files=extra)
    assert repaired.calls == [("corpus", ["X", "P2", "D"])]  # corpus: A B C | X P2 D | E F P1 | P1b
    fewer_texts = FixedEncoder(VECTORS)
    mine_file(pairs, out, fewer_texts, settings, corpus_files=extra[:1])
    assert fewer_texts.embedded("corpus") == 7


# --------------------------------------------------------------------------- the CLI with a real model
WORD_ROWS = [
    {"query": "the capital of france", "positive": "paris is the capital of france and a large city"},
    {"query": "the capital of germany", "positive": "berlin is the capital of germany"},
    {"query": "a cat sat on the mat", "positive": "the cat sat on the red mat in the house"},
    {"query": "a song of fire and water", "positive": "the old song is a story of fire and water"},
    {"query": "the king and the queen", "positive": "the old king and the new queen had a war"},
    {"query": "one two three", "positive": "one two three four five six seven eight nine ten"},
    {"query": "the dog in the tree", "positive": "a green tree and a small dog by the river"},
]


@pytest.fixture
def counted_encode(monkeypatch):
    """Count texts through the runtime's Embedder.encode, as the CLI calls it."""
    from diffembed.inference.embedder import Embedder

    seen: list[int] = []
    real = Embedder.encode

    def spy(self, texts, *args, **kwargs):
        seen.append(len(texts))
        return real(self, texts, *args, **kwargs)

    monkeypatch.setattr(Embedder, "encode", spy)
    return seen


def test_cli_mines_caches_and_feeds_training(tmp_path, tiny_dir, counted_encode, monkeypatch, capsys):
    from diffembed.training.pair_batches import read_pairs

    model = tmp_path / "model"
    shutil.copytree(tiny_dir("bert"), model)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", WORD_ROWS)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the river is old\nred green blue\nthe war of the year\n", encoding="utf-8")
    args = ["mine", pairs, "-o", tmp_path / "mined.jsonl", "--model", model, "--corpus", corpus,
            "--range-min", "0", "--range-max", "6", "--count", "2", "--margin-kind", "none", "--json", "-q"]

    code, out, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["rows"] == 7 and summary["corpus"] == 10 and summary["full"] == 7
    assert summary["corpus_embedding"]["embedded"] == 10 and sum(counted_encode) == 10 + 7
    assert "7 with 2 negatives" in err
    rows = read_jsonl(tmp_path / "mined.jsonl")
    assert [r["query"] for r in rows] == [r["query"] for r in WORD_ROWS]
    for r in rows:
        assert len(r["negatives"]) == 2 and r["positive"] not in r["negatives"]
    assert len(read_pairs([tmp_path / "mined.jsonl"], negatives=2)) == 7  # what the triplet stage reads
    first = (tmp_path / "mined.jsonl").read_text()

    counted_encode.clear()
    code, out, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    assert counted_encode == [] and json.loads(out)["corpus_embedding"]["cached"] == 10
    assert (tmp_path / "mined.jsonl").read_text() == first

    # a rewritten model (new weights file mtime) is another model: everything is embedded again
    weights = next(model.glob("*.safetensors"))
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    code, out, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    assert sum(counted_encode) == 17 and json.loads(out)["corpus_embedding"]["embedded"] == 10


@pytest.mark.parametrize("extra, needles", [
    (["--range-min", "5", "--range-max", "5"], ["range_max (5) must be larger than range_min (5)"]),
    (["--range-min", "-1"], ["range_min must be 0 or more"]),
    (["--count", "20", "--range-min", "0", "--range-max", "10"], ["count 20 does not fit"]),
    (["--margin-kind", "percent"], ["unknown margin kind 'percent'"]),
    (["--margin", "-0.1"], ["margin must be a finite number >= 0"]),
    (["--corpus", "nowhere.txt"], ["missing file nowhere.txt"]),
])
def test_cli_bad_options_give_one_error_line(tmp_path, extra, needles, monkeypatch, capsys):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", WORD_ROWS)
    code, _, err = run_cli(["mine", pairs, "-o", tmp_path / "o.jsonl", *extra], monkeypatch, capsys)
    assert_clean_error(code, err, *needles)
    assert not (tmp_path / "o.jsonl").exists()


def test_cli_bad_pairs_file_gives_one_error_line(tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(["mine", tmp_path / "none.jsonl", "-o", tmp_path / "o.jsonl"], monkeypatch, capsys)
    assert_clean_error(code, err, "missing file", "none.jsonl")
    bad = write_jsonl(tmp_path / "bad.jsonl", [WORD_ROWS[0], {"query": "q", "positive": "p", "negatives": "n"}])
    code, _, err = run_cli(["mine", bad, "-o", tmp_path / "o.jsonl"], monkeypatch, capsys)
    assert_clean_error(code, err, "bad.jsonl:2", "'negatives' must be a list")


def test_cli_without_faiss_names_the_extra(tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "faiss", None)  # import fails as if not installed
    pairs = write_jsonl(tmp_path / "pairs.jsonl", WORD_ROWS)
    code, _, err = run_cli(["mine", pairs, "-o", tmp_path / "o.jsonl"], monkeypatch, capsys)
    assert_clean_error(code, err, "diffembed mine needs faiss-cpu", "pip install 'diffembed[train]'")


# --------------------------------------------------------------------------- against sentence-transformers
@pytest.mark.integration
def test_same_negatives_as_sentence_transformers(tmp_path, minilm):
    """Same model (the packaged MiniLM), same settings, real text: the same negatives per query, in
    the same order, as `mine_hard_negatives(use_faiss=True, sampling_strategy="top")`."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives
    from stdlib_pairs import stdlib_pairs

    from diffembed.training.mining import RuntimeEncoder

    every = stdlib_pairs()
    rows = every[::20][:30]
    extra = [r["positive"] for r in every[7::20][:15]]
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"query": r["query"], "positive": r["positive"]} for r in rows])
    (tmp_path / "extra.txt").write_text("\n".join(extra) + "\n", encoding="utf-8")
    st = SentenceTransformer(str(minilm.loaded.spec.path), device="cpu")
    dataset = Dataset.from_list([{"query": r["query"], "positive": r["positive"]} for r in rows])
    encoder = RuntimeEncoder(minilm)
    for kind, margin in [("relative", 0.05), ("absolute", 0.1)]:
        settings = MineSettings(range_min=2, range_max=12, margin=margin, margin_kind=kind, count=3)
        out = tmp_path / f"{kind}.jsonl"
        result = mine_file(pairs, out, encoder, settings, corpus_files=[tmp_path / "extra.txt"], progress=False)
        theirs: dict[str, list[str]] = {}
        for x in mine_hard_negatives(dataset, st, corpus=extra, range_min=2, range_max=12, num_negatives=3,
                                     use_faiss=True, verbose=False, output_format="triplet",
                                     cache_folder=str(tmp_path / "st-cache"),
                                     **{f"{kind}_margin": margin}):
            theirs.setdefault(x["query"], []).append(x["negative"])
        ours = {r["query"]: r["negatives"] for r in read_jsonl(out)}
        assert ours == {q: theirs.get(q, []) for q in ours}
        assert result.dropped_margin > 0  # the margin did change which texts were chosen
    assert result.fewer > 0  # and a wide absolute margin left some rows short, on both sides alike
