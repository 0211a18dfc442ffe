"""Switch a stock decoder to bidirectional attention with the config flag, not a model fork.

transformers >= 5.2 honours ``config.is_causal = False`` in its mask helpers for sdpa, eager and
flash kernels; ``use_bidirectional_attention`` is what released bidirectional checkpoints (pplx,
Gemma embedders) write, so both are set.
"""

from __future__ import annotations

import torch
from transformers import PretrainedConfig


def set_bidirectional(config: PretrainedConfig, bidirectional: bool = True) -> PretrainedConfig:
    config.is_causal = not bidirectional
    config.use_bidirectional_attention = bidirectional
    for sub in ("text_config",):
        inner = getattr(config, sub, None)
        if isinstance(inner, PretrainedConfig):
            set_bidirectional(inner, bidirectional)
    return config


@torch.inference_mode()
def attends_to_future(model: torch.nn.Module, vocab_size: int, device: str | torch.device = "cpu") -> bool:
    """Empirical check: does changing the last token change token 0's hidden state?"""
    ids = torch.tensor([[3, 4, 5, 6]], device=device) % max(vocab_size, 7)
    other = ids.clone()
    other[0, -1] = (other[0, -1] + 1) % vocab_size
    a = model(input_ids=ids).last_hidden_state[0, 0]
    b = model(input_ids=other).last_hidden_state[0, 0]
    return not torch.allclose(a, b)
