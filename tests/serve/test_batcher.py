"""The cross-request batcher: merging, grouping by prompt, the token budget, order, errors.

A fake embedder records every model call (and the thread it ran on); a gate job holds the model
thread so the test can queue several requests before any of them runs.
"""

from __future__ import annotations

import threading
from concurrent.futures import CancelledError

import pytest
import torch

from diffembed import Embedder
from diffembed.errors import InputError
from diffembed.serve.batcher import Batcher, BatcherClosed, BatchStats


def vec(text: str) -> list[float]:
    return [float(len(text)), float(ord(text[0])), float(sum(map(ord, text)) % 97), 1.0]


class FakeEmbedder:
    def __init__(self):
        self.calls: list[tuple] = []

    def pooled(self, items, *, prompt=None, batch_tokens=None, truncate=True, show_progress=None):
        self.calls.append(("texts", prompt, list(items), threading.current_thread().name))
        for i, t in enumerate(items):
            if "boom" in t:
                raise InputError(f"input[{i}] exploded")
        return torch.tensor([vec((prompt or "") + t) for t in items])

    def pooled_contextual(self, documents, *, prompt=None, batch_tokens=None, overlap=None, show_progress=None):
        self.calls.append(("documents", prompt, [list(d) for d in documents], threading.current_thread().name))
        return [torch.tensor([vec(c) for c in doc]) for doc in documents]


class Gate:
    """Holds the model thread until released, so later submissions pile up in the queue."""

    def __init__(self, batcher: Batcher):
        self.started, self.release = threading.Event(), threading.Event()
        self.future = batcher.call(self._run)
        assert self.started.wait(10)

    def _run(self):
        self.started.set()
        assert self.release.wait(10)
        return "gate"

    def open(self):
        self.release.set()
        assert self.future.result(10) == "gate"


@pytest.fixture()
def fake():
    return FakeEmbedder()


@pytest.fixture()
def stats():
    return []


@pytest.fixture()
def batcher(fake, stats):
    b = Batcher(fake, batch_tokens=1000, wait_s=0.001, on_batch=stats.append)
    yield b
    b.close()


def rows(future) -> list[list[float]]:
    return future.result(10).tolist()


def test_one_request_results_in_order(batcher, fake):
    texts = ["delta", "a", "charlie", "bb"]
    assert rows(batcher.embed(texts, [3, 3, 3, 3])) == [vec(t) for t in texts]
    assert fake.calls[0][3] == "diffembed-model"


def test_queued_requests_share_one_model_call(batcher, fake, stats):
    gate = Gate(batcher)
    jobs = {name: batcher.embed(texts, [4] * len(texts)) for name, texts in
            {"a": ["one", "two"], "b": ["three"], "c": ["four", "five", "six"]}.items()}
    gate.open()
    assert rows(jobs["a"]) == [vec("one"), vec("two")]
    assert rows(jobs["b"]) == [vec("three")]
    assert rows(jobs["c"]) == [vec("four"), vec("five"), vec("six")]
    assert [c[:3] for c in fake.calls] == [("texts", None, ["one", "two", "three", "four", "five", "six"])]
    assert stats == [BatchStats(kind="texts", requests=3, items=6, padded_tokens=24, queue_waits=stats[0].queue_waits)]
    assert len(stats[0].queue_waits) == 3 and all(w >= 0 for w in stats[0].queue_waits)


def test_different_prompts_and_kinds_are_never_mixed(batcher, fake):
    gate = Gate(batcher)
    a = batcher.embed(["alpha"], [2])
    q = batcher.embed(["beta"], [2], prompt="query: ")
    d = batcher.embed_documents([["c1", "c2"], ["c3"]], [5, 3])
    b = batcher.embed(["gamma"], [2])
    gate.open()
    assert rows(a) == [vec("alpha")] and rows(b) == [vec("gamma")]
    assert rows(q) == [vec("query: beta")]
    assert [t.tolist() for t in d.result(10)] == [[vec("c1"), vec("c2")], [vec("c3")]]
    assert [c[:3] for c in fake.calls] == [
        ("texts", None, ["alpha", "gamma"]),  # the two plain requests merged across the others
        ("texts", "query: ", ["beta"]),
        ("documents", None, [["c1", "c2"], ["c3"]]),
    ]


def test_token_budget_closes_a_batch(fake):
    batcher = Batcher(fake, batch_tokens=100, wait_s=0.001)
    try:
        gate = Gate(batcher)
        a = batcher.embed(["a1", "a2"], [20, 20])  # 2 x 20 = 40
        b = batcher.embed(["b1"], [30])  # 3 x 30 = 90 <= 100: joins
        c = batcher.embed(["c1"], [30])  # 4 x 30 = 120: next batch
        big = batcher.embed(["x"] * 5, [50] * 5)  # alone over budget: runs alone, never split
        gate.open()
        for f in (a, b, c, big):
            f.result(10)
        assert [c[2] for c in fake.calls] == [["a1", "a2", "b1"], ["c1"], ["x"] * 5]
    finally:
        batcher.close()


