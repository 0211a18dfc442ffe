"""Quantization-aware training: the runtime's int8 / binary values in the forward pass, tanh's
gradient in the backward pass (straight-through estimator, pplx-embed's recipe).

* ``int8``: forward ``clamp(round(127 * tanh(x)), -128, 127)``, computed by the very function the
  runtime uses (:func:`diffembed.inference.quantize.int8_tanh`), so a trained model is scored on the
  vectors it will serve. Backward: the gradient of ``soft = 127 * tanh(x)``, i.e.
  ``127 * (1 - tanh(x)^2)``. The output is ``hard + (soft - soft.detach())``: its value is exactly
  ``hard`` (``soft - soft.detach()`` is an exact zero; the often written
  ``hard + soft - soft.detach()`` evaluates left to right and can round away from ``hard``).
* ``binary``: forward ``sign(x)`` as +1/-1 with ``x >= 0 -> +1`` (so -0.0 -> +1), as the runtime's
  ``binary``/``ubinary``; backward the gradient of ``tanh(x)``.
* ``float``: identity.

Scale. The soft surrogate has the same scale as the hard value (127 for int8, 1 for binary), so
the backward pass is the true gradient of a smooth function that the forward value stays within 0.5
of. pplx's released module uses ``soft = tanh(x)`` for int8 too: same forward values, gradients 127
times smaller. Cosine-based losses are scale invariant, so the gradient *direction* is the same
either way; the scale only matters when a quantized loss is added to a float one (``mixed``), where
matching scales keep the terms comparable.

Order. The runtime truncates (Matryoshka ``dimensions``) first, then quantizes; every operation here
is elementwise, so quantizing then truncating gives the same values, and the quantizer composes with
sentence-transformers' ``MatryoshkaLoss`` (which truncates and L2-normalises the model output).

Placement. int8 at runtime is taken from the raw pooled vector, never a normalised one, so in a
sentence-transformers model the quantizer sits right after ``Pooling`` with no ``Normalize`` before
it (cosine losses do not need ``Normalize``). :class:`QuantizeAware` checks this when the model is
built. It is a training-time module: an exported model drops it and asks for int8 at inference time
(``precision="int8"``), which computes the same values.

``mixed`` trains one model for all precisions: :class:`MultiPrecisionLoss` wraps any
sentence-transformers loss and sums ``weight * loss`` over views of one forward pass (e.g. float +
int8 + binary), the way ``MatryoshkaLoss`` sums over prefix sizes. One forward pass per batch, so
the views share the backbone's compute. Wrap it *around* ``MatryoshkaLoss`` (quantize, then
truncate and normalise); the other order would quantize normalised vectors.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn

from diffembed.extras import require
from diffembed.inference.quantize import int8_tanh

QuantMode = Literal["float", "int8", "binary"]
QUANT_MODES: tuple[str, ...] = ("float", "int8", "binary")
INT8_SCALE = 127.0


def check_mode(mode: str) -> str:
    if mode not in QUANT_MODES:
        raise ValueError(f"unknown quantization mode '{mode}'; choose one of {', '.join(QUANT_MODES)}")
    return mode


def int8_ste(x: Tensor) -> Tensor:
    """Forward: the runtime's int8 values (as float32); backward: d/dx of ``127 * tanh(x)``."""
    x = x.float()  # the runtime quantizes in float32: bf16 tanh would round differently
    soft = INT8_SCALE * torch.tanh(x)
    hard = int8_tanh(x.detach()).float()
    return hard + (soft - soft.detach())


def binary_ste(x: Tensor) -> Tensor:
    """Forward: +1 where ``x >= 0`` else -1 (as float32); backward: d/dx of ``tanh(x)``."""
    x = x.float()
    soft = torch.tanh(x)
    hard = torch.where(x.detach() >= 0, 1.0, -1.0)
    return hard + (soft - soft.detach())


def quantize_ste(x: Tensor, mode: str) -> Tensor:
    """Apply the straight-through quantizer for ``mode`` (``float`` returns ``x`` unchanged)."""
    check_mode(mode)
    if mode == "int8":
        return int8_ste(x)
    if mode == "binary":
        return binary_ste(x)
    return x


def _sentence_transformers_module() -> type:
    require("sentence_transformers", "train", "quantization-aware training")
    try:
        from sentence_transformers.base.modules.module import Module
    except ImportError:  # sentence-transformers < 6 kept it under models
        from sentence_transformers.models import Module  # type: ignore[no-redef]
    return Module


class QuantizeAware(_sentence_transformers_module()):  # type: ignore[misc]
    """A sentence-transformers module that quantizes ``sentence_embedding`` with :func:`quantize_ste`.

    Saves only its config (``mode``) and loads from it, like ``Normalize``; it has no weights.
    ``mode`` is a plain attribute, so a training stage can switch it between steps.
    """

    config_keys: list[str] = ["mode", "module_input_name"]
    config_file_name: str = "config.json"

    def __init__(self, mode: str = "int8", module_input_name: str = "sentence_embedding") -> None:
        super().__init__()
        self.mode = check_mode(mode)
        self.module_input_name = module_input_name

    def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        x = features.get(self.module_input_name)
        if x is not None:
            features[self.module_input_name] = quantize_ste(x, self.mode)
        return features

    def on_model_ready(self, model: Any) -> None:
        """Refuse a model that normalises before quantizing: the runtime quantizes the raw vector."""
        seen_normalize = False
        for module in model:
            if module is self:
                break
            if type(module).__name__ == "Normalize":
                seen_normalize = True
        if seen_normalize:
            raise ValueError("QuantizeAware must come before Normalize: the runtime quantizes the raw pooled vector")

    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        os.makedirs(output_path, exist_ok=True)
        self.save_config(output_path)

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", token: bool | str | None = None,
             cache_folder: str | None = None, revision: str | None = None, local_files_only: bool = False,
             **kwargs: Any) -> QuantizeAware:
        config = cls.load_config(model_name_or_path, subfolder=subfolder, token=token, cache_folder=cache_folder,
                                 revision=revision, local_files_only=local_files_only)
        return cls(**{key: value for key, value in config.items() if key in cls.config_keys})

    def extra_repr(self) -> str:
        return json.dumps(self.get_config_dict())


