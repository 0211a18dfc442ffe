"""Stage-0 pretraining objectives: masked diffusion (MDLM/LLaDA style) and LLM2Vec's MNTP baseline.

Masked diffusion: per sequence draw t ~ U(eps, 1), replace each maskable token by the mask token
with probability t, and predict the original token *in place* with bidirectional attention. The
loss is the cross-entropy on masked positions, each weighted by 1/t, summed per sequence and divided
by that sequence's length (its non-padding tokens), then averaged over the batch: an unbiased
estimate of the masked-diffusion ELBO. The 1/t weight keeps lightly masked sequences (few targets)
from counting for less.

MNTP: a fixed masking rate, and token i is predicted from position i - 1 (the decoder's usual
shifted head), cross-entropy averaged over masked positions.

The losses themselves live in `denoiser.py` (the LM head applied to masked positions only); the
full-logit reference forms that the tests check it against are in tests/training/reference_losses.py.

Both masks take ``maskable``: a boolean tensor of the positions that may be masked (not padding, not a
special token), so the batch builder decides once what "special" means for its tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE = -100


@dataclass
class MaskedBatch:
    input_ids: torch.Tensor  # (B, L) with masked positions replaced by the mask id
    labels: torch.Tensor  # (B, L) original ids at masked positions, IGNORE elsewhere
    masked: torch.Tensor  # (B, L) bool
    t: torch.Tensor  # (B,) masking rate drawn per sequence (the fixed rate for MNTP)


def maskable_positions(input_ids: torch.Tensor, attention_mask: torch.Tensor, special_ids) -> torch.Tensor:
    """Real (non-padding) tokens that are not special tokens."""
    special = torch.as_tensor(sorted(set(int(i) for i in special_ids)), dtype=input_ids.dtype, device=input_ids.device)
    return attention_mask.bool() & ~torch.isin(input_ids, special)


def diffusion_mask(input_ids: torch.Tensor, maskable: torch.Tensor, mask_id: int, *, eps: float = 1e-3,
                   generator: torch.Generator | None = None) -> MaskedBatch:
    if not 0.0 < eps < 1.0:
        raise ValueError(f"eps must be in (0, 1), got {eps}")
    b = input_ids.shape[0]
    t = eps + (1.0 - eps) * torch.rand(b, generator=generator, device=input_ids.device)
    return _apply(input_ids, maskable, mask_id, t, generator)


def fixed_rate_mask(input_ids: torch.Tensor, maskable: torch.Tensor, mask_id: int, rate: float, *,
                    generator: torch.Generator | None = None) -> MaskedBatch:
    if not 0.0 < rate <= 1.0:
        raise ValueError(f"mask rate must be in (0, 1], got {rate}")
    t = torch.full((input_ids.shape[0],), float(rate), device=input_ids.device)
    return _apply(input_ids, maskable, mask_id, t, generator)


def _apply(input_ids, maskable, mask_id, t, generator) -> MaskedBatch:
    draw = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)
    masked = maskable & (draw < t.unsqueeze(1))
    return MaskedBatch(
        input_ids=torch.where(masked, torch.full_like(input_ids, mask_id), input_ids),
        labels=torch.where(masked, input_ids, torch.full_like(input_ids, IGNORE)),
        masked=masked,
        t=t,
    )


def mask_rows(input_ids: torch.Tensor, maskable: torch.Tensor, mask_id: int, row_seeds, *, objective: str,
              eps: float = 1e-3, rate: float = 0.2) -> MaskedBatch:
    """Mask each row with its own generator, seeded from the row's place in the data stream.

    The corruption of a row then depends only on (seed, row index): not on the batch it lands in,
    the number of processes, or whether the run was resumed, which is what makes a 2-process run
    equal a 1-process run and a resumed run equal an uninterrupted one.
    """
    parts = []
    for i, seed in enumerate(row_seeds):
        g = torch.Generator().manual_seed(int(seed))
        ids, mk = input_ids[i : i + 1], maskable[i : i + 1]
        if objective == "diffusion":
            parts.append(diffusion_mask(ids, mk, mask_id, eps=eps, generator=g))
        else:
            parts.append(fixed_rate_mask(ids, mk, mask_id, rate, generator=g))
    return MaskedBatch(
        input_ids=torch.cat([p.input_ids for p in parts]),
        labels=torch.cat([p.labels for p in parts]),
        masked=torch.cat([p.masked for p in parts]),
        t=torch.cat([p.t for p in parts]),
    )
