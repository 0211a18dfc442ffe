"""Fixtures for the pretraining tests (built once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pretrain_helpers import build_tiny_lm, write_corpus


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> Path:
    return build_tiny_lm(tmp_path_factory.mktemp("tiny_lm") / "llama")


@pytest.fixture(scope="session")
def word_corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "docs")
