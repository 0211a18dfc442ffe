"""API-key enforcement on a real server started with --api-key-file (the file holds the key with
surrounding whitespace, which must be stripped)."""

from __future__ import annotations

import httpx
import numpy as np
import openai
import pytest
from openai import OpenAI

pytestmark = pytest.mark.integration

# Every route, including the docs and ones that do not exist: without the key, none says more than 401.
ROUTES = [
    ("POST", "/v1/embeddings", {"input": "hello"}),
    ("POST", "/v1/contextualizedembeddings", {"input": [["hello", "world"]]}),
    ("POST", "/embed", {"inputs": "hello"}),
    ("POST", "/search", {"query": "hello"}),
    ("GET", "/metrics", None),
    ("GET", "/openapi.json", None),
    ("GET", "/docs", None),
    ("GET", "/redoc", None),
    ("GET", "/no/such/route", None),
    ("POST", "/health", None),
]


def wrong_headers(key: str) -> list[dict]:
    return [{}, {"Authorization": "Bearer wrong-key"}, {"Authorization": f"Basic {key}"},
            {"Authorization": f"Bearer {key}x"}, {"Authorization": "Bearer"}, {"Authorization": key}]


@pytest.fixture(scope="module")
def http(auth_server):
    with httpx.Client(base_url=auth_server.url, timeout=60) as client:
        yield client


@pytest.mark.parametrize("method,path,body", ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
def test_every_route_needs_the_key(http, api_key, method, path, body):
    for headers in wrong_headers(api_key):
        r = http.request(method, path, json=body, headers=headers)
        assert r.status_code == 401, (headers, r.status_code, r.text)
        assert r.json()["error"]["code"] == "invalid_api_key"
        assert r.json()["error"]["type"] == "authentication_error"
        assert r.headers["www-authenticate"] == "Bearer"


EXPECTED_WITH_KEY = {"/v1/embeddings": 200, "/v1/contextualizedembeddings": 200, "/embed": 200,
                     "/search": 404, "/metrics": 200, "/openapi.json": 200, "/docs": 200, "/redoc": 200,
                     "/no/such/route": 404, "/health": 405}


@pytest.mark.parametrize("method,path,body", ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
def test_the_key_opens_every_route(http, api_key, method, path, body):
    r = http.request(method, path, json=body, headers={"Authorization": f"Bearer {api_key}"})
    assert r.status_code == EXPECTED_WITH_KEY[path], r.text


def test_health_is_open(http):
    r = http.get("/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    r = http.head("/health")  # load-balancer probes use HEAD, without a key
    assert r.status_code == 200 and r.content == b""


def test_openapi_declares_bearer_auth(http, api_key):
    schema = http.get("/openapi.json", headers={"Authorization": f"Bearer {api_key}"}).json()
    assert schema["components"]["securitySchemes"]["bearerAuth"] == {"type": "http", "scheme": "bearer"}
    assert schema["paths"]["/v1/embeddings"]["post"]["security"] == [{"bearerAuth": []}]
    assert "security" not in schema["paths"]["/health"]["get"]


def test_openai_client_with_and_without_the_key(auth_server, api_key, minilm):
    good = OpenAI(base_url=f"{auth_server.url}/v1", api_key=api_key, max_retries=0)
    r = good.embeddings.create(model="m", input=["keyed request", "second"])
    np.testing.assert_allclose(np.array([d.embedding for d in r.data], dtype=np.float32),
                               minilm.encode(["keyed request", "second"], precision="float32"), atol=1e-5)
    bad = OpenAI(base_url=f"{auth_server.url}/v1", api_key="not-the-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.embeddings.create(model="m", input="x")
