"""The HTTP API: OpenAI- and pplx-compatible embeddings, TEI's /embed, search, health, metrics.

Every route checks its request completely (sizes, tokens, dimensions) before queueing model work,
so client mistakes are 4xx answers that never touch a batch shared with other clients. Each request
is validated once (the schemas), tokenized once (on a request thread, ``serve.inputs``), and only
its token ids reach the model thread, which runs nothing but forward passes. ``/search`` embeds its
query the same way and searches the index on a request thread, one search at a time.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from diffembed.errors import DiffembedError
from diffembed.inference.quantize import finalize
from diffembed.serve.batcher import Batcher, BatcherClosed
from diffembed.serve.encoding import encode_pooled
from diffembed.serve.errors import ApiError, install_error_handlers
from diffembed.serve.inputs import RequestTokenizer
from diffembed.serve.metrics import ServeMetrics
from diffembed.serve.middleware import AuthMiddleware, BodyLimitMiddleware, MetricsMiddleware
from diffembed.serve.schemas import (ContextualRequest, ContextualResponse, EmbeddingsRequest, EmbeddingsResponse,
                                     EmbedRequest, ErrorResponse, Health, SearchRequest, SearchResponse)
from diffembed.serve.settings import ServeSettings

log = logging.getLogger("diffembed.serve")

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Invalid request (bad JSON, types, values, too-long input)."},
    401: {"model": ErrorResponse, "description": "Missing or wrong API key (when the server has one)."},
    413: {"model": ErrorResponse, "description": "Too large: body bytes, inputs, documents or chunks."},
}


def create_app(embedder, settings: ServeSettings | None = None, searcher=None) -> FastAPI:
    """Build the app around a loaded ``Embedder``. ``searcher`` (optional) answers ``/search``."""
    settings = (settings or ServeSettings()).resolve(embedder)
    metrics = ServeMetrics()
    batcher = Batcher(embedder, batch_tokens=settings.batch_tokens, wait_s=settings.batch_wait_ms / 1000.0,
                      on_batch=metrics.observe_batch, call_tokens=settings.call_tokens)
    tokens = RequestTokenizer(embedder)
    # A searcher's lazy caches (bit codes, BM25) and its sqlite connection are not for concurrent use.
    search_lock = threading.Lock()

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        await run_in_threadpool(batcher.start)
        yield
        await run_in_threadpool(batcher.close)

    app = FastAPI(title="diffembed", version="0.1.0", lifespan=lifespan,
                  description="Dense and contextual (late-chunked) text embeddings.")
    app.state.settings, app.state.batcher, app.state.metrics = settings, batcher, metrics
    install_error_handlers(app)

    # ------------------------------------------------------------------ shared steps
    def check_dimensions(dimensions: int | None) -> None:
        if dimensions is not None and dimensions > embedder.dim:
            raise ApiError(400, f"dimensions={dimensions} is outside 1..{embedder.dim} (the model's embedding size)",
                           "invalid_dimensions")

    def resolve_prompt(prompt_name: str | None) -> str | None:
        """The named prompt, else the model's default prompt (as Embedder.encode resolves them)."""
        if prompt_name is not None and prompt_name not in embedder.prompts:
            known = ", ".join(sorted(embedder.prompts)) or "none"
            raise ApiError(400, f"the model has no prompt named '{prompt_name}' (known: {known})", "invalid_prompt")
        return embedder.resolve_prompt(prompt_name=prompt_name) or None

    def check_count(n: int, limit: int, what: str) -> None:
        if n > limit:
            raise ApiError(413, f"{n} {what} in one request; the limit is {limit}", f"too_many_{what}")

    async def wait(submit: Callable[[], Future]):
        try:
            return await asyncio.wrap_future(submit())
        except DiffembedError as exc:
            raise ApiError(400, str(exc), "invalid_request") from exc
        except BatcherClosed as exc:
            raise ApiError(503, str(exc), "shutting_down", type="server_error") from exc

    async def pooled_texts(texts: list[str], *, prompt: str | None, truncate: bool, what: str,
                           limit: int | None = None):
        check_count(len(texts), settings.max_inputs_per_request, "inputs")
        prepared = await run_in_threadpool(tokens.prepare_texts, texts, prompt=prompt,
                                           limit=limit or settings.max_tokens_per_input, truncate=truncate, what=what)
        pooled = await wait(lambda: batcher.embed_ids(prepared.ids, prepared.skip))
        return pooled, prepared.tokens

    def count(route: str, vectors: int, n_tokens: int) -> None:
        metrics.embeddings.labels(route).inc(vectors)
        metrics.tokens.labels(route).inc(n_tokens)

    # ------------------------------------------------------------------ routes
    @app.post("/v1/embeddings", response_model=None, responses={200: {"model": EmbeddingsResponse}, **_ERRORS})
    async def embeddings(req: EmbeddingsRequest) -> JSONResponse:
        """OpenAI- and pplx-compatible. Inputs longer than the limit are refused, never cut."""
        texts = [req.input] if isinstance(req.input, str) else list(req.input)
        check_dimensions(req.dimensions)
        pooled, n_tokens = await pooled_texts(texts, prompt=resolve_prompt(req.prompt_name), truncate=False,
                                              what="input")
        encoded = encode_pooled(pooled, req.output_format(), req.dimensions)
        count("/v1/embeddings", len(encoded), n_tokens)
        return JSONResponse({
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(encoded)],
            "model": req.model or settings.model_name,
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
        })

    @app.post("/v1/contextualizedembeddings", response_model=None,
              responses={200: {"model": ContextualResponse}, **_ERRORS})
    async def contextualized(req: ContextualRequest) -> JSONResponse:
        """pplx-compatible: each document is embedded once and every chunk pooled from its span."""
        docs = [list(d) for d in req.input]
        check_count(len(docs), settings.max_documents, "documents")
        check_count(sum(len(d) for d in docs), settings.max_chunks, "chunks")
        check_dimensions(req.dimensions)
        prepared = await run_in_threadpool(tokens.prepare_documents, docs,
                                           max_tokens=settings.max_tokens_per_document, what="input")
        pooled = await wait(lambda: batcher.embed_documents(prepared.ids, prepared.lengths))
        encoded = [encode_pooled(p, req.encoding_format, req.dimensions) for p in pooled]
        count("/v1/contextualizedembeddings", sum(len(e) for e in encoded), prepared.tokens)
        return JSONResponse({
            "object": "list",
            "data": [{"object": "list", "index": d,
                      "data": [{"object": "embedding", "index": c, "embedding": e} for c, e in enumerate(chunks)]}
                     for d, chunks in enumerate(encoded)],
            "model": req.model or settings.model_name,
            "usage": {"prompt_tokens": prepared.tokens, "total_tokens": prepared.tokens},
        })

    @app.post("/embed", response_model=None, responses={200: {"model": list[list[float]]}, **_ERRORS})
    async def embed(req: EmbedRequest) -> JSONResponse:
        """TEI-compatible. ``truncate: true`` cuts long inputs to the limit instead of refusing them."""
        texts = [req.inputs] if isinstance(req.inputs, str) else list(req.inputs)
        check_dimensions(req.dimensions)
        pooled, n_tokens = await pooled_texts(texts, prompt=resolve_prompt(req.prompt_name), truncate=req.truncate,
                                              what="inputs")
        vectors = finalize(pooled, "float32", req.dimensions, req.normalize)
        count("/embed", len(vectors), n_tokens)
        return JSONResponse(vectors.tolist())

    @app.post("/search", response_model=None, responses={200: {"model": SearchResponse}, **_ERRORS,
                                                          404: {"model": ErrorResponse, "description": "No index."}})
    async def search(req: SearchRequest) -> JSONResponse:
        """Query the loaded index. The query is embedded through the batcher (as ``encode_query``: the
        model's query prompt, cut at the window); the search itself runs on a request thread, so a
        slow one (or a BM25 or bit-cache rebuild) never stalls embedding traffic."""
        if searcher is None:
            raise ApiError(404, "no index loaded (start the server with --index DIR)", "no_index")
        vector = None
        if req.mode != "bm25":
            pooled, _ = await pooled_texts([req.query], prompt=embedder.prompts.get("query") or None, truncate=True,
                                           what="query", limit=embedder.window_capacity)
            vector = finalize(pooled, "float32", None, True)[0]

        def run() -> list[dict]:
            with search_lock:
                hits = searcher.search(req.query, req.k, req.mode, vector=vector)
            return [_plain(hit.to_dict()) for hit in hits]

        try:
            hits = await run_in_threadpool(run)
        except DiffembedError as exc:
            raise ApiError(400, str(exc), "invalid_request") from exc
        return JSONResponse({"data": hits, "query": req.query, "mode": req.mode, "model": settings.model_name})

    @app.get("/health", response_model=Health)
    async def health() -> dict:
        return {"status": "ok", "model": settings.model_name, "dim": embedder.dim}

    # Load balancers often probe with HEAD: same answer, no body (uvicorn drops it for HEAD).
    app.head("/health", include_in_schema=False)(health)

    @app.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    _tidy_openapi(app, protected=settings.api_key is not None)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes, timeout_s=settings.body_timeout_s)
    if settings.api_key:
        app.add_middleware(AuthMiddleware, api_key=settings.api_key)
    routes = frozenset(getattr(r, "path", "") for r in app.routes)
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=routes)
    return app


def _plain(value: Any) -> Any:
    """numpy scalars (a searcher's scores) -> Python values the JSON encoder takes."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _tidy_openapi(app: FastAPI, *, protected: bool) -> None:
    """Document what the server really answers: 400 (not FastAPI's 422) and, with a key, bearer auth."""

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = FastAPI.openapi(app)
        for path, item in schema.get("paths", {}).items():
            for method, op in item.items():
                op.get("responses", {}).pop("422", None)
                if protected and (method, path) != ("get", "/health"):
                    op["security"] = [{"bearerAuth": []}]
                    op["responses"].setdefault("401", {"description": "Missing or wrong API key.",
                                                       "content": {"application/json": {"schema": {
                                                           "$ref": "#/components/schemas/ErrorResponse"}}}})
        components = schema.setdefault("components", {})
        for name in ("HTTPValidationError", "ValidationError"):
            components.get("schemas", {}).pop(name, None)
        if protected:
            components["securitySchemes"] = {"bearerAuth": {"type": "http", "scheme": "bearer"}}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi
