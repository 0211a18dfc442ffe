"""The connection layer of a real `diffembed serve`, over raw sockets: malformed HTTP gets a JSON 400,
and idle or slow clients are cut off (keep-alive timeout 1 s, body timeout 2 s on the
``timeouts_server``, tests/serve/conftest.py). Every wait is bounded by a socket timeout, so a
server that never closes fails the test instead of hanging it."""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from urllib.parse import urlsplit

import pytest

pytestmark = pytest.mark.integration

NEVER = 15.0  # seconds: far above the 1 s / 2 s deadlines, the bound on every wait below


def connect(server, timeout: float = NEVER) -> socket.socket:
    url = urlsplit(server.url)
    return socket.create_connection((url.hostname, url.port), timeout=timeout)


def read_until_closed(s: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (socket.timeout if it never does)."""
    reply = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            return reply
        if not chunk:
            return reply
        reply += chunk


def split_response(reply: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = reply.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


MALFORMED = [
    b"GARBAGE\r\n\r\n",
    b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\nno colon in this header\r\n\r\n",
    b"GET /he alth HTTP/1.1\r\nHost: x\r\n\r\n",
]


@pytest.mark.parametrize("raw", MALFORMED, ids=["request-line", "content-length", "two-lengths", "header", "target"])
def test_malformed_http_gets_a_json_400(server, raw):
    with connect(server) as s:
        s.sendall(raw)
        status, headers, body = split_response(read_until_closed(s))
    assert status == 400
    assert headers["content-type"] == "application/json" and headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)
    err = json.loads(body)["error"]
    assert err["code"] == "malformed_http" and err["type"] == "invalid_request_error"
    assert "malformed HTTP request" in err["message"]


def test_idle_connection_is_closed_after_the_keep_alive_timeout(timeouts_server):
    with connect(timeouts_server) as s:
        start = time.monotonic()
        assert read_until_closed(s) == b""  # nothing sent, nothing answered: just closed
        elapsed = time.monotonic() - start
    assert 0.5 < elapsed < NEVER


def test_idle_connection_after_a_response_is_closed(timeouts_server):
    with connect(timeouts_server) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        start = time.monotonic()
        status, _, body = split_response(read_until_closed(s))
        elapsed = time.monotonic() - start
    assert status == 200 and json.loads(body)["status"] == "ok"
    assert 0.5 < elapsed < NEVER  # kept alive for a while, then closed


def test_request_head_dripped_a_byte_at_a_time_is_cut_off(timeouts_server):
    """Each byte used to restart uvicorn's timer; the deadline for a whole head must hold anyway."""
    head = b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 400
    with connect(timeouts_server) as s:
        start = time.monotonic()
        closed_after = None
        for byte in head:
            try:
                s.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed_after = time.monotonic() - start
                break
            readable, _, _ = select.select([s], [], [], 0.1)
            if readable and read_until_closed(s) == b"":
                closed_after = time.monotonic() - start
                break
            if time.monotonic() - start > NEVER:
                break
    assert closed_after is not None, "the server kept a dripping request head open"
    assert closed_after < NEVER


def test_slow_bodies_get_408_and_are_closed(timeouts_server):
    """Twenty clients drip a body a byte every 0.2 s: each gets a JSON 408 near the 2 s deadline."""
    n_clients, results, errors = 20, {}, []

    def client(i: int) -> None:
        try:
            with connect(timeouts_server) as s:
                s.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: 1000\r\n\r\n")
                start = time.monotonic()
                while time.monotonic() - start < NEVER:
                    try:
                        s.sendall(b" ")
                    except (BrokenPipeError, ConnectionResetError):
                        break
                    if select.select([s], [], [], 0.2)[0]:
                        break
                reply = read_until_closed(s)
                results[i] = (time.monotonic() - start, reply)
        except BaseException as exc:  # reported from the main thread
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(NEVER + 10)
    assert not errors, errors[:3]
    assert len(results) == n_clients
    for elapsed, reply in results.values():
        status, headers, body = split_response(reply)
        assert status == 408 and headers["connection"] == "close"
        assert json.loads(body)["error"]["code"] == "request_timeout"
        assert 1.5 < elapsed < NEVER


def test_a_body_within_the_deadline_is_served(timeouts_server):
    """The deadline is for the whole body, not a pause: a body sent in two parts 0.5 s apart is fine."""
    body = json.dumps({"input": "a body that arrives in two parts"}).encode()
    with connect(timeouts_server) as s:
        s.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[:10])
        time.sleep(0.5)
        s.sendall(body[10:])
        status, _, reply = split_response(read_until_closed(s))
    assert status == 200, reply
    assert len(json.loads(reply)["data"][0]["embedding"]) == 384
