"""Bulk embedding with Ray Data: the CLI's embedding code, run by a pool of actors across machines.

Each actor loads one ``Embedder`` and keeps it for every batch it is sent, so a model is loaded once
per actor, not once per batch. The actor only reshapes Arrow batches around ``Embedder.encode``,
``encode_contextual`` and ``encode_documents``; vectors are therefore exactly those of
``diffembed encode`` for the same model and options.

``ray`` is imported inside functions only: ``import diffembed`` and the CLI must work without it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa

from diffembed import errors
from diffembed.atomic import building_dir
from diffembed.errors import DataFileError, DiffembedError, InputError
from diffembed.extras import require
from diffembed.inference.quantize import check_precision
from diffembed.sources import ID_FIELDS, RECORD_FILES, check_format, folder_files, record_format, text_lines

MODES = ("text", "chunks", "document")
# Records per Ray batch. The Embedder sorts each batch by length and packs it by a token budget, so a
# batch must be large enough for that to pay off, yet small enough to stream.
DEFAULT_BATCH_SIZE = {"text": 512, "chunks": 32, "document": 32}

# Models built in this process. An actor owns its process, so this shows whether a model was loaded
# once per actor (reported with actor_info=True).
_MODEL_LOADS = 0


def require_ray():
    """Import ray (with Ray Data) or explain how to get it."""
    require("ray.data", "ray", "bulk embedding")
    return require("ray", "ray", "bulk embedding")


# ---------------------------------------------------------------------------- the actor
class EmbedActor:
    """A Ray Data callable class: ``ds.map_batches(EmbedActor, fn_constructor_kwargs=..., compute=...)``.

    Output rows, as Arrow:
    * ``text`` mode: ``id``, ``text``, kept columns, ``embedding``;
    * ``chunks`` / ``document`` modes, one row per chunk: ``id`` (``{doc_id}_{chunk_index}`` as in
      ConTEB and ``diffembed encode``), ``doc_id``, ``chunk_index``, ``text`` (the chunk),
      ``char_start``/``char_end`` (document mode: offsets into the raw text), kept columns, ``embedding``.

    ``embedding`` is a fixed-size list of float32 (float32), int8 (int8, binary) or uint8 (ubinary,
    packed signs). Every record needs an id: Ray Data does not keep row order, so ids are what ties
    an output row to its input.
    """

    def __init__(self, model: str | None = None, *, mode: str = "text", text_column: str = "text",
                 chunks_column: str = "chunks", id_column: str | None = None, precision: str | None = None,
                 dimensions: int | None = None, normalize: bool = True, prompt: str | None = None,
                 prompt_name: str | None = None, truncate: bool = True, chunk_tokens: int | None = None,
                 overlap: int | None = None, device: str | None = None, dtype: str | None = None,
                 batch_tokens: int | None = None, keep_columns: Sequence[str] = (), include_text: bool = True,
                 actor_info: bool = False):
        self.mode = _check_mode(mode)
        self.text_column, self.chunks_column, self.id_column = text_column, chunks_column, id_column
        self.keep_columns = list(keep_columns)
        self.include_text = include_text
        self.actor_info = actor_info
        self.embedder = _load_embedder(model, device=device, dtype=dtype, batch_tokens=batch_tokens)
        self.pid = os.getpid()
        common = dict(precision=precision, dimensions=dimensions, normalize=normalize, show_progress=False)
        if self.mode == "text":
            self.options = dict(common, prompt=prompt, prompt_name=prompt_name, truncate=truncate)
        elif self.mode == "chunks":
            self.options = dict(common, prompt=prompt, prompt_name=prompt_name, overlap=overlap)
        else:
            self.options = dict(common, chunk_tokens=chunk_tokens, overlap=overlap)

    def __call__(self, batch) -> pa.Table:
        table = _to_table(batch)
        ids = self._ids(table)
        if self.mode == "text":
            texts = self._texts(table, ids)
            matrix = self.embedder.encode(texts, **self.options)
            columns = {"id": pa.array(ids, pa.string())}
            if self.include_text:
                columns["text"] = pa.array(texts, pa.string())
            return self._finish(columns, table, np.arange(len(ids)), matrix)
        if self.mode == "chunks":
            docs = self._chunks(table, ids)
            per_doc = self.embedder.encode_contextual(docs, **self.options) if docs else []
            chunk_texts = [c for doc in docs for c in doc]
            spans = None
        else:
            texts = self._texts(table, ids)
            embedded = self.embedder.encode_documents(texts, **self.options) if texts else []
            per_doc = [d.embeddings for d in embedded]
            chunk_texts = [c for d in embedded for c in d.chunks]
            spans = [s for d in embedded for s in d.spans]
        counts = [len(a) for a in per_doc]
        owner = np.repeat(np.arange(len(ids)), counts)
        doc_ids = [ids[i] for i in owner]
        chunk_index = [c for n in counts for c in range(n)]
        columns = {
            "id": pa.array([f"{d}_{c}" for d, c in zip(doc_ids, chunk_index)], pa.string()),
            "doc_id": pa.array(doc_ids, pa.string()),
            "chunk_index": pa.array(chunk_index, pa.int32()),
        }
        if self.include_text:
            columns["text"] = pa.array(chunk_texts, pa.string())
        if spans is not None:
            columns["char_start"] = pa.array([a for a, _ in spans], pa.int64())
            columns["char_end"] = pa.array([b for _, b in spans], pa.int64())
        matrix = np.concatenate(per_doc, axis=0) if per_doc else self._empty()
        return self._finish(columns, table, owner, matrix)

    # ------------------------------------------------------------------ helpers
    def _finish(self, columns: dict, table: pa.Table, owner: np.ndarray, matrix: np.ndarray) -> pa.Table:
        for name in self.keep_columns:
            if name in columns or name in ("embedding", "actor_pid", "actor_model_loads"):
                raise InputError(f"cannot keep column '{name}': the output already has a column of that name")
            if name not in table.column_names:
                raise InputError(f"cannot keep column '{name}': the input has no such column")
            columns[name] = table.column(name).take(pa.array(owner, pa.int64()))
        if self.actor_info:
            columns["actor_pid"] = pa.array(np.full(len(owner), self.pid, dtype=np.int64))
            columns["actor_model_loads"] = pa.array(np.full(len(owner), _MODEL_LOADS, dtype=np.int64))
        columns["embedding"] = embedding_array(matrix)
        return pa.table(columns)

    def _empty(self) -> np.ndarray:
        return self.embedder.encode([], **{k: v for k, v in self.options.items() if k in ("precision", "dimensions")})

    def _ids(self, table: pa.Table) -> list[str]:
        column = _id_column(table.column_names, self.id_column)
        values = table.column(column).to_pylist()
        for v in values:
            if v is None or (isinstance(v, str) and not v.strip()):
                raise InputError(f"a record has an empty '{column}'; every record needs an id")
        return [str(v) for v in values]

    def _texts(self, table: pa.Table, ids: list[str]) -> list[str]:
        name = self.text_column
        if name not in table.column_names:
            hint = f"; records have '{self.chunks_column}': use mode 'chunks'" if self.chunks_column in table.column_names else ""
            raise InputError(f"records have no '{name}' column (columns: {', '.join(table.column_names)}){hint}")
        texts = table.column(name).to_pylist()
        for i, t in zip(ids, texts):
            if not isinstance(t, str) or not t.strip():
                raise InputError(f"record '{i}': '{name}' must be a non-empty string")
        return texts

    def _chunks(self, table: pa.Table, ids: list[str]) -> list[list[str]]:
        name = self.chunks_column
        if name not in table.column_names:
            raise InputError(f"records have no '{name}' column (columns: {', '.join(table.column_names)})")
        docs = table.column(name).to_pylist()
        for i, doc in zip(ids, docs):
            if not isinstance(doc, list) or not doc or not all(isinstance(c, str) and c.strip() for c in doc):
                raise InputError(f"record '{i}': '{name}' must be a non-empty list of non-empty strings")
        return docs


def _load_embedder(model: str | None, **kwargs):
    """The one place a bulk worker builds a model, so every load is counted."""
    from diffembed import Embedder

    global _MODEL_LOADS
    embedder = Embedder(model, show_progress=False, **kwargs)
    _MODEL_LOADS += 1
    return embedder


def embedding_array(matrix: np.ndarray) -> pa.FixedSizeListArray:
    """(n, d) -> Arrow fixed_size_list<d>, keeping the dtype (float32, int8 or packed uint8)."""
    matrix = np.ascontiguousarray(matrix)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), int(matrix.shape[1]))


def _to_table(batch) -> pa.Table:
    """Accept any Ray batch format, so the actor also works with batch_format='pandas' or 'numpy'."""
    if isinstance(batch, pa.Table):
        return batch
    if isinstance(batch, dict):  # numpy format: list columns arrive as object arrays of arrays
        return pa.table({k: pa.array([x.tolist() if isinstance(x, np.ndarray) else x for x in v])
                         if v.dtype == object else pa.array(v) for k, v in batch.items()})
    return pa.Table.from_pandas(batch, preserve_index=False)


def _id_column(names: Sequence[str], id_column: str | None) -> str:
    """The column of record ids: ``id_column``, else the first of ``ID_FIELDS`` present (as encode)."""
    listed = ", ".join(names)
    if id_column is not None:
        if id_column not in names:
            raise InputError(f"records have no '{id_column}' column (columns: {listed})")
        return id_column
    found = next((c for c in ID_FIELDS if c in names), None)
    if found is None:
        wanted = " or ".join(f"'{c}'" for c in ID_FIELDS)
        raise InputError(
            f"records need an id ({wanted} column; columns: {listed}): Ray Data does not keep row order, so ids "
            "are what ties an output row to its input (txt input gets line numbers)"
        )
    return found


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise InputError(f"unknown mode '{mode}'; choose one of {', '.join(MODES)}")
    return mode


# ---------------------------------------------------------------------------- datasets
def embed_dataset(ds, *, model: str | None = None, mode: str = "text", text_column: str = "text",
                  chunks_column: str = "chunks", id_column: str | None = None, precision: str | None = None,
                  dimensions: int | None = None, normalize: bool = True, prompt: str | None = None,
                  prompt_name: str | None = None, truncate: bool = True, chunk_tokens: int | None = None,
                  overlap: int | None = None, keep_columns: Sequence[str] = (), include_text: bool = True,
                  concurrency: int = 1, batch_size: int | None = None, num_cpus_per_actor: float = 1,
                  num_gpus_per_actor: float = 0, device: str | None = None, dtype: str | None = None,
                  batch_tokens: int | None = None, actor_info: bool = False, check_resources: bool = True):
    """Lazily embed a Ray Dataset with ``concurrency`` actors; see ``EmbedActor`` for the output rows.

    ``id_column=None`` takes ``_id``, else ``id``. Nothing runs until the result is consumed; wrap the
    consumer in ``user_errors()`` to get diffembed's own error instead of Ray's wrapper.
    ``check_resources`` refuses a pool that leaves less than one CPU of the cluster as it is now: Ray
    Data's read and write tasks could not run, and the job would hang instead of failing.
    """
    ray = require_ray()
    _check_mode(mode)
    if precision is not None:
        check_precision(precision)
    if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1):
        raise InputError(f"dimensions must be a positive integer, got {dimensions!r}")
    if mode == "document" and (prompt or prompt_name):
        raise InputError("prompts are not supported in document mode (Embedder.encode_documents takes none)")
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise InputError(f"the number of actors must be a positive integer, got {concurrency!r}")
    size = DEFAULT_BATCH_SIZE[mode] if batch_size is None else batch_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise InputError(f"batch size must be a positive integer, got {batch_size!r}")
    if not num_cpus_per_actor > 0 or num_gpus_per_actor < 0:
        raise InputError("an actor needs a positive number of CPUs and a non-negative number of GPUs")
    taken = set(output_columns(mode, include_text, actor_info)) & set(keep_columns)
    if taken:
        raise InputError(f"cannot keep column(s) {', '.join(sorted(taken))}: the output already has columns of that name")
    _check_columns(ds.schema(fetch_if_missing=False), mode, text_column, chunks_column, id_column, keep_columns)
    if check_resources:
        check_cluster(ray, concurrency, num_cpus_per_actor, num_gpus_per_actor)
    kwargs = dict(model=model, mode=mode, text_column=text_column, chunks_column=chunks_column, id_column=id_column,
                  precision=precision, dimensions=dimensions, normalize=normalize, prompt=prompt,
                  prompt_name=prompt_name, truncate=truncate, chunk_tokens=chunk_tokens, overlap=overlap,
                  device=device, dtype=dtype, batch_tokens=batch_tokens, keep_columns=list(keep_columns),
                  include_text=include_text, actor_info=actor_info)
    remote = {"num_gpus": num_gpus_per_actor} if num_gpus_per_actor else {}
    return ds.map_batches(EmbedActor, fn_constructor_kwargs=kwargs, batch_size=size, batch_format="pyarrow",
                          compute=ray.data.ActorPoolStrategy(size=concurrency), num_cpus=num_cpus_per_actor, **remote)


def output_columns(mode: str, include_text: bool = True, actor_info: bool = False) -> list[str]:
    """The columns EmbedActor writes (kept input columns go before ``embedding``)."""
    names = ["id"] if mode == "text" else ["id", "doc_id", "chunk_index"]
    names += ["text"] if include_text else []
    names += ["char_start", "char_end"] if mode == "document" else []
    names += ["actor_pid", "actor_model_loads"] if actor_info else []
    return names + ["embedding"]


def check_cluster(ray, actors: int, cpus: float, gpus: float) -> None:
    """Refuse an actor pool the cluster cannot run next to Ray Data's read and write tasks.

    Those tasks ask for one CPU each; with less than one CPU left beside the actors, the job hangs.
    """
    total = ray.cluster_resources()
    cpu_total, gpu_total = total.get("CPU", 0), total.get("GPU", 0)
    if actors * cpus > cpu_total - 1:
        raise InputError(
            f"{actors} actor(s) x {cpus:g} CPU on a Ray cluster of {cpu_total:g} CPUs leave less than one CPU for "
            "reading and writing, so the job would hang; use fewer actors or fewer CPUs per actor (e.g. 0.5)"
        )
    if gpus and actors * gpus > gpu_total:
        raise InputError(f"{actors} actor(s) x {gpus:g} GPU need more than the {gpu_total:g} GPUs of the Ray cluster")


def _check_columns(schema, mode: str, text_column: str, chunks_column: str, id_column: str | None,
                   keep_columns: Iterable[str]) -> None:
    """Fail on the driver, before any model is loaded, when the schema is already known."""
    if schema is None:
        return
    names = list(schema.names)
    listed = ", ".join(names)
    needed = chunks_column if mode == "chunks" else text_column
    if needed not in names:
        hint = f"; records have '{chunks_column}': use mode 'chunks'" if mode != "chunks" and chunks_column in names else ""
        raise InputError(f"records have no '{needed}' column (columns: {listed}){hint}")
    _id_column(names, id_column)
    for name in keep_columns:
        if name not in names:
            raise InputError(f"cannot keep column '{name}': the input has no such column (columns: {listed})")


_ERROR_LINE = re.compile(r"^diffembed\.errors\.(\w+): (.*)$", re.MULTILINE)


@contextmanager
def user_errors():
    """Turn a diffembed error raised inside a Ray worker back into that error on the driver.

    Ray Data wraps exceptions from tasks and actors in its own types and drops the original object;
    only the remote traceback text keeps it, as its last ``diffembed.errors.X: message`` line.
    """
    try:
        yield
    except DiffembedError:
        raise
    except Exception as exc:  # noqa: BLE001 - Ray raises several wrapper types
        found = _ERROR_LINE.findall(str(exc))
        if not found:
            raise
        name, message = found[-1]
        cls = getattr(errors, name, None)
        if not (isinstance(cls, type) and issubclass(cls, DiffembedError)):
            raise
        raise cls(message) from exc


# ---------------------------------------------------------------------------- files
def resolve_inputs(inputs: str | os.PathLike | Sequence[str | os.PathLike], input_format: str = "auto") -> tuple[list[str], str]:
    """Input files (folders expanded, sorted; names starting with . or _ skipped, as Spark and Ray
    write ``_SUCCESS`` and the like) and their one format. URIs (s3://...) are passed through."""
    check_format(input_format)
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if not items:
        raise DataFileError("no input given")
    files: list[str] = []
    for item in items:
        s = str(item)
        if "://" in s:
            files.append(s)
            continue
        p = Path(s)
        if p.is_dir():
            found = folder_files(p, RECORD_FILES if input_format == "auto" else None, hidden=(".", "_"))
            if not found:
                raise DataFileError(f"input folder {p} holds no .jsonl, .parquet or .txt files")
            files.extend(str(f.resolve()) for f in found)
        elif p.is_file():
            files.append(str(p.resolve()))
        else:
            raise DataFileError(f"input file {p} does not exist")
    if input_format != "auto":
        return files, input_format
    kinds = {record_format(f) for f in files}
    if len(kinds) > 1:
        raise DataFileError(f"inputs mix formats ({', '.join(sorted(kinds))}); embed each format on its own")
    return files, kinds.pop()


def read_inputs(files: list[str], fmt: str):
    """A Ray Dataset of records; txt lines get ids like `diffembed encode` ("n", or "file:n" for several files)."""
    ray = require_ray()
    if fmt == "jsonl":
        # pyarrow's JSON reader reads newline-delimited JSON; no extension filter (.ndjson is fine too).
        return ray.data.read_json(files, file_extensions=None)
    if fmt == "parquet":
        return ray.data.read_parquet(files, file_extensions=None)
    # read_text would drop line numbers, and with them the only ids a txt file has.
    labels = _labels(files)
    return ray.data.read_binary_files(files, include_paths=True, file_extensions=None).map_batches(
        _txt_lines, fn_kwargs={"labels": labels}, batch_format="pyarrow", batch_size=1)


def _labels(files: list[str]) -> dict[str, str]:
    """Id prefix per file: none for one file (ids equal `diffembed encode`'s), else its name, else its path."""
    if len(files) == 1:
        return {}
    names = [Path(f).name for f in files]
    unique = len(set(names)) == len(names)
    return {f: (n if unique else f) for f, n in zip(files, names)}


def _txt_lines(batch: pa.Table, labels: dict[str, str]) -> pa.Table:
    ids, texts = [], []
    for data, path in zip(batch.column("bytes").to_pylist(), batch.column("path").to_pylist()):
        label = labels.get(path, path) if labels else ""
        lines = text_lines(data, path)
        ids.extend(f"{label}:{n}" if label else str(n) for n in range(len(lines)))
        texts.extend(lines)
    return pa.table({"_id": pa.array(ids, pa.string()), "text": pa.array(texts, pa.string())})


def embed_to_parquet(inputs, output_dir: str | os.PathLike, *, input_format: str = "auto", overwrite: bool = False,
                     **embed_kwargs) -> dict:
    """Read jsonl / parquet / txt with Ray Data, embed, and write a folder of Parquet files.

    The files go to a hidden sibling folder that is renamed to ``output_dir`` only once every file is
    written, so a failed or killed run never leaves a partial folder under the final name (a killed
    one can leave ``.NAME.*.tmp``). On a multi-node cluster the output must be on storage all nodes
    share, since every node writes its own part. Returns rows written, files and embedding type.
    """
    require_ray()
    out = Path(output_dir)
    if "://" in str(output_dir):
        raise DataFileError("the output must be a local or shared-filesystem folder: it is renamed into place")
    if out.exists() and not out.is_dir():
        raise DataFileError(f"output {out} exists and is not a folder")
    if out.exists() and not overwrite:
        raise DataFileError(f"output folder {out} already exists; pass --overwrite to replace it")
    files, fmt = resolve_inputs(inputs, input_format)
    with user_errors():
        ds = read_inputs(files, fmt)
        if fmt != "txt":
            _schema(ds, files)  # fetched once and kept by the dataset: embed_dataset checks columns before any model loads
        embedded = embed_dataset(ds, **embed_kwargs)
    try:
        with building_dir(out) as tmp:
            with user_errors():
                embedded.write_parquet(str(tmp))
            summary = _describe_output(tmp)
            if summary["rows"] == 0:
                raise DataFileError("the input holds no records")
    except OSError as exc:
        raise DataFileError(f"cannot move the output into {out}: {exc}") from exc
    return {**summary, "output": str(out), "input_files": len(files), "input_format": fmt}


_CAUSE_LINE = re.compile(r"^((?:\w+\.)*\w*(?:Error|Exception)): (.+)$", re.MULTILINE)


def _schema(ds, files: list[str]):
    """Fetch the schema (reads the first block), turning an unreadable file into a one-line error."""
    try:
        return ds.schema()
    except Exception as exc:  # noqa: BLE001 - pyarrow and Ray raise several types for unreadable files
        if isinstance(exc, DiffembedError):
            raise
        # Ray's text ends with retry advice; the reader's own error is the first non-Ray error line.
        causes = [(n, m) for n, m in _CAUSE_LINE.findall(str(exc)) if not n.startswith("ray.")]
        reason = f"{causes[0][0].rsplit('.', 1)[-1]}: {causes[0][1]}" if causes else type(exc).__name__
        where = files[0] if len(files) == 1 else f"{len(files)} input files"
        raise DataFileError(f"cannot read {where}: {reason}") from exc


def _describe_output(folder: Path) -> dict:
    import pyarrow.parquet as pq

    parts = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in parts)
    result = {"rows": rows, "files": len(parts)}
    if parts:
        field = pq.read_schema(parts[0]).field("embedding").type
        result.update(dim=field.list_size, dtype=np.dtype(field.value_type.to_pandas_dtype()).name)
    return result
