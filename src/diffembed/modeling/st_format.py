"""The sentence-transformers folder format, both ends: what diffembed writes is what it reads.

A sentence-transformers folder is ``modules.json`` plus one small config per module. Each part below
saves and loads its own file, as sentence-transformers' modules do:

* ``TransformerConfig``: ``sentence_bert_config.json`` next to the backbone (``max_seq_length``,
  ``do_lower_case``);
* ``PoolingConfig``: ``1_Pooling/config.json`` (mean / cls / last-token, ``include_prompt``). Both
  spellings are read: the ``pooling_mode_*`` flags of sentence-transformers <= 5 and the single
  ``pooling_mode`` of 6.x, where ``pooling_mode`` wins as it does there;
* Normalize: an empty ``2_Normalize`` folder;
* ``ModelConfig``: ``config_sentence_transformers.json`` (prompts, default prompt, similarity).

Writing uses the spellings every sentence-transformers version reads (the flags, and
``max_seq_length`` in ``sentence_bert_config.json``), so ``SentenceTransformer(folder)`` loads what
``write_st_files`` wrote. Anything diffembed cannot reproduce (Dense, max pooling, ...) is refused
when read, since skipping it would give vectors other than the model's own. The reader also takes
``diffembed.json`` (prompts, pooling, default precision for folders sentence-transformers cannot
describe); the writer never writes it, since sentence-transformers would ignore it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffembed.errors import ModelLoadError

POOLING_MODES = ("mean", "cls", "last")
SIMILARITY_FNS = ("cosine", "dot", "euclidean", "manhattan")

MODULES_FILE = "modules.json"
TRANSFORMER_FILE = "sentence_bert_config.json"
MODEL_CONFIG_FILE = "config_sentence_transformers.json"
OWN_FILE = "diffembed.json"
POOLING_DIR = "1_Pooling"
NORMALIZE_DIR = "2_Normalize"

# Older sentence-transformers releases named the Transformer config after the architecture; 6.x
# still reads them, in this order.
_TRANSFORMER_FILES = (TRANSFORMER_FILE, "sentence_roberta_config.json", "sentence_distilbert_config.json",
                      "sentence_camembert_config.json", "sentence_albert_config.json",
                      "sentence_xlm-roberta_config.json", "sentence_xlnet_config.json")

# Pooling names: sentence-transformers' on the left, diffembed's on the right (None: not implemented).
_ST_POOLING = {"mean": "mean", "cls": "cls", "lasttoken": "last", "max": None, "mean_sqrt_len_tokens": None,
               "weightedmean": None}
_DIFFEMBED_TO_ST = {"mean": "mean", "cls": "cls", "last": "lasttoken"}
# The <= 5 flags, in sentence-transformers' concatenation order. An absent flag means its default:
# mean on, the others off; several on means the outputs are concatenated.
_POOLING_FLAGS = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                  "pooling_mode_mean_tokens": "mean", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                  "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}

# modules.json entries diffembed writes, by the class paths every sentence-transformers version maps.
_MODULE_TYPES = {"Transformer": "sentence_transformers.models.Transformer",
                 "Pooling": "sentence_transformers.models.Pooling",
                 "Normalize": "sentence_transformers.models.Normalize"}


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc


def _read_object(path: Path) -> dict[str, Any]:
    data = read_json(path)
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} is not a JSON object")
    return data


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _check_bool(value: Any, key: str, where: Path) -> bool:
    if not isinstance(value, bool):
        raise ModelLoadError(f"{where}: {key} must be true or false, got {value!r}")
    return value


# ---------------------------------------------------------------------------- parts
@dataclass(frozen=True)
class TransformerConfig:
    """``sentence_bert_config.json``: the token window (None: the tokenizer's and the model's limits)
    and whether inputs are lower-cased before tokenizing."""

    max_seq_length: int | None = None
    do_lower_case: bool = False

    def save(self, folder: Path) -> None:
        _write_json(folder / TRANSFORMER_FILE, {"max_seq_length": self.max_seq_length,
                                                "do_lower_case": self.do_lower_case})

    @classmethod
    def load(cls, *folders: Path) -> TransformerConfig:
        """The first config found in ``folders`` (the backbone's folder, then the root); defaults if none."""
        path = next((f / name for f in folders for name in _TRANSFORMER_FILES if (f / name).is_file()), None)
        if path is None:
            return cls()
        data = _read_object(path)
        limit = data.get("max_seq_length")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ModelLoadError(f"{path}: max_seq_length must be a positive integer, got {limit!r}")
        return cls(max_seq_length=limit, do_lower_case=_check_bool(data.get("do_lower_case", False),
                                                                    "do_lower_case", path))


@dataclass(frozen=True)
class PoolingConfig:
    """``1_Pooling/config.json``: one pooling mode, and whether prompt tokens count in it."""

    mode: str = "mean"
    include_prompt: bool = True
    dimension: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in POOLING_MODES:
            raise ValueError(f"unknown pooling '{self.mode}'; choose one of {', '.join(POOLING_MODES)}")

    def save(self, folder: Path) -> None:
        if self.dimension is None:
            raise ValueError("PoolingConfig.save needs the embedding dimension")
        folder.mkdir(parents=True, exist_ok=True)
        on = _DIFFEMBED_TO_ST[self.mode]
        _write_json(folder / "config.json", {
            "word_embedding_dimension": int(self.dimension),
            **{flag: mode == on for flag, mode in _POOLING_FLAGS.items()},
            "include_prompt": self.include_prompt,
        })

    @classmethod
    def load(cls, folder: Path) -> PoolingConfig:
        path = folder / "config.json"
        if not path.is_file():
            raise ModelLoadError(f"{MODULES_FILE} names a Pooling module without {path}")
        data = _read_object(path)
        if data.get("pooling_mode") is not None:  # 6.x: wins over any flags, as in sentence-transformers
            raw = data["pooling_mode"]
            modes = [raw] if isinstance(raw, str) else list(raw) if isinstance(raw, list) else [repr(raw)]
        else:
            modes = [mode for flag, mode in _POOLING_FLAGS.items() if data.get(flag, flag == "pooling_mode_mean_tokens")]
            modes = modes or ["mean"]  # sentence-transformers falls back to mean when every flag is off
        if len(modes) != 1 or _ST_POOLING.get(str(modes[0])) is None:
            raise ModelLoadError(f"{path} asks for {' + '.join(map(str, modes))} pooling; "
                                 "diffembed pools by exactly one of mean, cls or lasttoken")
        dim = data.get("embedding_dimension", data.get("word_embedding_dimension"))
        return cls(mode=_ST_POOLING[str(modes[0])],
                   include_prompt=_check_bool(data.get("include_prompt", True), "include_prompt", path),
                   dimension=dim if isinstance(dim, int) and not isinstance(dim, bool) else None)


@dataclass(frozen=True)
class ModelConfig:
    """``config_sentence_transformers.json``: named prompts, the one applied when none is given, and
    the similarity the model was trained for."""

    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    similarity_fn_name: str | None = "cosine"

    def __post_init__(self) -> None:
        if self.default_prompt_name is not None and self.default_prompt_name not in self.prompts:
            raise ValueError(f"default prompt '{self.default_prompt_name}' is not one of the prompts")
        if self.similarity_fn_name is not None and self.similarity_fn_name not in SIMILARITY_FNS:
            raise ValueError(f"unknown similarity '{self.similarity_fn_name}'; choose one of {', '.join(SIMILARITY_FNS)}")

    def save(self, folder: Path) -> None:
        _write_json(folder / MODEL_CONFIG_FILE, {"prompts": dict(self.prompts),
                                                 "default_prompt_name": self.default_prompt_name,
                                                 "similarity_fn_name": self.similarity_fn_name})

    @classmethod
    def load(cls, folder: Path) -> ModelConfig:
        path = folder / MODEL_CONFIG_FILE
        if not path.is_file():
            return cls(similarity_fn_name=None)
        data = _read_object(path)
        prompts = _check_prompts(data.get("prompts") or {}, path)
        default = data.get("default_prompt_name")
        if default is not None and default not in prompts:
            raise ModelLoadError(f"{path}: default_prompt_name {default!r} is not one of its prompts")
        similarity = data.get("similarity_fn_name")
        if similarity is not None and similarity not in SIMILARITY_FNS:
            raise ModelLoadError(f"{path}: unknown similarity_fn_name {similarity!r}")
        return cls(prompts=prompts, default_prompt_name=default, similarity_fn_name=similarity)


def _check_prompts(prompts: Any, where: Path) -> dict[str, str]:
    if not isinstance(prompts, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in prompts.items()):
        raise ModelLoadError(f"{where}: prompts must map names to strings")
    return dict(prompts)


@dataclass(frozen=True)
class OwnConfig:
    """``diffembed.json``: settings for folders sentence-transformers cannot describe (read only)."""

    pooling: str | None = None
    default_precision: str | None = None
    prompts: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, folder: Path) -> OwnConfig:
        path = folder / OWN_FILE
        if not path.is_file():
            return cls()
        data = _read_object(path)
        pooling = data.get("pooling")
        if pooling is not None and pooling not in POOLING_MODES:
            raise ModelLoadError(f"{path}: unknown pooling {pooling!r}; choose one of {', '.join(POOLING_MODES)}")
        precision = data.get("default_precision")
        if precision is not None and not isinstance(precision, str):
            raise ModelLoadError(f"{path}: default_precision must be a string, got {precision!r}")
        return cls(pooling=pooling, default_precision=precision, prompts=_check_prompts(data.get("prompts") or {}, path))


