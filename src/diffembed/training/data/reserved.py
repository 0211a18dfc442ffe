"""Sources reserved for held-out evaluation, never for training or tuning (DESIGN.md section 4).

SQuAD and KorQuAD dev, python3.11-doc's ``faq/`` folder and LibreOffice help (any language) are what
the trained models are measured on; a pair built from them would make those figures meaningless. The
builders refuse a path given by the user that lies in one of them, and skip (and count) files met
while walking a tree.
"""

from __future__ import annotations

import re
from pathlib import Path

from diffembed.errors import InputError

_PYTHON_DOC = re.compile(r"^python[0-9.]*(-doc)?$")


def reserved_reason(path: str | Path, *, python_doc_root: str | Path | None = None) -> str | None:
    """Why ``path`` is reserved for evaluation, or None. ``python_doc_root``: a Python documentation
    tree (wherever it lives), whose ``faq/`` folder is reserved even if no path part names python."""
    p = Path(path).absolute()
    parts = [part.lower() for part in p.parts]
    if any("libreoffice" in part for part in parts):
        return "LibreOffice help is reserved for evaluation"
    if any("squad" in part or "korquad" in part for part in parts):
        return "SQuAD and KorQuAD are reserved for evaluation"
    if "faq" in parts:
        under_python = any(_PYTHON_DOC.match(part) for part in parts[: parts.index("faq")])
        if under_python:
            return "python3.11-doc's faq/ folder is reserved for evaluation"
    if python_doc_root is not None:
        try:
            rel = p.relative_to(Path(python_doc_root).absolute())
        except ValueError:
            rel = None
        if rel is not None and "faq" in [part.lower() for part in rel.parts]:
            return "python3.11-doc's faq/ folder is reserved for evaluation"
    return None


def refuse_reserved(path: str | Path, what: str, *, python_doc_root: str | Path | None = None) -> None:
    """Raise a one-line InputError when a path the user gave is reserved for evaluation."""
    reason = reserved_reason(path, python_doc_root=python_doc_root)
    if reason:
        raise InputError(f"{what} {path}: {reason}, never for training data")
