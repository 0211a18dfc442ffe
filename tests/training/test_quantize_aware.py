"""QAT quantizer: forward values are the runtime's int8/binary output, backward is tanh's gradient,
the sentence-transformers module saves and loads itself, and it composes with MatryoshkaLoss; the
mixed-precision loss equals the weighted sum of the loss on each view, with and without GradCache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffembed.inference.quantize import finalize
from diffembed.training.quantize_aware import (INT8_SCALE, MultiPrecisionLoss, QuantizeAware, binary_ste, int8_ste,
                                               quantize_ste)

TEXTS_A = ["the cat sat on the mat", "berlin is the capital of germany", "a red house by the river",
           "music and song", "the old king and queen", "three small dogs"]
TEXTS_B = ["a cat on a mat", "germany has berlin as capital", "the river and the red house",
           "a song is music", "king and queen are old", "dogs three small"]


def _inputs(n: int = 4000, seed: int = 0) -> torch.Tensor:
    """Random values plus the edge cases: exact and negative zeros, values at the rounding and
    clamping edges, huge and infinite values."""
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([
        torch.randn(n, generator=g) * 2,
        torch.randn(n, generator=g) * 0.01,
        torch.tensor([0.0, -0.0, 1e-30, -1e-30, 5.0, -5.0, 20.0, -20.0, 1e4, -1e4, float("inf"), float("-inf")]),
        torch.atanh(torch.tensor([0.5, 1.5, 126.5, -126.5]) / 127),  # near .5 rounding boundaries
    ])
    return x.reshape(-1, 8) if x.numel() % 8 == 0 else x[: x.numel() // 8 * 8].reshape(-1, 8)


def test_int8_forward_is_the_runtime_output():
    x = _inputs()
    out = int8_ste(x.clone().requires_grad_())
    runtime = finalize(x, "int8", None, normalize=False)
    assert out.dtype == torch.float32
    assert np.array_equal(out.detach().numpy(), runtime.astype(np.float32))
    # also on bf16 vectors (the runtime quantizes in float32) and after Matryoshka truncation
    xb = x.bfloat16()
    assert np.array_equal(int8_ste(xb).detach().numpy(), finalize(xb, "int8", None, False).astype(np.float32))
    assert np.array_equal(int8_ste(x)[:, :3].detach().numpy(), finalize(x, "int8", 3, False).astype(np.float32))


def test_binary_forward_is_the_runtime_output():
    x = _inputs(seed=1)
    out = binary_ste(x.clone().requires_grad_())
    assert np.array_equal(out.detach().numpy(), finalize(x, "binary", None, False).astype(np.float32))
    assert binary_ste(torch.tensor([0.0, -0.0, -1e-30])).tolist() == [1.0, 1.0, -1.0]
    packed = np.packbits(out.detach().numpy() > 0, axis=-1)
    assert np.array_equal(packed, finalize(x, "ubinary", None, False))


def _assert_tanh_grad(got: torch.Tensor, x: torch.Tensor, upstream: torch.Tensor, scale: float) -> None:
    """got == upstream * scale * (1 - tanh(x)^2), up to float32 rounding: the exact value in float64,
    with room for the error of 1 - y*y from a float32 y (a few ulps of 1, large relative to a tiny
    result where tanh saturates)."""
    ref = upstream.double() * scale * (1 - torch.tanh(x.detach().double()) ** 2)
    room = 1e-6 * ref.abs() + upstream.double().abs() * scale * 4 * torch.finfo(torch.float32).eps
    assert ((got.double() - ref).abs() <= room).all()


def test_backward_is_the_tanh_gradient():
    x = _inputs(seed=2)
    x = x[torch.isfinite(x).all(dim=1)].clone().requires_grad_()
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    (g_int8,) = torch.autograd.grad(int8_ste(x), x, upstream)
    _assert_tanh_grad(g_int8, x, upstream, INT8_SCALE)
    (g_bin,) = torch.autograd.grad(binary_ste(x), x, upstream)
    _assert_tanh_grad(g_bin, x, upstream, 1.0)
    # not the identity (a plain straight-through) nor the wrong scale
    assert not torch.allclose(g_int8, upstream) and not torch.allclose(g_int8, g_bin)
    (g_float,) = torch.autograd.grad(quantize_ste(x, "float"), x, upstream)
    assert torch.equal(g_float, upstream)


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="unknown quantization mode 'int4'"):
        quantize_ste(torch.zeros(2), "int4")
    with pytest.raises(ValueError, match="unknown quantization mode"):
        QuantizeAware("int4")


# --- sentence-transformers ---------------------------------------------------------------------------


def _st(folder, *extra):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    body = Transformer(str(folder))
    return SentenceTransformer(modules=[body, Pooling(body.get_embedding_dimension(), "mean"), *extra], device="cpu")


def test_module_matches_runtime_and_round_trips(tiny_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    from diffembed import Embedder

    folder = tiny_dir("bert")
    runtime = Embedder(model=str(folder), device="cpu", dtype="float32", show_progress=False)
    for mode, precision in (("int8", "int8"), ("binary", "binary")):
        model = _st(folder, QuantizeAware(mode))
        got = model.encode(TEXTS_A, convert_to_numpy=True)
        want = runtime.encode(TEXTS_A, precision=precision)
        assert np.array_equal(got, want.astype(np.float32)), mode

        model.save(str(tmp_path / mode))
        # a class outside sentence_transformers: ST imports it only when told to trust the code
        loaded = SentenceTransformer(str(tmp_path / mode), device="cpu", trust_remote_code=True)
        assert isinstance(loaded[2], QuantizeAware) and loaded[2].mode == mode
        assert np.array_equal(loaded.encode(TEXTS_A, convert_to_numpy=True), got)


def test_normalize_before_the_quantizer_is_refused(tiny_dir):
    from sentence_transformers.base.modules import Normalize

    with pytest.raises(ValueError, match="before Normalize"):
        _st(tiny_dir("bert"), Normalize(), QuantizeAware("int8"))


def _mnrl_reference(a: torch.Tensor, b: torch.Tensor, scale: float = 20.0) -> torch.Tensor:
    """InfoNCE with in-batch negatives on cosine similarity (what MultipleNegativesRankingLoss computes)."""
    sims = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T * scale
    return F.cross_entropy(sims, torch.arange(len(a)))


def _pooled(model, texts):
    features = model.tokenize(texts)
    return model(features)["sentence_embedding"]


def _grads(model) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


def test_int8_module_composes_with_matryoshka(tiny_dir):
    """MatryoshkaLoss over a model that ends in the int8 quantizer = MNRL on each prefix of the
    runtime's int8 vectors (truncation and quantization commute: both are elementwise)."""
    from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss, MultipleNegativesRankingLoss

    model = _st(tiny_dir("bert"), QuantizeAware("int8"))
    loss = MatryoshkaLoss(model, MultipleNegativesRankingLoss(model), [32, 16, 8], [1.0, 0.5, 0.25])
    got = loss([model.tokenize(TEXTS_A), model.tokenize(TEXTS_B)], None)

    model[2].mode = "float"
    with torch.no_grad():
        a, b = _pooled(model, TEXTS_A), _pooled(model, TEXTS_B)
    want = 0.0
    for dim, weight in ((32, 1.0), (16, 0.5), (8, 0.25)):
        qa = torch.from_numpy(finalize(a, "int8", dim, False)).float()
        qb = torch.from_numpy(finalize(b, "int8", dim, False)).float()
        want += weight * _mnrl_reference(qa, qb)
    torch.testing.assert_close(got.detach(), torch.as_tensor(want), rtol=1e-5, atol=1e-6)


