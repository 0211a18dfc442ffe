"""`diffembed serve`: the HTTP embedding server (uvicorn, one worker, one model thread)."""

from __future__ import annotations

from pathlib import Path

import typer

from diffembed.cli.common import DeviceOpt, DtypeOpt, ModelOpt, err_console
from diffembed.errors import InputError
from diffembed.extras import require_extra


def read_api_key(path: Path) -> str:
    """The key from a file (not a flag: flags show up in `ps` and shell history)."""
    try:
        key = Path(path).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise InputError(f"--api-key-file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"--api-key-file {path} cannot be read ({exc})") from None
    if not key:
        raise InputError(f"--api-key-file {path} is empty")
    if any(c.isspace() for c in key):
        raise InputError(f"--api-key-file {path} holds whitespace inside the key; a bearer key is one token")
    return key


def serve(
    model: str = ModelOpt,
    index: Path = typer.Option(None, "--index", help="Index folder to answer POST /search from (without --model, "
                               "the index's own model is served)."),
    host: str = typer.Option("127.0.0.1", help="Address to bind (0.0.0.0 for all interfaces)."),
    port: int = typer.Option(8000, help="Port to listen on."),
    api_key_file: Path = typer.Option(None, "--api-key-file", help="File holding the API key clients must send "
                                      "as 'Authorization: Bearer <key>' (every route but GET /health)."),
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    batch_tokens: int = typer.Option(None, help="Padded-token budget per forward batch (default: 512 on CPU, "
                                     "the model's 16384 on CUDA)."),
    call_tokens: int = typer.Option(None, help="Most tokens (padded) merged from concurrent requests into one model "
                                    "call, which runs length-sorted in --batch-tokens batches (default: 16384 on CPU, 131072 on CUDA)."),
    batch_wait_ms: float = typer.Option(2.0, help="How long a request may wait for others to share its batch."),
    max_inputs: int = typer.Option(2048, help="Most texts in one request (more: 413)."),
    max_tokens_per_input: int = typer.Option(None, help="Longest input in tokens (default: the model window)."),
    max_body_bytes: int = typer.Option(8 * 1024 * 1024, help="Largest request body (more: 413)."),
    max_documents: int = typer.Option(512, help="Most documents in one contextual request."),
    max_chunks: int = typer.Option(16000, help="Most chunks in one contextual request."),
    max_tokens_per_document: int = typer.Option(32768, help="Longest contextual document in tokens."),
    keep_alive_timeout: float = typer.Option(5.0, help="Seconds a connection may sit idle, before its first "
                                             "request or between requests, or take to send a request's line and "
                                             "headers; then it is closed."),
    body_timeout: float = typer.Option(60.0, help="Seconds a request body may take to arrive in full (more: 408, "
                                       "connection closed)."),
    served_model_name: str = typer.Option(None, help="Model name reported in responses (default: the model's)."),
    log_level: str = typer.Option("info", help="uvicorn log level: critical, error, warning, info, debug."),
) -> None:
    """Serve embeddings over HTTP: /v1/embeddings (OpenAI), /v1/contextualizedembeddings (pplx),
    /embed (TEI), /search (with --index), /health and /metrics."""
    require_extra("serve", "diffembed serve")
    if index is not None:
        require_extra("index", "diffembed serve --index")
    from diffembed.serve.settings import ServeSettings

    api_key = read_api_key(api_key_file) if api_key_file is not None else None  # fail before loading a model
    if index is not None and not Path(index).is_dir():
        raise InputError(f"--index {index} is not a folder")
    if log_level not in ("critical", "error", "warning", "info", "debug", "trace"):
        raise InputError(f"unknown --log-level '{log_level}'")
    settings = ServeSettings(
        max_inputs_per_request=max_inputs, max_tokens_per_input=max_tokens_per_input,
        max_body_bytes=max_body_bytes, max_documents=max_documents, max_chunks=max_chunks,
        max_tokens_per_document=max_tokens_per_document, batch_wait_ms=batch_wait_ms, batch_tokens=batch_tokens, call_tokens=call_tokens,
        api_key=api_key, model_name=served_model_name, keep_alive_timeout_s=keep_alive_timeout,
        body_timeout_s=body_timeout,
    )
    for flag, value in (("--keep-alive-timeout", keep_alive_timeout), ("--body-timeout", body_timeout)):
        if not 0 < value <= 3600:  # fail before loading a model (resolve() checks it again)
            raise InputError(f"{flag} must be above 0 and at most 3600 seconds, got {value:g}")

    import uvicorn

    from diffembed import Embedder
    from diffembed.serve.app import create_app
    from diffembed.serve.protocol import JsonErrorH11Protocol

    searcher = None
    if index is None:
        embedder = Embedder(model, device=device, dtype=dtype, show_progress=False)
    else:
        from diffembed.index.search import open_searcher  # only --index needs the index package

        # One open: the searcher reads the index's model (served when --model is not given) and
        # loads it, or checks that --model embeds as the index does.
        searcher = open_searcher(index, model=model, device=device, dtype=dtype)
        embedder = searcher.embedder
    app = create_app(embedder, settings, searcher=searcher)
    resolved = app.state.settings
    err_console.print(
        f"diffembed serve: http://{host}:{port} (model {resolved.model_name}, dim {embedder.dim}, "
        f"device {embedder.loaded.device}, index {index or 'none'}, auth {'on' if api_key else 'off'})",
        highlight=False, soft_wrap=True,
    )
    try:
        # The protocol class answers malformed HTTP with a JSON 400 and bounds idle connections.
        uvicorn.run(app, host=host, port=port, workers=1, log_level=log_level, http=JsonErrorH11Protocol,
                    timeout_keep_alive=resolved.keep_alive_timeout_s)
    finally:
        if searcher is not None and hasattr(searcher, "close"):
            searcher.close()
