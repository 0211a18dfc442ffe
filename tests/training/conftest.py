"""Fixtures for the pretraining tests (built once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pretrain_helpers import build_tiny_lm, write_corpus, write_train_eval_corpus


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> Path:
    return build_tiny_lm(tmp_path_factory.mktemp("tiny_lm") / "llama")


@pytest.fixture(scope="session")
def word_corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "docs")


@pytest.fixture(scope="session")
def train_eval_corpus(tmp_path_factory) -> tuple[Path, Path]:
    """(train, eval) folders whose split does not depend on where pytest puts them."""
    return write_train_eval_corpus(tmp_path_factory.mktemp("split_corpus"))


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """`train.threads` calls torch.set_num_threads, which is process-wide: undo it after each test so
    no test runs with a thread count an earlier one left behind."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
