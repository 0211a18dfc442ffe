"""Pool token states into vectors: whole sequences (mean / cls / last) and token spans (late chunking)."""

from __future__ import annotations

import torch


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """hidden (b, t, d), mask (b, t) of 0/1 -> (b, d) float32, as sentence-transformers' Pooling.

    ``mask`` is the pooling mask: right padding, and with ``include_prompt=False`` also the leading
    prompt positions zeroed. So ``cls`` takes the first position left in it and ``last`` the last
    one (not ``mask.sum() - 1``, which zeroed leading positions move). A row with no position left
    (a prompt filling the window) gives what sentence-transformers gives: zeros for mean and last,
    position 0 for cls.
    """
    if mode == "mean":
        m = mask.to(torch.float32).unsqueeze(-1)
        summed = (hidden.float() * m).sum(dim=1)
        return summed / m.sum(dim=1).clamp(min=1.0)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    keep = mask.to(device=hidden.device, dtype=torch.int32)
    if mode == "cls":
        # argmax: the first 1 (0 for a row without one: position 0, as sentence-transformers does).
        return hidden[rows, keep.argmax(dim=1)].float()
    if mode == "last":
        last = keep.shape[1] - 1 - keep.flip(1).argmax(dim=1)
        return hidden[rows, last].float() * keep.any(dim=1, keepdim=True)
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
