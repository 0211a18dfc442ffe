"""Output precisions, applied per vector so a vector never depends on the rest of its batch.

* float32: optionally L2-normalised.
* int8: the pplx scheme ``clamp(round(127 * tanh(x)), -128, 127)`` on the raw pooled vector (no
  normalisation first: tanh is the calibration, learned by quantization-aware training). Compare
  int8 vectors by cosine.
* binary: ``sign(x)`` as int8 +1/-1, with x >= 0 mapping to +1.
* ubinary: the binary signs packed 8 per byte, MSB-first (``numpy.packbits`` order, bit set = x >= 0),
  the layout sentence-transformers and faiss binary indexes use. ``pack_bits_lsb`` gives the
  LSB-first order of pplx's ``base64_binary``.

Matryoshka truncation (``dimensions``) always happens first, then normalisation or quantization.
"""

from __future__ import annotations

import numpy as np
import torch

from diffembed.errors import InputError

PRECISIONS = ("float32", "int8", "binary", "ubinary")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision '{precision}'; choose one of {', '.join(PRECISIONS)}")
    return precision


def check_dimensions(dimensions: int | None, dim: int) -> int | None:
    if dimensions is None:
        return None
    if isinstance(dimensions, bool) or not isinstance(dimensions, (int, np.integer)):
        raise InputError(f"dimensions must be an integer, got {type(dimensions).__name__}")
    if not 1 <= int(dimensions) <= dim:
        raise InputError(f"dimensions={dimensions} is outside 1..{dim} (the model's embedding size)")
    return int(dimensions)


def int8_tanh(x: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.round(127.0 * torch.tanh(x)), -128, 127).to(torch.int8)


def finalize(pooled: torch.Tensor, precision: str, dimensions: int | None, normalize: bool) -> np.ndarray:
    """Pooled float vectors (n, d) -> output array in the requested precision."""
    x = pooled.float()
    if dimensions is not None:
        x = x[:, :dimensions]
    if precision == "float32":
        if normalize:
            x = torch.nn.functional.normalize(x, p=2, dim=-1)
        return x.cpu().numpy().astype(np.float32, copy=False)
    if precision == "int8":
        return int8_tanh(x).cpu().numpy()
    signs = (x >= 0).cpu().numpy()
    if precision == "binary":
        return np.where(signs, 1, -1).astype(np.int8)
    if precision == "ubinary":
        return np.packbits(signs, axis=-1)
    raise InputError(f"unknown precision '{precision}'")


def pack_bits_lsb(signs: np.ndarray) -> np.ndarray:
    """Pack a boolean/sign array LSB-first (pplx base64_binary order)."""
    return np.packbits(np.asarray(signs) > 0, axis=-1, bitorder="little")


def empty_output(precision: str, dim: int) -> np.ndarray:
    if precision == "float32":
        return np.zeros((0, dim), dtype=np.float32)
    if precision == "ubinary":
        return np.zeros((0, (dim + 7) // 8), dtype=np.uint8)
    return np.zeros((0, dim), dtype=np.int8)
