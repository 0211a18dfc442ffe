"""Server limits and knobs, resolved against the loaded model once at start-up."""

from __future__ import annotations

from dataclasses import dataclass, replace

from diffembed.errors import InputError


# Serving merges concurrent requests into one model call of up to CALL_FACTOR x the model's batch
# budget, which `Embedder.pooled` sorts by length and runs in forward batches of SERVE_BATCH_TOKENS on
# CPU. Arrival-order requests vary in length, so small sorted forward batches waste less on padding:
# on 2 CPU cores, 32 clients got 30.5 req/s at 2048 tokens per forward and 42.9 at 512 (MiniLM,
# benchmarks/serve_throughput.py, BENCHMARKS.md). GPUs keep the Embedder's own (large) budget.
CALL_FACTOR = 8
SERVE_BATCH_TOKENS = {"cpu": 512}


@dataclass(frozen=True)
class ServeSettings:
    """What a server accepts. ``None`` fields take the model's own value in ``resolve``.

    ``max_tokens_per_input`` may be at most the model window: longer inputs would be cut by the
    model anyway, and /v1/embeddings must never cut silently.
    """

    max_inputs_per_request: int = 2048
    max_tokens_per_input: int | None = None
    max_body_bytes: int = 8 * 1024 * 1024
    max_documents: int = 512
    max_chunks: int = 16000
    max_tokens_per_document: int = 32768
    batch_wait_ms: float = 2.0
    batch_tokens: int | None = None
    call_tokens: int | None = None  # one merged model call (default: 8 x batch_tokens)
    api_key: str | None = None
    model_name: str | None = None
    # Slow or idle clients hold a connection (and a file descriptor) each: both waits are bounded.
    keep_alive_timeout_s: float = 5.0  # idle connection, and the wait for a complete request head
    body_timeout_s: float = 60.0  # the whole request body, from the end of its head (then 408)

    def resolve(self, embedder) -> ServeSettings:
        """Fill the model-dependent defaults and refuse limits that cannot work."""
        window = embedder.window_capacity
        out = replace(
            self,
            max_tokens_per_input=window if self.max_tokens_per_input is None else self.max_tokens_per_input,
            batch_tokens=_serve_batch_tokens(embedder) if self.batch_tokens is None else self.batch_tokens,
            call_tokens=CALL_FACTOR * embedder.batch_tokens if self.call_tokens is None else self.call_tokens,
            model_name=self.model_name or embedder.loaded.name,
            api_key=self.api_key or None,
        )
        for name in ("max_inputs_per_request", "max_tokens_per_input", "max_body_bytes", "max_documents",
                     "max_chunks", "max_tokens_per_document", "batch_tokens", "call_tokens"):
            value = getattr(out, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value!r}")
        if out.max_tokens_per_input > window:
            raise InputError(
                f"max_tokens_per_input={out.max_tokens_per_input} exceeds the model window ({window} tokens)"
            )
        for name in ("keep_alive_timeout_s", "body_timeout_s"):
            value = getattr(out, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 3600:
                raise InputError(f"{name} must be within 0..3600 seconds (above 0), got {value!r}")
        if not 0 <= out.batch_wait_ms <= 1000:
            raise InputError(f"batch_wait_ms must be within 0..1000, got {out.batch_wait_ms}")
        return out


def _serve_batch_tokens(embedder) -> int:
    return min(embedder.batch_tokens, SERVE_BATCH_TOKENS.get(embedder.loaded.device.type, embedder.batch_tokens))
