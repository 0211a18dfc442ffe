"""Pool token states into vectors: whole sequences (mean / cls / last) and token spans (late chunking)."""

from __future__ import annotations

import torch


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """hidden (b, t, d), mask (b, t) of 0/1 with right padding -> (b, d) float32."""
    if mode == "mean":
        m = mask.to(torch.float32).unsqueeze(-1)
        summed = (hidden.float() * m).sum(dim=1)
        return summed / m.sum(dim=1).clamp(min=1.0)
    if mode == "cls":
        return hidden[:, 0].float()
    if mode == "last":
        last = mask.long().sum(dim=1).clamp(min=1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last].float()
    raise ValueError(f"unknown pooling mode {mode}")


def accumulate_spans(
    sums: torch.Tensor, counts: torch.Tensor, states: torch.Tensor, owner: torch.Tensor
) -> None:
    """Add each token state to the running sum of the chunk that owns it (owner -1 = no chunk)."""
    keep = owner >= 0
    if keep.any():
        idx = owner[keep]
        sums.index_add_(0, idx, states[keep].float())
        counts.index_add_(0, idx, torch.ones_like(idx, dtype=counts.dtype))
