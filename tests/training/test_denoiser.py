"""The pretraining model: masked-only LM head equals the full-logit objectives, attention is
bidirectional while training, and the mask token is chosen, registered or added as configured."""

from __future__ import annotations

import pytest
import torch

from diffembed.errors import ModelLoadError
from diffembed.training.denoiser import MaskedDenoiser
from diffembed.training.objectives import diffusion_mask, fixed_rate_mask, maskable_positions, mask_rows
from reference_losses import diffusion_loss, masked_accuracy, mntp_loss
from diffembed.training.pretrain_config import ModelSection, ObjectiveSection
from diffembed.training.pretrain_model import load_pretrain_model


@pytest.fixture(scope="module")
def pm(tiny_lm):
    return load_pretrain_model(ModelSection(path=str(tiny_lm)), ObjectiveSection())


def _batch(pm, seed=0, b=3, length=24):
    g = torch.Generator().manual_seed(seed)
    vocab = pm.lm.config.vocab_size
    ids = torch.randint(len(pm.special_ids) + 1, vocab, (b, length), generator=g)
    attn = torch.ones_like(ids)
    if b > 1:
        attn[1, length - 5:] = 0  # a padded row: its padding must neither count nor be masked
    return ids, attn, maskable_positions(ids, attn, pm.special_ids)


@pytest.mark.parametrize("objective", ["diffusion", "mntp"])
def test_masked_only_head_equals_the_full_logit_objective(pm, objective):
    ids, attn, maskable = _batch(pm)
    g = torch.Generator().manual_seed(1)
    mb = (diffusion_mask(ids, maskable, pm.mask_id, generator=g) if objective == "diffusion"
          else fixed_rate_mask(ids, maskable, pm.mask_id, 0.3, generator=g))
    model = MaskedDenoiser(pm.lm, objective).eval()
    with torch.no_grad():
        logits = pm.lm(input_ids=mb.input_ids, attention_mask=attn).logits
        out = model(mb.input_ids, attn, mb.labels, mb.t)
    ref = diffusion_loss(logits, mb, attn) if objective == "diffusion" else mntp_loss(logits, mb)
    assert out["loss"].item() == pytest.approx(ref.item(), rel=1e-5)
    correct, total = masked_accuracy(logits, mb, shifted=objective == "mntp")
    assert (int(out["correct"]), int(out["total"])) == (correct, total)


def test_a_later_token_changes_an_earlier_prediction_during_training(pm):
    """Bidirectional while training: the loss at position 2 depends on the token at the last position."""
    ids, attn, maskable = _batch(pm, b=1)
    attn = torch.ones_like(ids)
    labels = torch.full_like(ids, -100)
    labels[0, 2] = ids[0, 2]
    masked = ids.clone()
    masked[0, 2] = pm.mask_id
    other = masked.clone()
    other[0, -1] = (other[0, -1] + 1) % pm.lm.config.vocab_size
    model = MaskedDenoiser(pm.lm, "diffusion").train()
    t = torch.tensor([0.5])
    a = model(masked, attn, labels, t)["loss"]
    b = model(other, attn, labels, t)["loss"]
    assert not torch.isclose(a, b), "position 2 did not see the last token: attention is causal"
    assert pm.lm.config.is_causal is False and pm.lm.config.use_bidirectional_attention is True


def test_row_masks_depend_only_on_the_row_seed(pm):
    ids, attn, maskable = _batch(pm, b=4)
    seeds = [11, 12, 13, 14]
    whole = mask_rows(ids, maskable, pm.mask_id, seeds, objective="diffusion")
    # the same rows in another grouping (another process count or micro-batch size) get the same masks
    parts = [mask_rows(ids[i:i + 2], maskable[i:i + 2], pm.mask_id, seeds[i:i + 2], objective="diffusion")
             for i in (0, 2)]
    assert torch.equal(whole.input_ids, torch.cat([p.input_ids for p in parts]))
    assert torch.equal(whole.t, torch.cat([p.t for p in parts]))
    again = mask_rows(ids, maskable, pm.mask_id, [11, 12, 13, 99], objective="diffusion")
    assert torch.equal(again.input_ids[:3], whole.input_ids[:3]) and not torch.equal(again.t[3], whole.t[3])
    fixed = mask_rows(ids, maskable, pm.mask_id, seeds, objective="mntp", rate=0.25)
    assert torch.allclose(fixed.t, torch.full((4,), 0.25))


def test_mask_token_auto_uses_the_reserved_token(pm):
    assert pm.mask_token == "<|MASK|>"
    assert pm.tokenizer.mask_token == "<|MASK|>" and pm.mask_id == pm.tokenizer.convert_tokens_to_ids("<|MASK|>")
    assert pm.mask_id in pm.special_ids and pm.tokenizer.eos_token_id in pm.special_ids
    assert pm.tokenizer.pad_token is not None


def test_mask_token_can_be_added_with_an_embedding_resize(tiny_lm):
    base = load_pretrain_model(ModelSection(path=str(tiny_lm)), ObjectiveSection())
    n = base.lm.get_input_embeddings().num_embeddings
    added = load_pretrain_model(ModelSection(path=str(tiny_lm)),
                                ObjectiveSection(mask_token="<|newmask|>", add_mask_token=True))
    assert added.mask_id == n and added.lm.get_input_embeddings().num_embeddings == n + 1
    assert added.lm.get_output_embeddings().weight.shape[0] == n + 1
    with pytest.raises(ModelLoadError, match="not in the tokenizer's vocabulary"):
        load_pretrain_model(ModelSection(path=str(tiny_lm)), ObjectiveSection(mask_token="<|newmask|>"))


def test_an_encoder_is_refused(tiny_dir):
    with pytest.raises(ModelLoadError, match="not a decoder"):
        load_pretrain_model(ModelSection(path=str(tiny_dir("bert"))), ObjectiveSection())
