"""POST /search in-process (FastAPI TestClient) with a fake searcher that follows the index contract:
``search(query, k, mode, vector=...) -> hits`` with ``hit.to_dict()``, raising DiffembedError for bad
input. The server embeds the query through its batcher and searches off the model thread."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient

from diffembed import Embedder
from diffembed.errors import IndexStoreError, InputError
from diffembed.serve.app import create_app
from diffembed.serve.settings import ServeSettings


class Hit:
    def __init__(self, i: int, query: str):
        self.i, self.query = i, query

    def to_dict(self) -> dict:
        return {"doc_id": f"doc{self.i}", "chunk_index": np.int64(self.i), "start": 0, "end": 5,
                "score": np.float32(1.0 / (self.i + 1)), "text": f"hit {self.i} for {self.query}", "source": None}


class FakeSearcher:
    def __init__(self, embedder):
        self.embedder = embedder
        self.calls: list[tuple[str, int, str, str]] = []
        self.vectors: list = []

    def search(self, query: str, k: int, mode: str, *, vector=None):
        self.calls.append((query, k, mode, threading.current_thread().name))
        self.vectors.append(vector)
        if query == "bad input":
            raise InputError("query is malformed")
        if query == "broken index":
            raise IndexStoreError("index folder is unreadable")
        return [Hit(i, query) for i in range(min(k, 3))]


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return Embedder(str(tiny_dir("bert")), show_progress=False)


@pytest.fixture()
def searcher(tiny):
    return FakeSearcher(tiny)


@pytest.fixture()
def client(tiny, searcher):
    with TestClient(create_app(tiny, ServeSettings(model_name="tiny"), searcher=searcher)) as c:
        yield c


def test_search_returns_hits_and_runs_off_the_model_thread(client, searcher, tiny):
    r = client.post("/search", json={"query": "capital of germany", "k": 2, "mode": "hybrid"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["query"] == "capital of germany" and body["mode"] == "hybrid" and body["model"] == "tiny"
    assert [h["doc_id"] for h in body["data"]] == ["doc0", "doc1"]
    assert body["data"][1] == {"doc_id": "doc1", "chunk_index": 1, "start": 0, "end": 5, "score": 0.5,
                               "text": "hit 1 for capital of germany", "source": None}
    (query, k, mode, thread), = searcher.calls
    assert (query, k, mode) == ("capital of germany", 2, "hybrid") and thread != "diffembed-model"
    # The query vector came through the batcher and is the one the index's own Searcher would embed.
    np.testing.assert_allclose(searcher.vectors[0], tiny.encode_query("capital of germany", precision="float32"),
                               atol=1e-5)


def test_bm25_search_embeds_nothing(client, searcher):
    assert client.post("/search", json={"query": "river", "mode": "bm25"}).status_code == 200
    assert searcher.vectors == [None]


def test_a_slow_search_does_not_stall_embedding(tiny):
    """A search (a BM25 or bit-cache rebuild, say) holds no model thread: embeddings are answered meanwhile."""
    started, release = threading.Event(), threading.Event()

    class Slow(FakeSearcher):
        def search(self, query, k, mode, *, vector=None):
            started.set()
            assert release.wait(30)
            return super().search(query, k, mode, vector=vector)

    with TestClient(create_app(tiny, searcher=Slow(tiny))) as c:
        result = {}
        t = threading.Thread(target=lambda: result.update(r=c.post("/search", json={"query": "slow one"})))
        t.start()
        try:
            assert started.wait(30)
            r = c.post("/embed", json={"inputs": "the cat"})  # before the fix: queued behind the search
            assert r.status_code == 200 and not release.is_set()
        finally:
            release.set()
            t.join(30)
        assert result["r"].status_code == 200


def test_search_defaults(client, searcher):
    r = client.post("/search", json={"query": "river"})
    assert r.status_code == 200
    assert searcher.calls[-1][:3] == ("river", 10, "dense")


@pytest.mark.parametrize("body,needle", [
    ({"query": ""}, "query"),
    ({"query": "  "}, "query is an empty string"),
    ({"query": "x", "k": 0}, "k"),
    ({"query": "x", "k": 1001}, "k"),
    ({"query": "x", "k": "3"}, "k"),
    ({"query": "x", "mode": "fuzzy"}, "mode"),
    ({"query": "x", "extra": 1}, "extra"),
    ({"k": 3}, "query"),
    ({"query": "bad input"}, "query is malformed"),
    ({"query": "broken index"}, "index folder is unreadable"),
])
def test_search_client_mistakes_are_400(client, body, needle):
    r = client.post("/search", json=body)
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]["message"]
    assert client.post("/search", json={"query": "still serving"}).status_code == 200


def test_search_without_index_is_404(tiny):
    with TestClient(create_app(tiny)) as c:
        r = c.post("/search", json={"query": "x"})
    assert r.status_code == 404
    assert r.json()["error"] == {"message": "no index loaded (start the server with --index DIR)",
                                 "type": "not_found_error", "code": "no_index"}


def test_searcher_bug_is_a_500_with_a_json_body(tiny):
    class Broken:
        def search(self, query, k, mode, *, vector=None):
            raise RuntimeError("bug")

    with TestClient(create_app(tiny, searcher=Broken()), raise_server_exceptions=False) as c:
        r = c.post("/search", json={"query": "x"})
        assert r.status_code == 500
        assert r.json()["error"]["code"] == "internal_error"
        assert c.post("/embed", json={"inputs": "the cat"}).status_code == 200  # the model thread survived


def test_search_route_with_a_real_index(tmp_path, tiny, tiny_dir):
    """The route answers exactly what the index's own Searcher answers, for every mode."""
    from diffembed.index import add_paths, open_for_adding, open_searcher

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("the city has a river . it was the capital of germany . many people .")
    (corpus / "b.txt").write_text("the king and the queen . a book of war and peace .")
    store, settings, emb = open_for_adding(tmp_path / "ix", model=str(tiny_dir("bert")), embedder=tiny, chunk_tokens=6)
    add_paths(store, settings, emb, [corpus], show_progress=False)
    searcher = open_searcher(tmp_path / "ix", tiny)
    with TestClient(create_app(tiny, searcher=searcher)) as c:
        for mode in ("dense", "bm25", "hybrid"):
            r = c.post("/search", json={"query": "queen and king", "k": 3, "mode": mode})
            assert r.status_code == 200, r.text
            expected = [h.to_dict() for h in searcher.search("queen and king", k=3, mode=mode)]
            assert r.json()["data"] == expected and len(expected) >= 1
            if mode != "dense":  # the lexical side must find the only document with these words
                assert expected[0]["doc_id"] == "corpus/b.txt"
