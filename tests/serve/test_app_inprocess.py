"""App behaviour that needs a particular model or setting, in-process (FastAPI TestClient) with tiny
random models: prompts, truncation below the model window, pplx int8-default models, model errors."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
from fastapi.testclient import TestClient

from diffembed import Embedder
from diffembed.errors import InputError
from diffembed.serve.app import create_app
from diffembed.serve.settings import ServeSettings

TEXTS = ["the cat sat on the mat", "the old king and the queen", "red green blue"]
TEN = "one two three four five six seven eight nine ten"


@pytest.fixture(scope="module")
def prompted(tiny_dir, tmp_path_factory):
    """The tiny BERT with a 'query' prompt (three tokens, all in its vocabulary)."""
    folder = tmp_path_factory.mktemp("prompted") / "bert"
    shutil.copytree(tiny_dir("bert"), folder)
    (folder / "diffembed.json").write_text(json.dumps({"prompts": {"query": "the city of "}}))
    return Embedder(str(folder), show_progress=False)


def vectors(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.array([d["embedding"] for d in response.json()["data"]], dtype=np.float32)


def test_the_default_prompt_applies_when_a_request_names_none(tiny_dir, tmp_path):
    """A model whose config names a default prompt: the server embeds as Embedder.encode does."""
    folder = tmp_path / "bert"
    shutil.copytree(tiny_dir("bert"), folder)
    (folder / "config_sentence_transformers.json").write_text(json.dumps(
        {"prompts": {"query": "the city of "}, "default_prompt_name": "query", "similarity_fn_name": "cosine"}))
    emb = Embedder(str(folder), show_progress=False)
    with TestClient(create_app(emb)) as c:
        got = vectors(c.post("/v1/embeddings", json={"input": TEXTS}))
        tei = np.array(c.post("/embed", json={"inputs": TEXTS}).json(), dtype=np.float32)
    np.testing.assert_allclose(got, emb.encode(TEXTS, precision="float32"), atol=1e-5)
    np.testing.assert_allclose(tei, got, atol=1e-5)
    assert not np.allclose(got, emb.encode(TEXTS, prompt="", precision="float32"), atol=1e-3)


def test_prompt_name_uses_the_model_prompt(prompted):
    with TestClient(create_app(prompted)) as c:
        got = vectors(c.post("/v1/embeddings", json={"input": TEXTS, "prompt_name": "query"}))
        plain = vectors(c.post("/v1/embeddings", json={"input": TEXTS}))
        tei = np.array(c.post("/embed", json={"inputs": TEXTS, "prompt_name": "query"}).json(), dtype=np.float32)
        bad = c.post("/embed", json={"inputs": TEXTS, "prompt_name": "passage"})
    np.testing.assert_allclose(got, prompted.encode(TEXTS, prompt_name="query", precision="float32"), atol=1e-5)
    np.testing.assert_allclose(tei, got, atol=1e-5)
    np.testing.assert_allclose(plain, prompted.encode(TEXTS, precision="float32"), atol=1e-5)
    assert not np.allclose(got, plain, atol=1e-3)
    assert bad.status_code == 400 and "known: query" in bad.json()["error"]["message"]


def test_a_prompt_left_out_of_pooling_stays_out(prompted, monkeypatch):
    """include_prompt=False: the request thread tokenizes prompt + text, and the prompt's token count
    travels with the ids so the model thread pools the text tokens only, as Embedder.encode does."""
    monkeypatch.setattr(prompted.loaded, "spec", dataclasses.replace(prompted.loaded.spec, include_prompt=False))
    assert prompted.prompt_skip(prompted.prompts["query"]) == 4  # [CLS] + 3, as sentence-transformers counts
    with TestClient(create_app(prompted)) as c:
        got = vectors(c.post("/v1/embeddings", json={"input": TEXTS, "prompt_name": "query"}))
    np.testing.assert_allclose(got, prompted.encode(TEXTS, prompt_name="query", precision="float32"), atol=1e-5)
    monkeypatch.undo()
    assert not np.allclose(got, prompted.encode(TEXTS, prompt_name="query", precision="float32"), atol=1e-3)


def test_truncation_below_the_window_cuts_at_the_limit(prompted):
    with TestClient(create_app(prompted, ServeSettings(max_tokens_per_input=5))) as c:
        refused = c.post("/v1/embeddings", json={"input": ["fine", TEN]})
        cut = c.post("/embed", json={"inputs": ["fine", TEN], "truncate": True})
        cut_prompted = c.post("/embed", json={"inputs": TEN, "truncate": True, "prompt_name": "query"})
        usage = c.post("/v1/embeddings", json={"input": "one two three"}).json()["usage"]
    assert refused.status_code == 400
    assert refused.json()["error"]["message"] == "input[1] has 10 tokens; this server takes at most 5 tokens per input"
    np.testing.assert_allclose(np.array(cut.json(), dtype=np.float32),
                               prompted.encode(["fine", "one two three four five"], precision="float32"), atol=1e-5)
    # The prompt's three tokens count against the limit too: two words of the text remain.
    np.testing.assert_allclose(np.array(cut_prompted.json(), dtype=np.float32),
                               prompted.encode(["one two"], prompt_name="query", precision="float32"), atol=1e-5)
    assert usage == {"prompt_tokens": 3, "total_tokens": 3}


def test_int8_default_models_still_answer_float32(tiny_dir):
    """A pplx-layout folder defaults to int8; the OpenAI route always returns normalised float32."""
    emb = Embedder(str(tiny_dir("pplx")), show_progress=False)
    assert emb.default_precision == "int8"
    with TestClient(create_app(emb)) as c:
        got = vectors(c.post("/v1/embeddings", json={"input": TEXTS, "dimensions": 16}))
        ctx = c.post("/v1/contextualizedembeddings", json={"input": [TEXTS]})
    np.testing.assert_allclose(got, emb.encode(TEXTS, precision="float32", dimensions=16), atol=1e-5)
    assert ctx.status_code == 200


def test_model_errors_are_400_and_the_server_keeps_serving(tiny_dir, monkeypatch):
    emb = Embedder(str(tiny_dir("bert")), show_progress=False)
    real = emb.pooled_token_ids  # what the model thread runs
    failures = iter([InputError("the model refused input[0]")])

    def flaky(*args, **kwargs):
        error = next(failures, None)
        if error is not None:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(emb, "pooled_token_ids", flaky)
    with TestClient(create_app(emb)) as c:
        r = c.post("/v1/embeddings", json={"input": TEXTS})
        assert r.status_code == 400 and r.json()["error"]["message"] == "the model refused input[0]"
        np.testing.assert_allclose(vectors(c.post("/v1/embeddings", json={"input": TEXTS})),
                                   emb.encode(TEXTS, precision="float32"), atol=1e-5)


def test_each_app_has_its_own_metrics(tiny_dir):
    emb = Embedder(str(tiny_dir("bert")), show_progress=False)
    with TestClient(create_app(emb)) as a, TestClient(create_app(emb)) as b:
        a.post("/embed", json={"inputs": "the cat"})
        a_text, b_text = a.get("/metrics").text, b.get("/metrics").text
    assert 'diffembed_requests_total{method="POST",route="/embed",status="200"} 1.0' in a_text
    assert 'route="/embed"' not in b_text


def test_openapi_documents_400_not_422(tiny_dir):
    with TestClient(create_app(Embedder(str(tiny_dir("bert")), show_progress=False))) as c:
        schema = c.get("/openapi.json").json()
    for path, item in schema["paths"].items():
        for method, op in item.items():
            assert "422" not in op["responses"], (method, path)
    assert set(schema["paths"]["/v1/embeddings"]["post"]["responses"]) >= {"200", "400", "413"}
    assert "HTTPValidationError" not in schema["components"]["schemas"]