# ---------------------------------------------------------------------------- the whole folder
@dataclass(frozen=True)
class STFolder:
    """What a sentence-transformers folder says, part by part.

    ``modules`` lists the modules.json kinds in order (empty: no modules.json); ``transformer_dir`` is
    the backbone's folder relative to the root; ``quantizer`` marks pplx's ``st_quantize`` module, which
    is read (int8 by default) but never written.
    """

    transformer: TransformerConfig = TransformerConfig()
    pooling: PoolingConfig | None = PoolingConfig()
    normalize: bool = True
    model: ModelConfig = ModelConfig()
    modules: tuple[str, ...] = ()
    transformer_dir: str = ""
    quantizer: bool = False


def write_st_files(folder: str | Path, st: STFolder) -> None:
    """Write the sentence-transformers files for a backbone already saved in ``folder``."""
    root = Path(folder)
    if st.quantizer:
        raise ValueError("diffembed does not write pplx's st_quantize module (it is remote code)")
    if st.pooling is None:
        raise ValueError("a sentence-transformers folder needs a Pooling module to give one vector per text")
    modules = [("Transformer", ""), ("Pooling", POOLING_DIR)] + ([("Normalize", NORMALIZE_DIR)] if st.normalize else [])
    _write_json(root / MODULES_FILE, [{"idx": i, "name": str(i), "path": path, "type": _MODULE_TYPES[kind]}
                                      for i, (kind, path) in enumerate(modules)])
    st.transformer.save(root)
    st.pooling.save(root / POOLING_DIR)
    if st.normalize:
        (root / NORMALIZE_DIR).mkdir(exist_ok=True)
    st.model.save(root)


