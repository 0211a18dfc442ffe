"""Builders for the pretraining tests: a tiny tied-embedding Llama decoder, a word corpus, a recipe."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from tiny_models import WORDS, _tokenizer


def build_tiny_lm(folder: Path, seed: int = 0) -> Path:
    """A 2-layer LlamaForCausalLM with tied embeddings (as SmolLM2), saved with a word tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    vocab = _tokenizer(folder, "llama")
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


def _sentences(rng: random.Random) -> list[str]:
    vocab = WORDS[:60]
    return [" ".join(rng.choice(vocab) for _ in range(rng.randint(5, 9))) + " ." for _ in range(12)]


def _write_docs(folder: Path, n_docs: int, sentences: list[str], rng: random.Random) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_docs):
        (folder / f"doc{i:02d}.txt").write_text(" ".join(rng.choice(sentences) for _ in range(rng.randint(4, 24))),
                                                encoding="utf-8")


def write_corpus(root: Path, n_docs: int = 40, seed: int = 0) -> Path:
    """Documents made of a dozen fixed sentences in random order: enough rows for several epochs and
    a held-out split, and learnable (a masked word is predictable from its sentence)."""
    rng = random.Random(seed)
    _write_docs(root, n_docs, _sentences(rng), rng)
    return root


def write_train_eval_corpus(root: Path, n_train: int = 40, n_eval: int = 10, seed: int = 0) -> tuple[Path, Path]:
    """(train folder, eval folder) of documents over the same dozen sentences.

    For tests that compare losses: `data.heldout_fraction` splits by a hash of each file's absolute
    path, so with a pytest tmp folder (pytest-N/corpusK/) the train/held-out split, and with it the
    loss curve, changes from run to run and with test order. A separate `data.eval` folder and
    `heldout_fraction: 0` make the run depend on nothing but file names and seeds.
    """
    rng = random.Random(seed)
    sentences = _sentences(rng)
    _write_docs(root / "train", n_train, sentences, rng)
    _write_docs(root / "eval", n_eval, sentences, rng)
    return root / "train", root / "eval"


def recipe(tiny_lm: Path, corpus: Path, out: Path, **overrides) -> dict:
    """A complete tiny recipe as a dict; overrides use dotted keys (`train.steps`)."""
    data = {
        "output_dir": str(out),
        "model": {"path": str(tiny_lm)},
        "data": {"train": [str(corpus)], "heldout_fraction": 0.2, "seq_len": 32},
        "train": {"steps": 6, "micro_batch_size": 2, "grad_accum": 2, "log_every": 1, "threads": 1},
        "optim": {"lr": 1e-3},
        "schedule": {"warmup_steps": 1},
        "checkpoint": {"every": 3, "keep": 3},
        "eval": {"every": 3, "rows": 8},
    }
    for dotted, value in overrides.items():
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return data
