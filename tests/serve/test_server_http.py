"""A real `diffembed serve` process (packaged MiniLM, CPU) driven by the official openai client and by
plain HTTP. Every vector is compared with the offline ``Embedder`` output for the same input.

The server runs with small limits (tests/serve/conftest.py): 64 inputs, 1 MiB bodies, 4 documents,
20 chunks, 400 tokens per document.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import threading
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from openai import OpenAI

from diffembed.inference.quantize import pack_bits_lsb

pytestmark = pytest.mark.integration

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Embeddings map text to vectors.",
    "Paris is the capital of France.",
    "A short one",
]
DOCS = [
    ["Berlin is the capital of Germany.", "It has 3.7 million people.", "The river Spree runs through it."],
    ["Late chunking embeds a whole document once.", "Each chunk is pooled from its own tokens."],
]


WORDS = "the river city house tree water music story king queen".split()  # one MiniLM token each


def long_text(n_words: int) -> str:
    return " ".join(WORDS[i % len(WORDS)] for i in range(n_words))


def decode_f32(b64: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(b64), dtype="<f4")


def assert_error(r: httpx.Response, status: int, code: str | None = None, needle: str | None = None) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["type"], str) and err["type"]
    if code is not None:
        assert err["code"] == code, err
    if needle is not None:
        assert needle in err["message"], err
    return err


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def oai(server):
    return OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


# ---------------------------------------------------------------------------- OpenAI route
def test_openai_client_default_base64_matches_encode(server, minilm):
    sent: list[dict] = []
    hooks = {"request": [lambda request: sent.append(json.loads(request.content))]}
    with httpx.Client(event_hooks=hooks) as transport:
        oai = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, http_client=transport)
        r = oai.embeddings.create(model="anything", input=TEXTS)
    assert sent[0]["encoding_format"] == "base64"  # the client's default, decoded by the client itself
    got = np.array([d.embedding for d in r.data], dtype=np.float32)
    np.testing.assert_allclose(got, minilm.encode(TEXTS, precision="float32"), atol=1e-5)
    assert [d.index for d in r.data] == list(range(len(TEXTS)))
    assert r.model == "anything"  # echoed, not required to match
    n_tokens = sum(len(x) for x in minilm.tokenizer(TEXTS, add_special_tokens=False)["input_ids"])
    assert r.usage.prompt_tokens == r.usage.total_tokens == n_tokens


@pytest.mark.parametrize("dimensions", [None, 128])
def test_openai_client_float_with_and_without_dimensions(oai, minilm, dimensions):
    kwargs = {"dimensions": dimensions} if dimensions else {}
    r = oai.embeddings.create(model="m", input=TEXTS, encoding_format="float", **kwargs)
    got = np.array([d.embedding for d in r.data], dtype=np.float32)
    want = minilm.encode(TEXTS, precision="float32", dimensions=dimensions)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # re-normalised after the cut


def test_openai_client_base64_with_dimensions_and_single_string(oai, minilm):
    r = oai.embeddings.create(model="m", input=TEXTS[0], dimensions=64)
    assert len(r.data) == 1
    np.testing.assert_allclose(np.array(r.data[0].embedding, dtype=np.float32),
                               minilm.encode(TEXTS[0], precision="float32", dimensions=64), atol=1e-5)


def test_base64_over_plain_http_is_little_endian_float32(http, minilm):
    r = http.post("/v1/embeddings", json={"input": TEXTS, "encoding_format": "base64", "user": "ignored"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == "all-MiniLM-L6-v2 (packaged)"
    assert {d["object"] for d in body["data"]} == {"embedding"}
    got = np.stack([decode_f32(d["embedding"]) for d in body["data"]])
    np.testing.assert_allclose(got, minilm.encode(TEXTS, precision="float32"), atol=1e-5)


# ---------------------------------------------------------------------------- pplx formats on /v1/embeddings
def decode_int8(b64: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(b64), dtype=np.int8)


def decode_bits(b64: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(b64), dtype=np.uint8)


@pytest.fixture(scope="module")
def pplx(server):
    from perplexity import Perplexity

    return Perplexity(base_url=server.url, api_key="unused", max_retries=0)


@pytest.mark.parametrize("dimensions", [None, 128])
def test_perplexity_client_embeddings_default_int8(server, minilm, dimensions):
    """The pplx SDK sends no encoding_format unless asked and a `pplx-` model name: int8 comes back,
    as from the pplx API, equal to Embedder.encode(precision="int8")."""
    from perplexity import Perplexity

    sent: list[dict] = []
    hooks = {"request": [lambda request: sent.append(json.loads(request.content))]}
    kwargs = {"dimensions": dimensions} if dimensions else {}
    with httpx.Client(event_hooks=hooks) as transport:
        client = Perplexity(base_url=server.url, api_key="unused", max_retries=0, http_client=transport)
        r = client.embeddings.create(model="pplx-embed-v1-0.6b", input=TEXTS, **kwargs)
    assert "encoding_format" not in sent[0]
    got = np.stack([decode_int8(d.embedding) for d in r.data])
    np.testing.assert_array_equal(got, minilm.encode(TEXTS, precision="int8", dimensions=dimensions))
    assert [d.index for d in r.data] == list(range(len(TEXTS))) and r.model == "pplx-embed-v1-0.6b"
    assert r.usage.prompt_tokens == sum(len(x) for x in minilm.tokenizer(TEXTS, add_special_tokens=False)["input_ids"])


def test_perplexity_client_embeddings_int8_and_binary(pplx, minilm):
    r = pplx.embeddings.create(model="pplx-embed-v1-4b", input=TEXTS[0], encoding_format="base64_int8")
    np.testing.assert_array_equal(decode_int8(r.data[0].embedding), minilm.encode(TEXTS[0], precision="int8"))
    r = pplx.embeddings.create(model="pplx-embed-v1-4b", input=TEXTS, encoding_format="base64_binary", dimensions=200)
    got = np.stack([decode_bits(d.embedding) for d in r.data])
    want = pack_bits_lsb(minilm.encode(TEXTS, precision="binary", dimensions=200))  # LSB-first, as contextual
    assert got.shape == (len(TEXTS), 25)
    np.testing.assert_array_equal(got, want)


def test_perplexity_client_contextualized(pplx, minilm):
    r = pplx.contextualized_embeddings.create(model="pplx-embed-context-v1-0.6b", input=DOCS)
    for doc, want in zip(r.data, minilm.encode_contextual(DOCS, precision="int8")):
        np.testing.assert_array_equal(np.stack([decode_int8(c.embedding) for c in doc.data]), want)


@pytest.mark.parametrize("body,kind", [
    ({"input": TEXTS}, "float"),  # no model, no format: OpenAI's default
    ({"input": TEXTS, "model": "text-embedding-3-small"}, "float"),
    ({"input": TEXTS, "model": "pplx-embed-v1-0.6b"}, "int8"),  # pplx model name: pplx's default
    ({"input": TEXTS, "model": "pplx-embed-v1-0.6b", "encoding_format": "float"}, "float"),  # asked for wins
    ({"input": TEXTS, "model": "m", "encoding_format": "base64_int8"}, "int8"),
    ({"input": TEXTS, "encoding_format": "base64_binary"}, "binary"),
])
def test_embeddings_default_format_follows_the_model_name(http, minilm, body, kind):
    r = http.post("/v1/embeddings", json=body)
    assert r.status_code == 200, r.text
    values = [d["embedding"] for d in r.json()["data"]]
    if kind == "float":
        np.testing.assert_allclose(np.array(values, dtype=np.float32), minilm.encode(TEXTS, precision="float32"),
                                   atol=1e-5)
    elif kind == "int8":
        np.testing.assert_array_equal(np.stack([decode_int8(v) for v in values]), minilm.encode(TEXTS, precision="int8"))
    else:
        np.testing.assert_array_equal(np.stack([decode_bits(v) for v in values]),
                                      pack_bits_lsb(minilm.encode(TEXTS, precision="binary")))


# ---------------------------------------------------------------------------- contextual route
def test_contextual_int8_and_binary_match_encode_contextual(http, minilm):
    docs = [*DOCS, [long_text(150), long_text(140)]]  # 290 tokens: more than one model window
    want_int8 = minilm.encode_contextual(docs, precision="int8")
    want_bits = [pack_bits_lsb(x) for x in minilm.encode_contextual(docs, precision="binary")]

    r = http.post("/v1/contextualizedembeddings", json={"input": docs, "model": "ctx"})  # base64_int8 default
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == "ctx"
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    for doc, want in zip(body["data"], want_int8):
        assert doc["object"] == "list" and [c["index"] for c in doc["data"]] == list(range(len(want)))
        got = np.stack([np.frombuffer(base64.b64decode(c["embedding"]), dtype=np.int8) for c in doc["data"]])
        np.testing.assert_array_equal(got, want)
    assert body["usage"]["prompt_tokens"] == sum(
        len(x) for d in docs for x in minilm.tokenizer(d, add_special_tokens=False)["input_ids"])

    r = http.post("/v1/contextualizedembeddings", json={"input": docs, "encoding_format": "base64_binary"})
    assert r.status_code == 200, r.text
    for doc, want in zip(r.json()["data"], want_bits):
        got = np.stack([np.frombuffer(base64.b64decode(c["embedding"]), dtype=np.uint8) for c in doc["data"]])
        assert got.shape == (len(want), 384 // 8)
        np.testing.assert_array_equal(got, want)  # LSB-first, bit set where the value is >= 0


def test_contextual_dimensions(http, minilm):
    r = http.post("/v1/contextualizedembeddings", json={"input": DOCS, "dimensions": 64})
    assert r.status_code == 200, r.text
    want = minilm.encode_contextual(DOCS, precision="int8", dimensions=64)
    for doc, w in zip(r.json()["data"], want):
        got = np.stack([np.frombuffer(base64.b64decode(c["embedding"]), dtype=np.int8) for c in doc["data"]])
        np.testing.assert_array_equal(got, w)


# ---------------------------------------------------------------------------- TEI route
def test_embed_tei(http, minilm):
    r = http.post("/embed", json={"inputs": TEXTS[1]})
    assert r.status_code == 200
    got = np.array(r.json(), dtype=np.float32)
    assert got.shape == (1, 384)  # TEI answers a list of vectors even for one string
    np.testing.assert_allclose(got[0], minilm.encode(TEXTS[1], precision="float32"), atol=1e-5)

    r = http.post("/embed", json={"inputs": TEXTS, "normalize": False, "dimensions": 32})
    np.testing.assert_allclose(np.array(r.json(), dtype=np.float32),
                               minilm.encode(TEXTS, precision="float32", dimensions=32, normalize=False), atol=1e-5)


def test_embed_truncates_only_when_asked(http, minilm):
    text = long_text(300)
    r = http.post("/embed", json={"inputs": [TEXTS[0], text]})
    assert_error(r, 400, "input_too_long", "inputs[1] has 300 tokens")
    r = http.post("/embed", json={"inputs": [TEXTS[0], text], "truncate": True})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(np.array(r.json(), dtype=np.float32),
                               minilm.encode([TEXTS[0], text], precision="float32", truncate=True), atol=1e-5)


# ---------------------------------------------------------------------------- health, metrics
def test_health(http):
    r = http.get("/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "model": "all-MiniLM-L6-v2 (packaged)", "dim": 384}


def test_head_health_for_load_balancer_probes(http):
    r = http.head("/health")
    assert r.status_code == 200 and r.content == b""
    assert r.headers["content-type"] == "application/json"
    assert http.head("/metrics").status_code == 405  # only /health answers HEAD


def test_metrics_exposition(http):
    http.post("/v1/embeddings", json={"input": "metrics probe"})
    r = http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    for name in ("diffembed_requests_total", "diffembed_request_latency_seconds_bucket", "diffembed_embeddings_total",
                 "diffembed_tokens_total", "diffembed_batch_requests_bucket", "diffembed_batch_items_bucket",
                 "diffembed_queue_wait_seconds_bucket"):
        assert name in text, name
    assert re.search(r'diffembed_requests_total\{method="POST",route="/v1/embeddings",status="200"\} [1-9]', text)


# ---------------------------------------------------------------------------- client mistakes
TOO_LONG = long_text(300)

BAD_REQUESTS = [
    # (path, json body, status, code, text the message must hold)
    ("/v1/embeddings", {"input": ""}, 400, "empty_input", "empty string"),
    ("/v1/embeddings", {"input": ["fine", "   "]}, 400, "empty_input", "input[1]"),
    ("/v1/embeddings", {"input": []}, 400, "invalid_request", "input"),
    ("/v1/embeddings", {"input": [1, 2, 3]}, 400, "unsupported_input", "token arrays"),
    ("/v1/embeddings", {"input": [[1, 2], [3]]}, 400, "unsupported_input", "token arrays"),
    ("/v1/embeddings", {"input": 5}, 400, "invalid_request", "input"),
    ("/v1/embeddings", {"input": ["ok", None]}, 400, "invalid_request", "input[1]"),
    ("/v1/embeddings", {"model": "m"}, 400, "invalid_request", "input: Field required"),
    ("/v1/embeddings", {"input": "x", "dimensions": 0}, 400, "invalid_request", "dimensions"),
    ("/v1/embeddings", {"input": "x", "dimensions": 385}, 400, "invalid_dimensions", "1..384"),
    ("/v1/embeddings", {"input": "x", "dimensions": "8"}, 400, "invalid_request", "dimensions"),
    ("/v1/embeddings", {"input": "x", "dimensions": 8.5}, 400, "invalid_request", "dimensions"),
    ("/v1/embeddings", {"input": "x", "dimensions": True}, 400, "invalid_request", "dimensions"),
    ("/v1/embeddings", {"input": "x", "encoding_format": "int8"}, 400, "invalid_request", "encoding_format"),
    ("/v1/embeddings", {"input": "x", "prompt_name": "query"}, 400, "invalid_prompt", "no prompt named"),
    ("/v1/embeddings", {"input": ["fine", TOO_LONG]}, 400, "input_too_long", "input[1] has 300 tokens"),
    ("/v1/embeddings", {"input": ["x"] * 65}, 413, "too_many_inputs", "the limit is 64"),
    ("/v1/embeddings", [{"input": "x"}], 400, "invalid_request", "body"),
    ("/v1/contextualizedembeddings", {"input": []}, 400, "invalid_request", "input"),
    ("/v1/contextualizedembeddings", {"input": [[]]}, 400, "invalid_request", "input[0]"),
    ("/v1/contextualizedembeddings", {"input": ["not a list"]}, 400, "invalid_request", "input[0]"),
    ("/v1/contextualizedembeddings", {"input": [["a"], ["b", " "]]}, 400, "empty_input", "input[1][1]"),
    ("/v1/contextualizedembeddings", {"input": [["a"]] * 5}, 413, "too_many_documents", "the limit is 4"),
    ("/v1/contextualizedembeddings", {"input": [["a"] * 7] * 3}, 413, "too_many_chunks", "21 chunks"),
    ("/v1/contextualizedembeddings", {"input": [["a"], [TOO_LONG, TOO_LONG]]}, 400, "document_too_long",
     "input[1] has 600 tokens"),
    ("/v1/contextualizedembeddings", {"input": [["a"]], "encoding_format": "float"}, 400, "invalid_request",
     "encoding_format"),
    ("/v1/contextualizedembeddings", {"input": [["a"]], "dimensions": 1000}, 400, "invalid_dimensions", "1..384"),
    ("/embed", {"inputs": ""}, 400, "empty_input", "inputs"),
    ("/embed", {"inputs": "x", "normalize": "yes"}, 400, "invalid_request", "normalize"),
    ("/embed", {"inputs": ["x"] * 65, "truncate": True}, 413, "too_many_inputs", "65 inputs"),
    ("/search", {"query": "anything"}, 404, "no_index", "no index loaded"),
]


@pytest.mark.parametrize("path,body,status,code,needle", BAD_REQUESTS,
                         ids=[f"{p}-{i}" for i, (p, *_rest) in enumerate(BAD_REQUESTS)])
def test_bad_requests_get_json_errors(http, path, body, status, code, needle):
    assert_error(http.post(path, json=body), status, code, needle)


def test_protocol_mistakes(http):
    assert_error(http.post("/v1/embeddings", content=b'{"input": "x"', headers={"content-type": "application/json"}),
                 400, "invalid_json")
    assert_error(http.post("/v1/embeddings", content=b'{"input": "x"}', headers={"content-type": "text/plain"}),
                 400, "invalid_request", "application/json")
    assert_error(http.post("/v1/embeddings"), 400)
    assert_error(http.get("/v1/embeddings"), 405, "method_not_allowed")
    assert_error(http.get("/no/such/route"), 404, "not_found")
    assert_error(http.post("/v1/no-such-route", json={}), 404, "not_found")


def test_body_limit_by_content_length(server):
    """Content-Length over the limit is refused before a single body byte is read."""
    url = urlsplit(server.url)
    with socket.create_connection((url.hostname, url.port), timeout=30) as s:
        s.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100000000\r\n\r\n")
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), head
    assert b'"request_too_large"' in body


def test_body_limit_by_streamed_bytes(http):
    """Without Content-Length (chunked upload) the bytes are counted as they arrive."""
    payload = b'{"input": "' + b"a" * ((1 << 20) + 10) + b'"}'

    def chunks():
        for i in range(0, len(payload), 64 * 1024):
            yield payload[i : i + 64 * 1024]

    r = http.post("/v1/embeddings", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in {k.lower() for k in r.request.headers}
    assert_error(r, 413, "request_too_large")


def test_server_keeps_serving_after_mistakes(http, minilm):
    for path, body, *_ in BAD_REQUESTS[:8]:
        http.post(path, json=body)
    r = http.post("/v1/embeddings", json={"input": TEXTS})
    assert r.status_code == 200
    got = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
    np.testing.assert_allclose(got, minilm.encode(TEXTS, precision="float32"), atol=1e-5)
    assert "5" not in {str(s)[0] for s in re.findall(r'status="(\d+)"', http.get("/metrics").text)}


# ---------------------------------------------------------------------------- concurrency
def _batches_with_several_requests(metrics_text: str) -> float:
    """Model calls over texts that merged more than one request (from the batch-size histogram)."""
    single = re.search(r'diffembed_batch_requests_bucket\{kind="texts",le="1\.0"\} (\S+)', metrics_text)
    total = re.search(r'diffembed_batch_requests_count\{kind="texts"\} (\S+)', metrics_text)
    if total is None:  # no text batch yet: the labelled series does not exist
        return 0.0
    return float(total[1]) - float(single[1])


def test_32_concurrent_clients_are_batched_together(http, server, minilm):
    n_clients = 32
    texts = {c: [f"client {c} asks about topic {c * 7 % 11} number {k}" for k in range(3)] for c in range(n_clients)}
    before = _batches_with_several_requests(http.get("/metrics").text)
    barrier = threading.Barrier(n_clients)
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def client(c: int) -> None:
        try:
            with httpx.Client(base_url=server.url, timeout=120) as mine:
                barrier.wait()
                r = mine.post("/v1/embeddings", json={"input": texts[c], "encoding_format": "base64"})
                r.raise_for_status()
                results[c] = np.stack([decode_f32(d["embedding"]) for d in r.json()["data"]])
        except BaseException as exc:  # reported below, from the main thread
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not errors, errors[:3]
    flat = [t for c in range(n_clients) for t in texts[c]]
    want = minilm.encode(flat, precision="float32")
    for c in range(n_clients):
        np.testing.assert_allclose(results[c], want[3 * c : 3 * c + 3], atol=1e-5)
    after = _batches_with_several_requests(http.get("/metrics").text)
    assert after - before >= 1, "no model call merged requests from different clients"
