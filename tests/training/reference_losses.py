"""Full-logit reference forms of the stage-0 losses: the plain definitions that
`MaskedDenoiser` (LM head on masked positions only) must equal."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from diffembed.training.objectives import IGNORE, MaskedBatch


def diffusion_loss(logits: torch.Tensor, batch: MaskedBatch, attention_mask: torch.Tensor) -> torch.Tensor:
    """sum over masked positions of CE / t, divided by each sequence's length, averaged over sequences."""
    ce = F.cross_entropy(logits.float().transpose(1, 2), batch.labels, ignore_index=IGNORE, reduction="none")  # (B, L)
    per_seq = ce.sum(dim=1) / batch.t / attention_mask.sum(dim=1).clamp(min=1)
    return per_seq.mean()


def mntp_loss(logits: torch.Tensor, batch: MaskedBatch) -> torch.Tensor:
    """Shifted prediction: logits at i - 1 predict the masked token at i; mean over masked tokens."""
    shifted_logits = logits[:, :-1].float()
    labels = batch.labels[:, 1:]
    if not (labels != IGNORE).any():
        return shifted_logits.sum() * 0.0  # no target in this batch: a zero that still has a graph
    return F.cross_entropy(shifted_logits.transpose(1, 2), labels, ignore_index=IGNORE)


def masked_accuracy(logits: torch.Tensor, batch: MaskedBatch, shifted: bool = False) -> tuple[int, int]:
    """(correct, total) over masked positions, for in-place or shifted prediction."""
    if shifted:
        logits, labels = logits[:, :-1], batch.labels[:, 1:]
    else:
        labels = batch.labels
    target = labels != IGNORE
    correct = (logits.argmax(dim=-1) == labels) & target
    return int(correct.sum()), int(target.sum())
