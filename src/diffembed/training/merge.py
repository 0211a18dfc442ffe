"""Merge model folders tensor by tensor: SLERP of two checkpoints, or a weighted mean of N.

pplx-embed's released dense model is a SLERP merge of two stage checkpoints (contextual and triplet,
both branched from the pair stage); :func:`merge_folders` makes such a merge from the folders the
training stages export, and the result is again a folder that ``Embedder`` and plain
``SentenceTransformer`` load.

SLERP is mergekit's per-tensor formula, exactly: each tensor is flattened to one vector, the angle
``theta = arccos(a_hat . b_hat)`` comes from the *normalised* vectors, and the result is
``sin((1-t) theta) / sin(theta) * a + sin(t theta) / sin(theta) * b`` on the *original* vectors. For
equal norms this is the textbook great-circle interpolation scaled by that norm (the midpoint of two
orthogonal vectors of norm r has norm r); for unequal norms the magnitude follows the same
coefficients, not a straight line. Near-parallel tensors (``|cos| > 0.9995``, where ``sin(theta)``
loses precision) use linear interpolation ``(1-t) a + t b``, as mergekit does. Where either tensor
is (almost) all zeros, where mergekit's normalisation leaves the zero vector and gives
``sin(t pi/2) * b``, this module also uses linear interpolation, the only sensible path between a zero
tensor and another. ``t = 0`` gives A and ``t = 1`` gives B exactly.

Arithmetic is float32 (each tensor's norms and dot product too); each output tensor keeps the first
input's dtype. Integer and boolean tensors (buffers) are not interpolated: they must be equal in all
inputs and are copied.

Tied weights stay tied: a safetensors file holds each tied tensor once (transformers drops the tied
alias, e.g. ``lm_head.weight`` when ``tie_word_embeddings`` is set), every input must store the same
tensor names, the output stores exactly those names, and the config that declares the tie is the
first input's. A file that does store both names of an alias gets the same result for both, since
each output tensor is a function of the inputs' tensors of that name only.

Compatibility is checked before any tensor is read: same ``config.json`` files (ignoring the
transformers version, dtype and ``_name_or_path``), same ``modules.json`` / sentence-transformers
config and pooling, same tokenizer vocabulary, same weight files, tensor names, shapes. The output
folder is the first input's non-weight files (config, tokenizer, sentence-transformers modules; not
its README model card or ``diffembed_train.json``, which describe another model, nor weights in
other formats), the merged safetensors in the first input's layout (shards included), and
``diffembed_merge.json`` (inputs, method, t or weights). It is published atomically.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from diffembed.atomic import building_dir
from diffembed.errors import InputError, ModelLoadError

Method = Literal["slerp", "linear"]
DOT_THRESHOLD = 0.9995
NORM_EPS = 1e-8
PROVENANCE_FILE = "diffembed_merge.json"
INDEX_SUFFIX = ".safetensors.index.json"

# Non-weight files that are not copied into the merged folder.
_SKIP_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf")
# diffembed_train.json: a training stage's provenance, which describes that input, not the merge
_SKIP_NAMES = {"README.md", PROVENANCE_FILE, "diffembed_train.json"}
# config.json keys that may differ between checkpoints of one model.
_CONFIG_IGNORED = {"transformers_version", "torch_dtype", "dtype", "_name_or_path", "_commit_hash"}


# --- tensor math -------------------------------------------------------------------------------------


def lerp(a: Tensor, b: Tensor, t: float) -> Tensor:
    """``(1 - t) * a + t * b`` in float32."""
    return (1.0 - t) * a.float() + t * b.float()


def slerp(a: Tensor, b: Tensor, t: float, *, dot_threshold: float = DOT_THRESHOLD,
          eps: float = NORM_EPS) -> tuple[Tensor, bool]:
    """mergekit's SLERP of two same-shape tensors as flat vectors -> (float32 result, used lerp)."""
    a32, b32 = a.float(), b.float()
    norm_a = float(torch.linalg.vector_norm(a32))
    norm_b = float(torch.linalg.vector_norm(b32))
    if norm_a <= eps or norm_b <= eps or not (math.isfinite(norm_a) and math.isfinite(norm_b)):
        return lerp(a32, b32, t), True
    dot = float(torch.dot(a32.flatten(), b32.flatten())) / (norm_a * norm_b)
    if abs(dot) > dot_threshold:
        return lerp(a32, b32, t), True
    theta = math.acos(max(-1.0, min(1.0, dot)))
    sin_theta = math.sin(theta)
    theta_t = theta * t
    s0 = math.sin(theta - theta_t) / sin_theta
    s1 = math.sin(theta_t) / sin_theta
    return s0 * a32 + s1 * b32, False


