"""Token-budget batching keeps input order and gives the same vectors as one-at-a-time encoding."""

import random

import numpy as np
import pytest

from diffembed.inference.batching import token_budget_batches

WORDS = "the cat sat on the mat in the old house by the river with a small red dog".split()


def _texts(n, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 40))) for _ in range(n)]


def test_batches_cover_every_index_once_within_budget():
    rng = random.Random(1)
    lengths = [rng.randint(1, 100) for _ in range(500)]
    batches = token_budget_batches(lengths, 400)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(500))
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 400


def test_oversized_input_gets_its_own_batch():
    assert token_budget_batches([1000, 5, 5], 100) == [[0], [1, 2]]


def test_max_batch_size():
    assert all(len(b) <= 3 for b in token_budget_batches([1] * 10, 1000, max_batch_size=3))


@pytest.mark.parametrize("family", ["bert", "qwen3"])
def test_order_and_values_equal_unbatched(tiny_dir, family):
    from diffembed import Embedder

    emb = Embedder(str(tiny_dir(family)), show_progress=False)
    texts = _texts(40)
    batched = emb.encode(texts, batch_tokens=256)
    single = np.stack([emb.encode([t], batch_tokens=1)[0] for t in texts])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    # A shuffled input gives the same vectors, shuffled the same way.
    perm = np.random.default_rng(0).permutation(len(texts))
    np.testing.assert_allclose(emb.encode([texts[i] for i in perm], batch_tokens=256), batched[perm], atol=1e-5)