VIEWS = {"float": 1.0, "int8": 0.5, "binary": 0.25}


def _naive_mixed(model, matryoshka_dims=None) -> torch.Tensor:
    a, b = _pooled(model, TEXTS_A), _pooled(model, TEXTS_B)
    total = 0.0
    for mode, weight in VIEWS.items():
        qa, qb = quantize_ste(a, mode), quantize_ste(b, mode)
        for dim in matryoshka_dims or [qa.shape[-1]]:
            total = total + weight * _mnrl_reference(qa[:, :dim], qb[:, :dim])
    return total


@pytest.mark.parametrize("kind", ["plain", "cached", "matryoshka", "cached_matryoshka"])
def test_mixed_precision_loss_equals_the_sum_over_views(tiny_dir, kind):
    """Loss value and every parameter gradient equal the naive sum of MNRL over the three views."""
    from sentence_transformers.sentence_transformer.losses import (CachedMultipleNegativesRankingLoss, MatryoshkaLoss,
                                                                   MultipleNegativesRankingLoss)

    model = _st(tiny_dir("bert"))
    model.eval()  # no dropout: the reference and the loss must see the same forward
    base = (CachedMultipleNegativesRankingLoss(model, mini_batch_size=2) if kind.startswith("cached")
            else MultipleNegativesRankingLoss(model))
    dims = [32, 16] if kind.endswith("matryoshka") else None
    inner = MatryoshkaLoss(model, base, dims) if dims else base
    loss = MultiPrecisionLoss(model, inner, VIEWS)

    model.zero_grad()
    got = loss([model.tokenize(TEXTS_A), model.tokenize(TEXTS_B)], None)
    got.backward()
    got_grads = _grads(model)

    model.zero_grad()
    want = _naive_mixed(model, dims)
    want.backward()
    want_grads = _grads(model)

    torch.testing.assert_close(got.detach(), want.detach(), rtol=1e-5, atol=1e-6)
    assert len(got_grads) == len(want_grads) > 0
    # summation order differs: allow float32 rounding relative to the largest gradient (some
    # parameters' gradients are zero in exact arithmetic and ~1e-11 here)
    scale = max(float(w.abs().max()) for w in want_grads)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5 * scale)


def test_mixed_precision_loss_refuses_a_normalized_model(tiny_dir):
    from sentence_transformers.base.modules import Normalize
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    model = _st(tiny_dir("bert"), Normalize())
    with pytest.raises(ValueError, match="raw pooled vector"):
        MultiPrecisionLoss(model, MultipleNegativesRankingLoss(model), VIEWS)
