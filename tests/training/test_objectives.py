"""The stage-0 objectives against naive references, on fixed batches and a tiny bidirectional Qwen3."""

import math

import pytest
import torch

from diffembed.modeling.bidirectional import set_bidirectional
from diffembed.training.objectives import IGNORE, diffusion_mask, fixed_rate_mask, maskable_positions
from reference_losses import diffusion_loss, masked_accuracy, mntp_loss

MASK, PAD, BOS = 3, 0, 4


def batch(b=4, length=64, vocab=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (b, length), generator=g)
    ids[:, 0] = BOS
    attn = torch.ones_like(ids)
    attn[1, length // 2 :] = 0  # one padded sequence
    ids[attn == 0] = PAD
    return ids, attn


def test_masking_rate_follows_t_and_specials_are_never_masked():
    ids, attn = batch(b=512, length=256)
    maskable = maskable_positions(ids, attn, [PAD, BOS, MASK])
    mb = diffusion_mask(ids, maskable, MASK, generator=torch.Generator().manual_seed(1))
    assert not mb.masked[:, 0].any() and not mb.masked[attn == 0].any()
    rate = mb.masked.sum(1).float() / maskable.sum(1).float()
    # per sequence: the realised rate is Binomial(n, t)/n around t
    n = maskable.sum(1).float()
    z = (rate - mb.t) / torch.sqrt(mb.t * (1 - mb.t) / n).clamp(min=1e-6)
    assert z.abs().max() < 5.5 and z.mean().abs() < 0.25
    # t is uniform on (eps, 1): mean 0.5, variance 1/12
    assert abs(mb.t.mean().item() - 0.5) < 0.05 and abs(mb.t.var().item() - 1 / 12) < 0.015
    assert torch.equal(mb.input_ids[mb.masked], torch.full_like(mb.input_ids[mb.masked], MASK))
    assert torch.equal(mb.input_ids[~mb.masked], ids[~mb.masked])
    assert torch.equal(mb.labels[mb.masked], ids[mb.masked]) and (mb.labels[~mb.masked] == IGNORE).all()


def test_fixed_rate_mask():
    ids, attn = batch(b=256, length=256)
    mb = fixed_rate_mask(ids, maskable_positions(ids, attn, [PAD, BOS]), MASK, 0.2,
                         generator=torch.Generator().manual_seed(2))
    assert torch.allclose(mb.t, torch.full_like(mb.t, 0.2))
    assert abs(mb.masked.float().sum() / maskable_positions(ids, attn, [PAD, BOS]).sum() - 0.2) < 0.01
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError):
            fixed_rate_mask(ids, attn.bool(), MASK, bad)


def test_diffusion_loss_equals_a_naive_reference():
    ids, attn = batch(b=3, length=16, vocab=30, seed=3)
    mb = diffusion_mask(ids, maskable_positions(ids, attn, [PAD, BOS]), MASK, generator=torch.Generator().manual_seed(4))
    logits = torch.randn(3, 16, 30, generator=torch.Generator().manual_seed(5))
    total = 0.0
    for s in range(3):
        seq = 0.0
        for i in range(16):
            if mb.masked[s, i]:
                logp = logits[s, i].log_softmax(-1)[ids[s, i]].item()
                seq += -logp / mb.t[s].item()
        total += seq / attn[s].sum().item()
    assert diffusion_loss(logits, mb, attn).item() == pytest.approx(total / 3, rel=1e-5)


def test_mntp_loss_equals_a_naive_reference():
    ids, attn = batch(b=2, length=12, vocab=30, seed=6)
    mb = fixed_rate_mask(ids, maskable_positions(ids, attn, [PAD, BOS]), MASK, 0.5, generator=torch.Generator().manual_seed(7))
    logits = torch.randn(2, 12, 30, generator=torch.Generator().manual_seed(8))
    terms = [-logits[s, i - 1].log_softmax(-1)[ids[s, i]].item() for s in range(2) for i in range(1, 12) if mb.masked[s, i]]
    assert mntp_loss(logits, mb).item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    correct, total = masked_accuracy(logits, mb, shifted=True)
    assert total == len(terms) and 0 <= correct <= total


def test_gradient_flows_only_through_masked_positions():
    ids, attn = batch(b=2, length=20, vocab=30, seed=9)
    mb = diffusion_mask(ids, maskable_positions(ids, attn, [PAD, BOS]), MASK, generator=torch.Generator().manual_seed(10))
    logits = torch.randn(2, 20, 30, requires_grad=True)
    diffusion_loss(logits, mb, attn).backward()
    touched = logits.grad.abs().sum(-1) > 0
    assert torch.equal(touched, mb.masked) and mb.masked.any()


def test_masked_positions_see_later_tokens_in_a_bidirectional_decoder():
    """In-place prediction needs bidirectional attention: a later token must move an earlier logit."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=8, max_position_embeddings=64)
    model = Qwen3ForCausalLM(set_bidirectional(cfg)).eval()
    ids = torch.tensor([[4, 7, MASK, 9, 11, 12]])
    other = ids.clone()
    other[0, -1] = 20
    with torch.no_grad():
        a, b = model(input_ids=ids).logits[0, 2], model(input_ids=other).logits[0, 2]
    assert not torch.allclose(a, b)
    causal = Qwen3ForCausalLM(set_bidirectional(Qwen3Config(**cfg.to_dict()), False)).eval()
    causal.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.allclose(causal(input_ids=ids).logits[0, 2], causal(input_ids=other).logits[0, 2])


def test_a_tiny_model_learns_to_unmask():
    """The diffusion loss trains: a few hundred steps on a repeating pattern drive masked accuracy up.

    Bars with room: over 24 seeds (model init and data) 300 steps gave a last-20 / first-20 loss ratio
    of 0.09-0.24 (bar 0.5) and masked accuracy 0.70-0.87 (bar 0.5; chance is 1/8). The earlier 150
    steps with an accuracy bar of 0.8 passed for seed 0 only (0.83) and failed for 9 of 10 others."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.set_num_threads(1)  # tiny matrices: one thread is fastest (conftest restores the count)
    torch.manual_seed(0)
    cfg = set_bidirectional(Qwen3Config(vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                        max_position_embeddings=64))
    model = Qwen3ForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    base = torch.arange(5, 13)  # a cyclic pattern: any visible neighbour gives the masked token away
    def make():
        shift = torch.randint(0, 8, (16,), generator=g)
        ids = torch.stack([base.roll(int(s)).repeat(4) for s in shift])
        attn = torch.ones_like(ids)
        return ids, attn
    losses, accs = [], []
    for step in range(300):
        ids, attn = make()
        mb = diffusion_mask(ids, attn.bool(), 3, generator=g)
        logits = model(input_ids=mb.input_ids, attention_mask=attn).logits
        loss = diffusion_loss(logits, mb, attn)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        c, n = masked_accuracy(logits.detach(), mb)
        accs.append(c / max(n, 1))
    assert sum(losses[-20:]) / 20 < 0.5 * sum(losses[:20]) / 20
    assert sum(accs[-20:]) / 20 > 0.5 and math.isfinite(losses[-1])
