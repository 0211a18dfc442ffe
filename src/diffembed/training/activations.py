"""Activation (gradient) checkpointing, one switch for every training kind.

Recomputing each layer's activations in the backward pass keeps memory per layer instead of per
layer and token, for about a third more compute: what lets a contextual stage late-chunk documents
up to the model's window, or pretraining run longer sequences, in bounded memory.
"""

from __future__ import annotations

from torch import nn

from diffembed.errors import DiffembedError


def checkpoint_activations(model: nn.Module) -> int:
    """Turn checkpointing on in every transformers model inside ``model`` (wherever the task nests
    its backbone); returns how many. Non-reentrant: token-id inputs need no grad, and DDP sees each
    parameter once per step."""
    kwargs = {"use_reentrant": False}
    count = 0
    for module in model.modules():
        if not getattr(module, "supports_gradient_checkpointing", False):
            continue
        if hasattr(module, "activation_checkpointing_enable"):  # the transformers 5 name; the old one warns
            module.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        elif hasattr(module, "gradient_checkpointing_enable"):
            module.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        else:
            continue
        count += 1
    if not count:
        raise DiffembedError(f"gradient checkpointing is on but {type(model).__name__} holds no model that supports it")
    return count
