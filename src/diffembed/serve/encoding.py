"""Vectors -> JSON values, byte-for-byte in the layouts the OpenAI and pplx clients decode."""

from __future__ import annotations

import base64

import numpy as np

from diffembed.inference.quantize import finalize, pack_bits_lsb


def b64_float32(vec: np.ndarray) -> str:
    """OpenAI ``encoding_format="base64"``: little-endian float32 bytes."""
    return base64.b64encode(np.ascontiguousarray(vec, dtype="<f4").tobytes()).decode("ascii")


def b64_int8(vec: np.ndarray) -> str:
    """pplx ``base64_int8``: signed int8 bytes."""
    return base64.b64encode(np.ascontiguousarray(vec, dtype=np.int8).tobytes()).decode("ascii")


def b64_binary_lsb(signs: np.ndarray) -> str:
    """pplx ``base64_binary``: one bit per dimension (set = x >= 0), LSB-first within each byte."""
    return base64.b64encode(pack_bits_lsb(signs).tobytes()).decode("ascii")


def encode_pooled(pooled, encoding_format: str, dimensions: int | None) -> list:
    """Pooled vectors -> one JSON value each, equal to ``Embedder.encode`` in the matching precision:
    float32 (normalised after the Matryoshka cut) as floats or base64; int8 and binary as pplx's
    base64 layouts."""
    if encoding_format in ("float", "base64"):
        vectors = finalize(pooled, "float32", dimensions, True)
        return [b64_float32(v) for v in vectors] if encoding_format == "base64" else vectors.tolist()
    if encoding_format == "base64_int8":
        return [b64_int8(v) for v in finalize(pooled, "int8", dimensions, True)]
    if encoding_format == "base64_binary":
        return [b64_binary_lsb(v) for v in finalize(pooled, "binary", dimensions, True)]
    raise ValueError(f"unknown encoding_format {encoding_format!r}")