# --- mixed precision: one loss over several quantized views --------------------------------------------


class _ViewForward:
    """Stands in for ``SentenceTransformer.forward``: runs the model once per input and returns the
    cached output with ``sentence_embedding`` replaced by the current view."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.mode = "float"
        self.cache: list[dict[str, Any]] = []
        self.filled = False
        self.idx = 0

    def start_view(self, mode: str) -> None:
        if self.cache:
            self.filled = True
        self.mode = mode
        self.idx = 0

    def __call__(self, features: dict[str, Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        if not self.filled:
            self.cache.append(self.fn(features, *args, **kwargs))
        raw = self.cache[self.idx]
        self.idx += 1
        out = dict(raw)  # a copy: losses and MatryoshkaLoss write into the dict they get
        out["sentence_embedding"] = quantize_ste(raw["sentence_embedding"], self.mode)
        return out


class _ViewCalculateLoss:
    """For gradient-caching losses: apply each view to the cached embeddings in ``calculate_loss``
    (their backward runs after any forward patch is gone), as MatryoshkaLoss does for prefixes."""

    def __init__(self, fn: Any, views: tuple[tuple[str, float], ...]) -> None:
        self.fn = fn
        self.views = views

    def __call__(self, reps: list[list[Tensor]], *args: Any, **kwargs: Any) -> Tensor:
        total: Tensor | float = 0.0
        # With with_backward the loss back-propagates itself, chunk by chunk, and returns a detached
        # value: give it leaves, then carry their gradients through the quantizer into the reps.
        detach = torch.is_grad_enabled() and bool(kwargs.get("with_backward", False))
        for mode, weight in self.views:
            viewed = [[quantize_ste(r, mode) for r in minibatch] for minibatch in reps]
            inputs = [[r.detach().requires_grad_() for r in mb] for mb in viewed] if detach else viewed
            total = total + weight * self.fn(inputs, *args, **kwargs)
            if detach:
                for v_mb, i_mb in zip(viewed, inputs):
                    for v, i in zip(v_mb, i_mb):
                        if i.grad is not None:
                            v.backward(weight * i.grad)
        return total  # type: ignore[return-value]


class MultiPrecisionLoss(nn.Module):
    """``sum(weight * loss(view))`` over quantization views of one forward pass (``mixed`` QAT).

    ``views`` maps a mode (``float``, ``int8``, ``binary``) to its weight, e.g.
    ``{"float": 1.0, "int8": 1.0, "binary": 0.5}``. The model's ``sentence_embedding`` must be the
    raw pooled vector (no ``Normalize`` and no :class:`QuantizeAware` in the model). Works with plain
    losses (the model's forward is wrapped for the duration of the call) and with
    sentence-transformers' gradient-caching losses (their ``calculate_loss`` is wrapped once).
    """

    def __init__(self, model: Any, loss: nn.Module, views: Mapping[str, float]) -> None:
        super().__init__()
        if not views:
            raise ValueError("MultiPrecisionLoss needs at least one view")
        self.views = tuple((check_mode(mode), float(weight)) for mode, weight in views.items())
        for module in model:
            if type(module).__name__ in ("Normalize", "QuantizeAware"):
                raise ValueError(f"MultiPrecisionLoss needs the raw pooled vector; remove the model's {type(module).__name__} module")
        self.model = model
        self.loss = loss
        self.cached = _gradient_cached(loss)
        if self.cached is not None:
            self.cached.calculate_loss = _ViewCalculateLoss(self.cached.calculate_loss, self.views)

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None) -> Tensor:
        if self.cached is not None:
            return self.loss(sentence_features, labels)
        features = list(sentence_features)
        original = self.model.forward
        view_forward = _ViewForward(original)
        try:
            self.model.forward = view_forward
            total: Tensor | float = 0.0
            for mode, weight in self.views:
                view_forward.start_view(mode)
                total = total + weight * self.loss(features, labels)
        finally:
            self.model.forward = original
        return total  # type: ignore[return-value]

    def get_config_dict(self) -> dict[str, Any]:
        return {"loss": type(self.loss).__name__, "views": dict(self.views)}


def _gradient_cached(loss: nn.Module) -> nn.Module | None:
    """The gradient-caching loss at the bottom of a chain of wrappers (e.g. MatryoshkaLoss), if any."""
    while loss is not None:
        if getattr(loss, "uses_gradient_cache", False) and hasattr(loss, "calculate_loss"):
            return loss
        loss = getattr(loss, "loss", None)
    return None
