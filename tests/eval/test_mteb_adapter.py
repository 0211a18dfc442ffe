"""diffembed models under mteb 2.x, on a tiny offline BEIR folder.

The nDCG@10 mteb reports must equal the one computed here directly (Embedder.encode -> cosine ->
pytrec_eval), which shows the adapter hands mteb the right texts, prompts and vectors.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# `import mteb` creates its default result cache folder (~/.cache/mteb) at import time: keep it in /tmp.
os.environ.setdefault("MTEB_CACHE", str(Path(tempfile.gettempdir()) / "diffembed-tests-mteb-cache"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

mteb = pytest.importorskip("mteb")

from diffembed import Embedder  # noqa: E402
from diffembed.errors import InputError  # noqa: E402
from diffembed.eval.datasets import write_contextual_dataset, write_retrieval_dataset  # noqa: E402
from diffembed.eval.mteb_adapter import DiffembedMTEBEncoder, local_retrieval_task  # noqa: E402

pytestmark = pytest.mark.integration

CORPUS = {
    "d1": ("Volcanoes", "Lava and ash erupt from a volcano when magma rises through the crust."),
    "d2": ("Baking", "Bread dough needs yeast, flour, water and time to rise before it is baked in the oven."),
    "d3": ("Football", "The striker scored twice in the second half and the team won the league title."),
    "d4": ("Photosynthesis", "Plants use sunlight, water and carbon dioxide to make sugar and release oxygen."),
    "d5": ("Jazz", "Saxophone players improvise long solos over swing rhythms in a jazz club."),
    "d6": ("Programming", "A Python function returns a value and may raise an exception on invalid input."),
    "d7": ("Astronomy", "The telescope captured images of a distant spiral galaxy full of stars."),
    "d8": ("Medicine", "Antibiotics treat bacterial infections but do not work against viruses."),
    "d9": ("Economics", "Central banks raise interest rates to slow inflation."),
    "d10": ("Gardening", "Tomato plants need regular watering, stakes and plenty of sun in summer."),
    "d11": ("History", "The Roman Empire built roads and aqueducts across Europe."),
    "d12": ("Cycling", "Riders in the Tour de France climb steep mountain passes over three weeks."),
}
QUERIES = {
    "q1": "What happens when a volcano erupts?",
    "q2": "how to bake bread at home",
    "q3": "what do green plants need from the sun and water",  # hard: photosynthesis (d4) ranks first
    "q4": "do antibiotics cure a viral infection",
    "q5": "why does money lose value over time",
    "q6": "long race with hard climbs",
}
QRELS = {"q1": {"d1": 1}, "q2": {"d2": 1}, "q3": {"d10": 1}, "q4": {"d8": 1}, "q5": {"d9": 1}, "q6": {"d12": 1}}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Fail on any outgoing connection; the list is checked too, in case the error was swallowed."""
    attempts: list = []

    def refuse(sock, address, *args, **kwargs):
        attempts.append(address)
        raise OSError(f"network access blocked in tests: {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    yield
    assert not attempts, f"network connections attempted: {attempts}"


@pytest.fixture
def beir(tmp_path):
    corpus = {d: {"title": t, "text": x} for d, (t, x) in CORPUS.items()}
    return write_retrieval_dataset(tmp_path / "toy-topics", corpus, QUERIES, QRELS)


def own_ndcg10(embedder, precision: str = "float32") -> float:
    """nDCG@10 from diffembed directly: cosine of Embedder.encode vectors, scored by pytrec_eval."""
    import pytrec_eval

    doc_ids = list(CORPUS)
    passages = [f"{t} {x}" for t, x in CORPUS.values()]  # title + text, as mteb joins them
    q = embedder.encode_query(list(QUERIES.values()), precision=precision).astype(np.float32)
    d = embedder.encode(passages, precision=precision).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    scores = q @ d.T
    run = {qid: {doc_ids[j]: float(scores[i, j]) for j in range(len(doc_ids))} for i, qid in enumerate(QUERIES)}
    per_query = pytrec_eval.RelevanceEvaluator(QRELS, {"ndcg_cut.10"}).evaluate(run)
    return float(np.mean([v["ndcg_cut_10"] for v in per_query.values()]))


def run_mteb(model, task, cache=None):
    """mteb.evaluate with nothing written unless a cache is given, no CO2 tracking, no progress bars."""
    result = mteb.evaluate(model, task, cache=cache, co2_tracker=False, show_progress_bar=False,
                           overwrite_strategy="always", encode_kwargs={"batch_size": 4, "show_progress_bar": False})
    assert not result.exceptions
    (task_result,) = result.task_results
    return task_result


@pytest.mark.parametrize("precision", ["float32", "int8", "binary"])
def test_mteb_ndcg_matches_diffembed(minilm, beir, precision):
    task = local_retrieval_task(beir)
    task_result = run_mteb(DiffembedMTEBEncoder(minilm, precision=precision), task)
    scores = task_result.scores["test"][0]
    ndcg = scores["ndcg_at_10"]
    assert isinstance(ndcg, float)
    assert task_result.get_score() == pytest.approx(ndcg)  # the task's main score is nDCG@10
    assert 0.5 < ndcg < 1.0, f"MiniLM should find most, not all, of these matches (nDCG@10={ndcg})"
    assert ndcg == pytest.approx(own_ndcg10(minilm, precision), abs=1e-4)


def test_results_go_only_to_the_given_cache(minilm, beir, tmp_path):
    cache_dir = tmp_path / "mteb-results"
    task = local_retrieval_task(beir, name="ToyTopics")
    model = DiffembedMTEBEncoder(minilm, precision="int8")
    run_mteb(model, task, cache=mteb.ResultCache(cache_dir))
    (result_file,) = cache_dir.rglob("ToyTopics.json")
    assert "diffembed__all-MiniLM-L6-v2-packaged" in str(result_file)
    assert "output_dtypes_int8" in str(result_file)  # int8 results are kept apart from float32 ones


def test_model_meta(minilm):
    meta = DiffembedMTEBEncoder(minilm, dimensions=128).mteb_model_meta
    assert meta.name == "diffembed/all-MiniLM-L6-v2-packaged"
    assert meta.embed_dim == 128 and meta.similarity_fn_name.value == "cosine"
    assert meta.experiment_kwargs == {"dimensions": 128}
    assert isinstance(DiffembedMTEBEncoder(minilm), mteb.EncoderProtocol)


def test_model_path_is_loaded(tiny_dir, beir):
    model = DiffembedMTEBEncoder(tiny_dir("bert"), device="cpu", show_progress=False)
    assert model.mteb_model_meta.name == "diffembed/bert"  # a folder is named by its last component
    ndcg = run_mteb(model, local_retrieval_task(beir)).get_score()
    # a random tiny model: its score is whatever its vectors give, and mteb must score those vectors
    assert ndcg == pytest.approx(own_ndcg10(Embedder(tiny_dir("bert"), device="cpu")), abs=1e-4)


class RecordingEmbedder:
    """Stands in for an Embedder with a query prompt, recording what the adapter asks for."""

    prompts = {"query": "query: "}
    dim = 4

    def __init__(self):
        self.calls: list[dict] = []

    def encode(self, texts, **kwargs):
        self.calls.append({"texts": list(texts), **kwargs})
        return np.ones((len(texts), kwargs.get("dimensions") or self.dim), dtype=np.int8)


def test_query_prompt_only_for_queries(minilm, beir):
    from mteb.types import PromptType

    model = DiffembedMTEBEncoder(minilm, precision="binary", dimensions=2)
    model.embedder = stub = RecordingEmbedder()
    meta = local_retrieval_task(beir).metadata
    batches = [{"text": ["a", "b"]}, {"text": ["c"]}]
    for prompt_type in (PromptType.query, PromptType.document):
        out = model.encode(batches, task_metadata=meta, hf_split="test", hf_subset="default", prompt_type=prompt_type)
        assert out.dtype == np.float32 and out.shape == (3, 2)
    assert [c["texts"] for c in stub.calls] == [["a", "b", "c"]] * 2
    assert [c["prompt_name"] for c in stub.calls] == ["query", None]
    assert {c["precision"] for c in stub.calls} == {"binary"}


def test_bad_inputs(minilm, tmp_path):
    with pytest.raises(InputError, match="ubinary"):
        DiffembedMTEBEncoder(minilm, precision="ubinary")
    with pytest.raises(InputError, match="dimensions"):
        DiffembedMTEBEncoder(minilm, dimensions=1000)
    folder = write_contextual_dataset(tmp_path / "ctx", {"doc": {"title": "", "chunks": ["one", "two"]}},
                                      {"q": "one"}, {"q": {"doc_0": 1}})
    with pytest.raises(InputError, match="contextual"):
        local_retrieval_task(folder)
