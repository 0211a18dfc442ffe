"""Group inputs into batches by a padded-token budget over length-sorted order.

Sorting by length keeps padding near zero; the budget (batch size x longest sequence) keeps memory
flat whether the texts are tweets or pages.
"""

from __future__ import annotations

from collections.abc import Sequence


def token_budget_batches(lengths: Sequence[int], batch_tokens: int, max_batch_size: int | None = None) -> list[list[int]]:
    """Return batches of input indices, longest first; every batch holds at least one input."""
    if batch_tokens < 1:
        raise ValueError("batch_tokens must be positive")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        longest_if_added = max(longest, lengths[i])
        full = max_batch_size is not None and len(current) >= max_batch_size
        if current and (full or (len(current) + 1) * longest_if_added > batch_tokens):
            batches.append(current)
            current, longest_if_added = [], lengths[i]
        current.append(i)
        longest = longest_if_added
    if current:
        batches.append(current)
    return batches
