"""Vectors -> JSON values, byte-for-byte in the layouts the OpenAI and pplx clients decode."""

from __future__ import annotations

import base64

import numpy as np

from diffembed.inference.quantize import pack_bits_lsb


def b64_float32(vec: np.ndarray) -> str:
    """OpenAI ``encoding_format="base64"``: little-endian float32 bytes."""
    return base64.b64encode(np.ascontiguousarray(vec, dtype="<f4").tobytes()).decode("ascii")


def b64_int8(vec: np.ndarray) -> str:
    """pplx ``base64_int8``: signed int8 bytes."""
    return base64.b64encode(np.ascontiguousarray(vec, dtype=np.int8).tobytes()).decode("ascii")


def b64_binary_lsb(signs: np.ndarray) -> str:
    """pplx ``base64_binary``: one bit per dimension (set = x >= 0), LSB-first within each byte."""
    return base64.b64encode(pack_bits_lsb(signs).tobytes()).decode("ascii")
