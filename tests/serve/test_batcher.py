"""The cross-request batcher: merging, grouping, the token budget, order, errors, queue waits.

Jobs arrive as token ids. A fake embedder (ids are character codes here) records every model call
and the thread it ran on; a gate job holds the model thread so the test can queue several requests
before any of them runs.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError

import pytest
import torch

from diffembed import Embedder
from diffembed.errors import InputError
from diffembed.serve.batcher import Batcher, BatcherClosed, BatchStats

GATE = [-1]  # the gate's token ids


def tok(text: str) -> list[int]:
    return [ord(c) for c in text]


def untok(ids) -> str:
    return "".join(chr(i) for i in ids)


def vec(text: str, skip: int = 0) -> list[float]:
    return [float(len(text)), float(ord(text[0])), float(sum(map(ord, text)) % 97), float(skip)]


class FakeEmbedder:
    dim = 4

    def __init__(self):
        self.calls: list[tuple] = []

    def pooled_token_ids(self, seqs, *, skip=0, batch_tokens=None, show_progress=None):
        texts = [untok(s) for s in seqs]
        self.calls.append(("texts", skip, texts, threading.current_thread().name))
        for i, t in enumerate(texts):
            if "boom" in t:
                raise InputError(f"input[{i}] exploded")
        return torch.tensor([vec(t, skip) for t in texts])

    def pooled_chunk_ids(self, documents, *, batch_tokens=None, overlap=None, show_progress=None):
        docs = [[untok(c) for c in d] for d in documents]
        self.calls.append(("documents", None, docs, threading.current_thread().name))
        return [torch.tensor([vec(c) for c in doc]) for doc in docs]


class Gated:
    """An embedder whose gate call (ids ``GATE``) holds the model thread until ``open``."""

    def __init__(self, inner):
        self.inner = inner
        self.started, self.release = threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def pooled_token_ids(self, seqs, **kw):
        if list(seqs[0]) == GATE:
            self.started.set()
            assert self.release.wait(10)
            return torch.zeros(len(seqs), self.inner.dim)
        return self.inner.pooled_token_ids(seqs, **kw)


class Gate:
    def __init__(self, batcher: Batcher):
        self.embedder: Gated = batcher.embedder
        self.future = batcher.embed_ids([GATE])
        assert self.embedder.started.wait(10)

    def open(self):
        self.embedder.release.set()
        self.future.result(10)


@pytest.fixture()
def fake():
    return FakeEmbedder()


@pytest.fixture()
def stats():
    return []


@pytest.fixture()
def batcher(fake, stats):
    b = Batcher(Gated(fake), batch_tokens=1000, wait_s=0.001, on_batch=stats.append)
    yield b
    b.close()


def rows(future) -> list[list[float]]:
    return future.result(10).tolist()


def embed(batcher: Batcher, texts: list[str], skip: int = 0):
    return batcher.embed_ids([tok(t) for t in texts], skip)


def calls(fake) -> list[tuple]:
    return [c[:3] for c in fake.calls]


def test_one_request_results_in_order(batcher, fake):
    texts = ["delta", "a", "charlie", "bb"]
    assert rows(embed(batcher, texts)) == [vec(t) for t in texts]
    assert fake.calls[0][3] == "diffembed-model"


def test_queued_requests_share_one_model_call(batcher, fake, stats):
    gate = Gate(batcher)
    t0 = time.monotonic()
    jobs = {name: embed(batcher, texts) for name, texts in
            {"a": ["one", "two"], "b": ["three"], "c": ["four", "five", "six"]}.items()}
    held = 0.05
    time.sleep(held)  # the queued jobs wait at least this long for the gated model thread
    gate.open()
    assert rows(jobs["a"]) == [vec("one"), vec("two")]
    assert rows(jobs["b"]) == [vec("three")]
    assert rows(jobs["c"]) == [vec("four"), vec("five"), vec("six")]
    elapsed = time.monotonic() - t0
    assert calls(fake) == [("texts", 0, ["one", "two", "three", "four", "five", "six"])]
    # The gate's own round is reported first; lengths are the id counts (5 for "three").
    assert stats[1] == BatchStats(kind="texts", requests=3, items=6, padded_tokens=30, queue_waits=stats[1].queue_waits)
    # Each wait runs from the job's own arrival to the start of the shared call: within the window
    # the test held the thread for, and never longer for a job that arrived later.
    waits = stats[1].queue_waits
    assert len(waits) == 3 and all(held <= w <= elapsed for w in waits), waits
    assert waits[0] >= waits[1] >= waits[2]


def test_different_skips_and_kinds_are_never_mixed(batcher, fake):
    gate = Gate(batcher)
    a = embed(batcher, ["alpha"])
    q = embed(batcher, ["query: beta"], skip=2)  # a prompt that pooling leaves out
    d = batcher.embed_documents([[tok("c1"), tok("c2")], [tok("c3")]], [5, 3])
    b = embed(batcher, ["gamma"])
    gate.open()
    assert rows(a) == [vec("alpha")] and rows(b) == [vec("gamma")]
    assert rows(q) == [vec("query: beta", 2)]
    assert [t.tolist() for t in d.result(10)] == [[vec("c1"), vec("c2")], [vec("c3")]]
    assert calls(fake) == [
        ("texts", 0, ["alpha", "gamma"]),  # the two plain requests merged across the others
        ("texts", 2, ["query: beta"]),
        ("documents", None, [["c1", "c2"], ["c3"]]),
    ]


def test_token_budget_closes_a_batch(fake):
    batcher = Batcher(Gated(fake), batch_tokens=100, wait_s=0.001)
    try:
        gate = Gate(batcher)
        a = batcher.embed_documents([[tok("a1")], [tok("a2")]], [20, 20])  # 2 x 20 = 40
        b = batcher.embed_documents([[tok("b1")]], [30])  # 3 x 30 = 90 <= 100: joins
        c = batcher.embed_documents([[tok("c1")]], [30])  # 4 x 30 = 120: next batch
        big = embed(batcher, ["x" * 50] * 5)  # 5 x 50: alone over budget, runs alone, never split
        gate.open()
        for f in (a, b, c, big):
            f.result(10)
        assert [c[2] for c in fake.calls] == [[["a1"], ["a2"], ["b1"]], [["c1"]], ["x" * 50] * 5]
    finally:
        batcher.close()


def test_a_failing_request_fails_alone(batcher, fake, stats):
    gate = Gate(batcher)
    good1 = embed(batcher, ["fine"])
    bad = embed(batcher, ["ok", "boom"])
    good2 = embed(batcher, ["also fine"])
    gate.open()
    assert rows(good1) == [vec("fine")] and rows(good2) == [vec("also fine")]
    with pytest.raises(InputError, match=r"input\[1\] exploded"):  # its own index, not the merged one
        bad.result(10)
    assert [c[2] for c in fake.calls] == [["fine", "ok", "boom", "also fine"], ["fine"], ["ok", "boom"], ["also fine"]]
    assert rows(embed(batcher, ["after"])) == [vec("after")]  # the thread is still serving
    assert [s.requests for s in stats[1:]] == [1, 1, 1]


def test_cancelled_requests_are_skipped(batcher, fake):
    gate = Gate(batcher)
    dropped = embed(batcher, ["abandoned"])
    kept = embed(batcher, ["kept"])
    assert dropped.cancel()
    gate.open()
    assert rows(kept) == [vec("kept")]
    with pytest.raises(CancelledError):
        dropped.result(1)
    assert [c[2] for c in fake.calls] == [["kept"]]


def test_close_finishes_queued_work_then_refuses(fake):
    batcher = Batcher(Gated(fake), batch_tokens=1000, wait_s=0.001)
    gate = Gate(batcher)
    pending = embed(batcher, ["queued"])
    gate.embedder.release.set()
    batcher.close()
    assert rows(pending) == [vec("queued")]
    with pytest.raises(BatcherClosed):
        embed(batcher, ["late"])


def test_start_reopens_after_close(fake):
    """ASGI servers and test clients may run lifespan startup/shutdown more than once per app."""
    batcher = Batcher(fake, batch_tokens=1000, wait_s=0.001)
    try:
        for round_ in range(3):
            batcher.start()
            assert rows(embed(batcher, [f"round {round_}"])) == [vec(f"round {round_}")]
            batcher.close()
        assert {c[3] for c in fake.calls} == {"diffembed-model"}
        assert [t.name for t in threading.enumerate()].count("diffembed-model") == 0
    finally:
        batcher.close()


def test_submissions_are_checked(batcher):
    with pytest.raises(ValueError):
        batcher.embed_documents([[tok("a")], [tok("b")]], [1])
    with pytest.raises(ValueError):
        batcher.embed_ids([])


def test_merged_real_model_call_equals_separate_calls(tiny_dir):
    """With a real (tiny) model, merging requests of different lengths (and different prompts that
    pool the same tokens) changes padding only; the model thread gets ids and never tokenizes."""
    emb = Embedder(str(tiny_dir("bert")), show_progress=False)
    stats: list[BatchStats] = []
    batcher = Batcher(Gated(emb), batch_tokens=4096, wait_s=0.001, on_batch=stats.append)
    tokenized = []
    real_call = type(emb.tokenizer).__call__
    try:
        gate = Gate(batcher)
        requests = [["the cat sat on the mat"], ["a dog", "the old king and the queen had many books"], ["red"]]
        prompts = [None, "the city of ", None]
        ids = [[emb.template.wrap(emb.tokenizer((p or "") + t, add_special_tokens=False)["input_ids"]) for t in r]
               for r, p in zip(requests, prompts)]
        type(emb.tokenizer).__call__ = lambda *a, **k: tokenized.append(a) or real_call(*a, **k)
        futures = [batcher.embed_ids(x) for x in ids]
        gate.open()
        results = [f.result(10) for f in futures]
        type(emb.tokenizer).__call__ = real_call
        assert tokenized == []
        assert [(s.requests, s.items) for s in stats[1:]] == [(3, 4)]
        for r, p, got in zip(requests, prompts, results):
            torch.testing.assert_close(got, emb.pooled(r, prompt=p, show_progress=False), atol=1e-5, rtol=1e-5)
    finally:
        type(emb.tokenizer).__call__ = real_call
        batcher.close()


def test_a_bug_after_the_model_call_fails_the_requests_not_the_thread(fake, monkeypatch):
    batcher = Batcher(fake, batch_tokens=1000, wait_s=0.001)
    try:
        real = fake.pooled_token_ids
        monkeypatch.setattr(fake, "pooled_token_ids", lambda items, **kw: None)  # not a tensor: splitting fails
        with pytest.raises(TypeError):
            embed(batcher, ["x"]).result(10)
        monkeypatch.setattr(fake, "pooled_token_ids", real)
        assert rows(embed(batcher, ["y"])) == [vec("y")]
    finally:
        batcher.close()
