"""HTTP embedding server: ``create_app(embedder, settings, searcher=None)`` or ``diffembed serve``.

Routes: ``POST /v1/embeddings`` (OpenAI), ``POST /v1/contextualizedembeddings`` (pplx),
``POST /embed`` (TEI), ``POST /search`` (with an index), ``GET /health``, ``GET /metrics``
(Prometheus), plus FastAPI's ``/docs``, ``/redoc`` and ``/openapi.json``.

Every error is JSON: ``{"error": {"message", "type", "code"}}``. Status codes:

=====  ==========================================================================================
400    Anything wrong with the request's content: invalid JSON, wrong types (validation is
       strict: "8" is not 8, true is not 1), empty or whitespace-only strings, token-id arrays,
       bad ``dimensions``, unknown ``prompt_name``, an input longer than ``max_tokens_per_input``
       (the message names the input and its token count; only TEI ``truncate: true`` cuts
       instead), a document over ``max_tokens_per_document``, a searcher's ``DiffembedError``.
401    API key missing or wrong (when the server has one): every route but ``GET /health``,
       including the docs, the OpenAPI document and unknown paths.
404    Unknown route; ``/search`` without an index (code ``no_index``).
405    Known route, wrong method.
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