def test_a_failing_request_fails_alone(batcher, fake, stats):
    gate = Gate(batcher)
    good1 = batcher.embed(["fine"], [2])
    bad = batcher.embed(["ok", "boom"], [2, 2])
    good2 = batcher.embed(["also fine"], [2])
    gate.open()
    assert rows(good1) == [vec("fine")] and rows(good2) == [vec("also fine")]
    with pytest.raises(InputError, match=r"input\[1\] exploded"):  # its own index, not the merged one
        bad.result(10)
    assert [c[2] for c in fake.calls] == [["fine", "ok", "boom", "also fine"], ["fine"], ["ok", "boom"], ["also fine"]]
    assert rows(batcher.embed(["after"], [2])) == [vec("after")]  # the thread is still serving
    assert [s.requests for s in stats] == [1, 1, 1]


def test_call_jobs_run_alone_and_propagate_errors(batcher):
    def fail():
        raise ValueError("search broke")

    assert batcher.call(lambda: threading.current_thread().name).result(10) == "diffembed-model"
    with pytest.raises(ValueError, match="search broke"):
        batcher.call(fail).result(10)
    assert rows(batcher.embed(["next"], [1])) == [vec("next")]


def test_cancelled_requests_are_skipped(batcher, fake):
    gate = Gate(batcher)
    dropped = batcher.embed(["abandoned"], [2])
    kept = batcher.embed(["kept"], [2])
    assert dropped.cancel()
    gate.open()
    assert rows(kept) == [vec("kept")]
    with pytest.raises(CancelledError):
        dropped.result(1)
    assert [c[2] for c in fake.calls] == [["kept"]]


def test_close_finishes_queued_work_then_refuses(fake):
    batcher = Batcher(fake, batch_tokens=1000, wait_s=0.001)
    gate = Gate(batcher)
    pending = batcher.embed(["queued"], [2])
    gate.release.set()
    batcher.close()
    assert rows(pending) == [vec("queued")]
    with pytest.raises(BatcherClosed):
        batcher.embed(["late"], [2])


def test_start_reopens_after_close(fake):
    """ASGI servers and test clients may run lifespan startup/shutdown more than once per app."""
    batcher = Batcher(fake, batch_tokens=1000, wait_s=0.001)
    try:
        for round_ in range(3):
            batcher.start()
            assert rows(batcher.embed([f"round {round_}"], [2])) == [vec(f"round {round_}")]
            batcher.close()
        assert {c[3] for c in fake.calls} == {"diffembed-model"}
        assert [t.name for t in threading.enumerate()].count("diffembed-model") == 0
    finally:
        batcher.close()


def test_submissions_are_checked(batcher):
    with pytest.raises(ValueError):
        batcher.embed(["a", "b"], [1])
    with pytest.raises(ValueError):
        batcher.embed([], [])


def test_merged_real_model_call_equals_separate_calls(tiny_dir):
    """With a real (tiny) model, merging requests of different lengths changes padding only."""
    emb = Embedder(str(tiny_dir("bert")), show_progress=False)
    stats: list[BatchStats] = []
    batcher = Batcher(emb, batch_tokens=4096, wait_s=0.001, on_batch=stats.append)
    try:
        gate = Gate(batcher)
        requests = [["the cat sat on the mat"], ["a dog", "the old king and the queen had many books"], ["red"]]
        futures = [batcher.embed(r, [len(t.split()) + 2 for t in r]) for r in requests]
        gate.open()
        for r, f in zip(requests, futures):
            torch.testing.assert_close(f.result(10), emb.pooled(r, show_progress=False), atol=1e-5, rtol=1e-5)
        assert [(s.requests, s.items) for s in stats] == [(3, 4)]
    finally:
        batcher.close()


def test_a_bug_after_the_model_call_fails_the_requests_not_the_thread(fake, monkeypatch):
    batcher = Batcher(fake, batch_tokens=1000, wait_s=0.001)
    try:
        real = fake.pooled
        monkeypatch.setattr(fake, "pooled", lambda items, **kw: None)  # not a tensor: splitting it fails
        with pytest.raises(TypeError):
            batcher.embed(["x"], [1]).result(10)
        monkeypatch.setattr(fake, "pooled", real)
        assert rows(batcher.embed(["y"], [1])) == [vec("y")]
    finally:
        batcher.close()