def _is_quantizer(module_type: str) -> bool:
    return module_type.startswith("st_quantize") or "quantiz" in module_type.lower()


def read_st_folder(folder: str | Path) -> STFolder:
    """Read every sentence-transformers file in ``folder``. Without ``modules.json`` there is no
    Pooling part, but a ``sentence_bert_config.json`` or ``config_sentence_transformers.json`` lying
    there still counts."""
    root = Path(folder)
    modules_path = root / MODULES_FILE
    entries = read_json(modules_path) if modules_path.exists() else []
    if not isinstance(entries, list):
        raise ModelLoadError(f"{modules_path} is not a list of modules")
    kinds: list[str] = []
    transformer_dir, pooling, quantizer = "", None, False
    for i, module in enumerate(entries):
        mtype = str(module.get("type", "")) if isinstance(module, dict) else ""
        mpath = str(module.get("path", "")) if isinstance(module, dict) else ""
        kind = mtype.rsplit(".", 1)[-1]
        if kind == "Transformer":
            transformer_dir = mpath
        elif kind == "Pooling":
            pooling = PoolingConfig.load(root / mpath)
        elif kind == "Normalize":
            pass
        elif _is_quantizer(mtype):
            kind, quantizer = "quantizer", True
        else:
            raise ModelLoadError(
                f"{modules_path} module {i} is {mtype or 'untyped'}, which diffembed does not implement "
                f"(it runs {', '.join(_MODULE_TYPES)} and pplx's st_quantize); skipping it would give vectors "
                "other than the model's own")
        kinds.append(kind)
    return STFolder(
        transformer=TransformerConfig.load(root / transformer_dir, root),
        pooling=pooling, normalize="Normalize" in kinds, model=ModelConfig.load(root),
        modules=tuple(kinds), transformer_dir=transformer_dir, quantizer=quantizer,
    )
