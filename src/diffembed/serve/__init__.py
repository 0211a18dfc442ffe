"""HTTP embedding server: ``create_app(embedder, settings, searcher=None)`` or ``diffembed serve``.

Routes: ``POST /v1/embeddings`` (OpenAI and pplx), ``POST /v1/contextualizedembeddings`` (pplx),
``POST /embed`` (TEI), ``POST /search`` (with an index), ``GET``/``HEAD /health``, ``GET /metrics``
(Prometheus), plus FastAPI's ``/docs``, ``/redoc`` and ``/openapi.json``.

Batching: concurrent requests share forward passes, so a vector may differ from the same text
encoded alone by float rounding: float32 to ~1e-6, int8 by at most 1, a binary bit only where the
component is within ~1e-6 of zero (README, "Batch composition changes the last bits"). One long input
costs one window: only a bounded prefix is tokenized (``diffembed.inference.tokens.tokenize_heads``),
and a refusal says "more than N tokens" instead of counting to the end.

Every error is JSON: ``{"error": {"message", "type", "code"}}``, including a request that is not
valid HTTP, which never reaches the app: ``serve.protocol.JsonErrorH11Protocol`` (the uvicorn
protocol ``diffembed serve`` runs) answers it with code ``malformed_http``. It also closes a
connection that sits idle, or takes to send a request line and headers, longer than
``keep_alive_timeout_s``, without an answer (there is no request to answer). Status codes:

=====  ==========================================================================================
400    Malformed HTTP (request line, headers, Content-Length; the connection is closed). Anything
       wrong with the request's content: invalid JSON, wrong types (validation is strict: "8" is
       not 8, true is not 1), empty or whitespace-only strings, token-id arrays,
       bad ``dimensions``, unknown ``prompt_name``, an input longer than ``max_tokens_per_input``
       (the message names the input and its token count; only TEI ``truncate: true`` cuts
       instead), a document over ``max_tokens_per_document``, a searcher's ``DiffembedError``.
401    API key missing or wrong (when the server has one): every route but ``GET``/``HEAD /health``,
       including the docs, the OpenAPI document and unknown paths.
404    Unknown route; ``/search`` without an index (code ``no_index``).
405    Known route, wrong method.
408    The request body did not arrive in full within ``body_timeout_s`` (the connection is closed).
413    Too large: body over ``max_body_bytes`` (Content-Length or counted while streaming), more
       than ``max_inputs_per_request`` inputs, ``max_documents`` documents or ``max_chunks``
       chunks.
500    A bug (never a client mistake); the model thread keeps serving.
503    Shutting down.
=====  ==========================================================================================
"""

from diffembed.serve.app import create_app
from diffembed.serve.settings import ServeSettings

__all__ = ["create_app", "ServeSettings"]
