"""Input checks with messages that name the offending item, as the pplx API does."""

from __future__ import annotations

from collections.abc import Sequence

from diffembed.errors import InputError


def check_texts(texts: object, what: str = "input") -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, Sequence) or isinstance(texts, (bytes, bytearray)):
        raise InputError(f"{what} must be a string or a list of strings, got {type(texts).__name__}")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise InputError(f"{what}[{i}] is {type(t).__name__}, expected a string")
        if not t.strip():
            raise InputError(f"{what}[{i}] is an empty string; empty inputs are not allowed")
    return out


def check_documents(documents: object) -> list[list[str]]:
    if isinstance(documents, (str, bytes)) or not isinstance(documents, Sequence):
        raise InputError("documents must be a list of documents, each a list of chunk strings")
    out = []
    for d, doc in enumerate(documents):
        if isinstance(doc, str) or not isinstance(doc, Sequence):
            raise InputError(f"documents[{d}] must be a list of chunk strings, got {type(doc).__name__}")
        if len(doc) == 0:
            raise InputError(f"documents[{d}] has no chunks")
        out.append(check_texts(doc, what=f"documents[{d}]"))
    return out