def weighted_mean(tensors: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    """``sum(w_i * x_i) / sum(w_i)`` in float32."""
    total = float(sum(weights))
    out = torch.zeros(tensors[0].shape, dtype=torch.float32)
    for x, w in zip(tensors, weights):
        out.add_(x.float(), alpha=w / total)
    return out


# --- folders -----------------------------------------------------------------------------------------


@dataclass
class MergeResult:
    output: str
    method: str
    inputs: list[str]
    t: float | None = None
    weights: list[float] | None = None
    tensors: int = 0
    parameters: int = 0
    slerped: int = 0
    interpolated_linearly: int = 0
    copied: int = 0
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Layout:
    """Where each tensor lives: {weight group: {tensor name: file relative to the folder}}.
    A group is an index (``model.safetensors.index.json``, shards and all) or one standalone file."""

    root: Path
    groups: dict[str, dict[str, str]]
    index_files: list[str]

    def file_of(self, group: str, name: str) -> Path:
        return self.root / self.groups[group][name]


def _read_layout(root: Path) -> _Layout:
    from safetensors import safe_open

    groups: dict[str, dict[str, str]] = {}
    indexed: set[str] = set()
    index_files: list[str] = []
    for index in sorted(_visible_files(root, lambda p: p.name.endswith(INDEX_SUFFIX))):
        rel = index.relative_to(root).as_posix()
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelLoadError(f"{index} is not a safetensors index: {exc}") from exc
        files = {name: (index.parent / f).relative_to(root).as_posix() for name, f in weight_map.items()}
        for f in set(files.values()):
            if not (root / f).is_file():
                raise ModelLoadError(f"{index} names {f}, which is missing")
        groups[rel] = files
        indexed.update(files.values())
        index_files.append(rel)
    for path in sorted(_visible_files(root, lambda p: p.suffix == ".safetensors")):
        rel = path.relative_to(root).as_posix()
        if rel in indexed:
            continue
        try:
            with safe_open(str(path), framework="pt") as f:
                groups[rel] = {name: rel for name in f.keys()}
        except Exception as exc:  # safetensors raises its own error types for a bad header
            raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    if not groups:
        raise ModelLoadError(f"{root} has no safetensors weights (model.safetensors); diffembed merges safetensors only")
    return _Layout(root, groups, index_files)


def _visible_files(root: Path, keep: Callable[[Path], bool]) -> Iterator[Path]:
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if path.is_file() and keep(path):
            yield path


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc


def _config_view(path: Path) -> Any:
    data = _read_json(path)
    if path.name == "config.json" and isinstance(data, dict):
        return {k: v for k, v in data.items() if k not in _CONFIG_IGNORED}
    if path.name == "tokenizer.json" and isinstance(data, dict):
        return {"model": data.get("model"), "added_tokens": data.get("added_tokens")}
    return data


def _first_difference(a: Any, b: Any) -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            if a.get(key) != b.get(key):
                return f"'{key}' is {json.dumps(a.get(key))[:60]} vs {json.dumps(b.get(key))[:60]}"
    return "contents differ"


_COMPARED = ("config.json", "modules.json", "sentence_bert_config.json", "tokenizer.json")


def check_compatible(folders: Sequence[Path], layouts: Sequence[_Layout]) -> None:
    """Raise InputError naming the first difference that makes a tensor-wise merge meaningless."""
    first = folders[0]
    compared = {p.relative_to(first).as_posix() for p in _visible_files(first, lambda p: p.name in _COMPARED)}
    for folder, layout in zip(folders[1:], layouts[1:]):
        other = {p.relative_to(folder).as_posix() for p in _visible_files(folder, lambda p: p.name in _COMPARED)}
        if other != compared:
            missing = sorted(compared ^ other)[0]
            raise InputError(f"cannot merge {first} and {folder}: only one of them has {missing}")
        for rel in sorted(compared):
            va, vb = _config_view(first / rel), _config_view(folder / rel)
            if va != vb:
                raise InputError(f"cannot merge {first} and {folder}: {rel} differs ({_first_difference(va, vb)})")
        if set(layout.groups) != set(layouts[0].groups):
            raise InputError(f"cannot merge {first} and {folder}: their weight files differ "
                             f"({', '.join(sorted(layouts[0].groups))} vs {', '.join(sorted(layout.groups))})")
        for group, names in layouts[0].groups.items():
            theirs = layout.groups[group]
            if set(names) != set(theirs):
                diff = sorted(set(names) ^ set(theirs))
                raise InputError(f"cannot merge {first} and {folder}: {group} holds different tensors "
                                 f"({len(diff)} not in both, e.g. '{diff[0]}')")


def _check_args(folders: Sequence[Path], method: str, t: float | None, weights: Sequence[float] | None) -> None:
    if method not in ("slerp", "linear"):
        raise InputError(f"unknown merge method '{method}'; choose slerp or linear")
    if method == "slerp":
        if len(folders) != 2:
            raise InputError(f"SLERP merges exactly two models, got {len(folders)}; use --linear for a mean of N")
        if t is None or not 0.0 <= t <= 1.0 or math.isnan(t):
            raise InputError(f"--t must be between 0 and 1 (0 gives the first model, 1 the second), got {t}")
        if weights is not None:
            raise InputError("--weights applies to --linear, not to SLERP (use --t)")
    else:
        if len(folders) < 2:
            raise InputError(f"a merge needs at least two models, got {len(folders)}")
        if weights is not None:
            if len(weights) != len(folders):
                raise InputError(f"--weights has {len(weights)} values for {len(folders)} models")
            if any(w < 0 or math.isnan(w) for w in weights) or sum(weights) <= 0:
                raise InputError("--weights must be non-negative with a positive sum")
    for folder in folders:
        if not folder.is_dir():
            raise ModelLoadError(f"model folder {folder} does not exist")


def merge_folders(inputs: Sequence[str | Path], output: str | Path, *, method: Method = "slerp",
                  t: float | None = 0.5, weights: Sequence[float] | None = None,
                  progress: bool = True) -> MergeResult:
    """Merge model folders into ``output`` (see the module docstring); returns a summary."""
    folders = [Path(p).expanduser() for p in inputs]
    out = Path(output).expanduser()
    _check_args(folders, method, t, weights)
    if any(out.resolve() == f.resolve() for f in folders):
        raise InputError(f"the output {out} is one of the inputs; write the merge to a new folder")
    layouts = [_read_layout(f) for f in folders]
    check_compatible(folders, layouts)
    mean_weights = [float(w) for w in weights] if weights is not None else [1.0] * len(folders)

    result = MergeResult(output=str(out), method=method, inputs=[str(f.resolve()) for f in folders],
                         t=float(t) if method == "slerp" and t is not None else None,
                         weights=mean_weights if method == "linear" else None)
    first = layouts[0]
    total = sum(len(names) for names in first.groups.values())
    with building_dir(out) as tmp, ExitStack() as stack:
        _copy_non_weights(folders[0], tmp)
        bar = stack.enter_context(_progress(total, progress))
        handles = _Handles(stack)
        for group in sorted(first.groups):
            by_file: dict[str, list[str]] = {}
            for name, rel in first.groups[group].items():
                by_file.setdefault(rel, []).append(name)
            for rel, names in sorted(by_file.items()):
                merged: dict[str, Tensor] = {}
                for name in sorted(names):
                    tensors = [handles.get(layout.file_of(group, name), name) for layout in layouts]
                    merged[name] = _merge_tensor(name, tensors, folders, method, t, mean_weights, result)
                    result.tensors += 1
                    result.parameters += merged[name].numel()
                    bar.update(1)
                _save(merged, tmp / rel, handles.metadata(first.root / rel))
                result.files.append(rel)
        _write_provenance(tmp / PROVENANCE_FILE, result)
    return result


def _merge_tensor(name: str, tensors: list[Tensor], folders: Sequence[Path], method: str, t: float | None,
                  weights: list[float], result: MergeResult) -> Tensor:
    ref = tensors[0]
    for tensor, folder in zip(tensors[1:], folders[1:]):
        if tensor.shape != ref.shape:
            raise InputError(f"cannot merge: tensor '{name}' has shape {tuple(ref.shape)} in {folders[0]} "
                             f"but {tuple(tensor.shape)} in {folder}")
    if not ref.is_floating_point():
        for tensor, folder in zip(tensors[1:], folders[1:]):
            if tensor.dtype != ref.dtype or not torch.equal(tensor, ref):
                raise InputError(f"cannot merge: non-float tensor '{name}' differs between {folders[0]} and {folder}")
        result.copied += 1
        return ref
    for tensor, folder in zip(tensors[1:], folders[1:]):
        if not tensor.is_floating_point():
            raise InputError(f"cannot merge: tensor '{name}' is {ref.dtype} in {folders[0]} but {tensor.dtype} in {folder}")
    if method == "slerp":
        assert t is not None
        value, linear = slerp(tensors[0], tensors[1], t)
        if linear:
            result.interpolated_linearly += 1
        else:
            result.slerped += 1
    else:
        value = weighted_mean(tensors, weights)
    return value.to(ref.dtype).contiguous()


class _Handles:
    """Open safetensors files once each, for the whole merge."""

    def __init__(self, stack: ExitStack) -> None:
        self.stack = stack
        self.open: dict[Path, Any] = {}

    def _handle(self, path: Path) -> Any:
        from safetensors import safe_open

        if path not in self.open:
            self.open[path] = self.stack.enter_context(safe_open(str(path), framework="pt", device="cpu"))
        return self.open[path]

    def get(self, path: Path, name: str) -> Tensor:
        try:
            return self._handle(path).get_tensor(name)
        except Exception as exc:  # a truncated or corrupt file
            raise ModelLoadError(f"cannot read tensor '{name}' from {path}: {exc}") from exc

    def metadata(self, path: Path) -> dict[str, str]:
        return dict(self._handle(path).metadata() or {"format": "pt"})


def _save(tensors: dict[str, Tensor], path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)


def _copy_non_weights(src: Path, dst: Path) -> None:
    for path in sorted(_visible_files(src, lambda p: True)):
        rel = path.relative_to(src)
        if path.name in _SKIP_NAMES and len(rel.parts) == 1:
            continue
        if path.name.endswith(_SKIP_SUFFIXES):
            continue
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dst / rel)  # follows symlinks (hub snapshots link into blobs)
    # empty module folders (e.g. 2_Normalize) must exist for sentence-transformers
    for path in src.rglob("*"):
        rel = path.relative_to(src)
        if path.is_dir() and not any(part.startswith(".") for part in rel.parts):
            (dst / rel).mkdir(parents=True, exist_ok=True)


def _write_provenance(path: Path, result: MergeResult) -> None:
    from diffembed import __version__

    data = {"method": result.method, "inputs": result.inputs, "t": result.t, "weights": result.weights,
            "slerp": {"formula": "mergekit", "dot_threshold": DOT_THRESHOLD} if result.method == "slerp" else None,
            "tensors": result.tensors, "diffembed_version": __version__}
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="merge", unit="tensor", dynamic_ncols=True)
