"""Pure ASGI middleware: they see every request, including ones no route matches, and they can
answer before FastAPI reads or parses anything."""

from __future__ import annotations

import asyncio
import hmac
import time

from diffembed.serve.errors import error_response
from diffembed.serve.metrics import ServeMetrics


class MetricsMiddleware:
    """Counts every answer, 401 and 413 included. Unknown paths share one label, so a scanner
    cannot blow up the number of time series."""

    def __init__(self, app, metrics: ServeMetrics, routes: frozenset[str]):
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope["path"] if scope["path"] in self.routes else "unmatched"
            self.metrics.observe_request(route, scope["method"], status, time.perf_counter() - start)


class AuthMiddleware:
    """Bearer-key check on every path except ``GET`` and ``HEAD /health`` (load balancers probe it
    without secrets, often with HEAD). Docs and the OpenAPI document are protected like any other
    route."""

    OPEN = frozenset({("GET", "/health"), ("HEAD", "/health")})

    def __init__(self, app, api_key: str, open_routes: frozenset[tuple[str, str]] = OPEN):
        self.app, self.key, self.open = app, api_key.encode("utf-8"), open_routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or (scope["method"], scope["path"]) in self.open:
            return await self.app(scope, receive, send)
        header = next((v for k, v in scope.get("headers", []) if k.lower() == b"authorization"), b"")
        scheme, _, token = header.strip().partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
            response = error_response(401, "missing or invalid API key (send 'Authorization: Bearer <key>')",
                                      "invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Refuse bodies over ``limit`` bytes with 413: at once when Content-Length says so, else while
    counting the bytes as they stream in (chunked uploads have no Content-Length). The body is
    buffered here and replayed to the app, which parses all of it anyway.

    The whole body must arrive within ``timeout_s`` of its request head, or the answer is 408 and
    the connection is closed: one deadline, not one per chunk, so a client dripping a byte at a
    time cannot hold a connection open (uvicorn has no body timeout of its own)."""

    def __init__(self, app, limit: int, timeout_s: float = 60.0):
        self.app, self.limit, self.timeout_s = app, limit, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = next((v for k, v in scope.get("headers", []) if k.lower() == b"content-length"), None)
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                response = error_response(400, "invalid Content-Length header", "invalid_request")
                return await response(scope, receive, send)
            if size > self.limit:
                return await self._too_large(scope, receive, send, size)
        chunks, total = [], 0
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        while True:
            try:
                message = await asyncio.wait_for(receive(), deadline - asyncio.get_running_loop().time())
            except asyncio.TimeoutError:
                return await self._too_slow(scope, receive, send, total)
            if message["type"] != "http.request":  # the client went away
                return
            body = message.get("body", b"")
            total += len(body)
            if total > self.limit:
                return await self._too_large(scope, receive, send, None)
            chunks.append(body)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _too_slow(self, scope, receive, send, received: int):
        response = error_response(408, f"the request body did not arrive within {self.timeout_s:g} s "
                                  f"({received} bytes received)", "request_timeout",
                                  headers={"Connection": "close"})
        await response(scope, receive, send)

    async def _too_large(self, scope, receive, send, size: int | None):
        got = f"{size} bytes" if size is not None else f"more than {self.limit} bytes"
        response = error_response(413, f"request body is {got}; the limit is {self.limit} bytes",
                                  "request_too_large", headers={"Connection": "close"})
        await response(scope, receive, send)
