"""Output precisions match their formulas exactly and never depend on the batch."""

import numpy as np
import pytest
import torch

from diffembed.errors import InputError
from diffembed.inference.quantize import check_dimensions, finalize, pack_bits_lsb

TEXTS = ["the cat sat on the mat", "berlin is the capital of germany", "one two three four", "red green blue"]


@pytest.fixture(scope="module")
def emb(tiny_dir):
    from diffembed import Embedder

    return Embedder(str(tiny_dir("qwen3")), show_progress=False)


def test_formulas_on_fixed_vectors():
    x = torch.tensor([[0.0, -0.0, 0.5, -0.5, 3.0, -3.0, 1e-9, -1e-9]])
    np.testing.assert_array_equal(finalize(x, "int8", None, True), [[0, 0, 59, -59, 126, -126, 0, 0]])
    np.testing.assert_array_equal(finalize(x, "binary", None, True), [[1, 1, 1, -1, 1, -1, 1, -1]])
    # MSB-first: bits 1,1,1,0,1,0,1,0 -> 0b11101010
    np.testing.assert_array_equal(finalize(x, "ubinary", None, True), [[0b11101010]])
    np.testing.assert_array_equal(pack_bits_lsb(x.numpy() >= 0), [[0b01010111]])
    big = torch.tensor([[1e6, -1e6]])
    np.testing.assert_array_equal(finalize(big, "int8", None, True), [[127, -127]])


def test_precisions_match_formulas_on_model_output(emb):
    raw = emb.encode(TEXTS, normalize=False)
    t = torch.from_numpy(raw)
    np.testing.assert_array_equal(emb.encode(TEXTS, precision="int8"),
                                  torch.clamp(torch.round(127 * torch.tanh(t)), -128, 127).to(torch.int8).numpy())
    np.testing.assert_array_equal(emb.encode(TEXTS, precision="binary"), np.where(raw >= 0, 1, -1).astype(np.int8))
    np.testing.assert_array_equal(emb.encode(TEXTS, precision="ubinary"), np.packbits(raw >= 0, axis=-1))
    assert emb.encode(TEXTS, precision="ubinary").dtype == np.uint8


def test_int8_is_per_vector_not_batch_calibrated(emb):
    alone = emb.encode([TEXTS[0]], precision="int8")
    together = emb.encode(TEXTS, precision="int8")
    np.testing.assert_array_equal(alone[0], together[0])


@pytest.mark.parametrize("dims", [8, 16, 31])
def test_matryoshka_truncates_then_normalises(emb, dims):
    raw = emb.encode(TEXTS, normalize=False)
    cut = raw[:, :dims] / np.linalg.norm(raw[:, :dims], axis=1, keepdims=True)
    got = emb.encode(TEXTS, dimensions=dims)
    assert got.shape == (len(TEXTS), dims)
    np.testing.assert_allclose(got, cut, atol=1e-6)
    np.testing.assert_array_equal(emb.encode(TEXTS, dimensions=dims, precision="int8"),
                                  emb.encode(TEXTS, precision="int8")[:, :dims])


@pytest.mark.parametrize("bad", [0, -1, 33, 1.5, "16", True])
def test_bad_dimensions(bad):
    with pytest.raises(InputError, match="dimensions"):
        check_dimensions(bad, 32)


def test_unknown_precision(emb):
    with pytest.raises(InputError, match="unknown precision 'int4'"):
        emb.encode(TEXTS, precision="int4")
