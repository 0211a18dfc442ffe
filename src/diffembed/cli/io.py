"""Read texts/documents from txt, jsonl or parquet and write embeddings as npy or parquet.

Files are read through ``diffembed.sources`` (formats, txt lines, parquet rows, record ids), whose
errors name the file and line of anything malformed. Writers go through a temporary file and an
atomic rename, so an interrupted run never leaves a half-written output in place of a good one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffembed.atomic import write_files
from diffembed.errors import DataFileError
from diffembed.jsonl import read_jsonl
from diffembed.sources import parquet_rows, record_format, record_id, text_lines


@dataclass
class Records:
    ids: list[str]
    texts: list[str] | None = None
    documents: list[list[str]] | None = None

    @property
    def contextual(self) -> bool:
        return self.documents is not None

    def __len__(self) -> int:
        return len(self.ids)


def read_records(path: str | Path, fmt: str = "auto", text_field: str = "text", chunks_field: str = "chunks") -> Records:
    p = Path(path)
    if not p.exists():
        raise DataFileError(f"input file {p} does not exist")
    if not p.is_file():
        raise DataFileError(f"input {p} is not a file")
    kind = record_format(p, fmt)
    try:
        if kind == "txt":
            return _read_txt(p)
        if kind == "jsonl":
            return _from_rows(p, read_jsonl(p), text_field, chunks_field)
        return _from_rows(p, parquet_rows(p), text_field, chunks_field)
    except OSError as exc:
        raise DataFileError(f"cannot read {p}: {exc}") from exc


def _read_txt(p: Path) -> Records:
    texts = text_lines(p.read_bytes(), p)
    if not texts:
        raise DataFileError(f"{p} holds no texts")
    return Records(ids=[str(i) for i in range(len(texts))], texts=texts)


def _from_rows(p: Path, rows, text_field: str, chunks_field: str) -> Records:
    ids: list[str] = []
    texts: list[str] = []
    docs: list[list[str]] = []
    mode = None
    for n, row in rows:
        row_mode = "chunks" if chunks_field in row and row[chunks_field] is not None else "text" if text_field in row else None
        if row_mode is None:
            raise DataFileError(f"{p}:{n}: record has neither '{text_field}' nor '{chunks_field}'")
        if mode is None:
            mode = row_mode
        elif row_mode != mode:
            raise DataFileError(f"{p}:{n}: record has '{row_mode}' but earlier records have '{mode}'; do not mix them")
        ident = record_id(row)
        ids.append(str(len(ids) if ident is None else ident))
        value = row[chunks_field if mode == "chunks" else text_field]
        if mode == "chunks":
            if not isinstance(value, list) or not value or not all(isinstance(c, str) and c.strip() for c in value):
                raise DataFileError(f"{p}:{n}: '{chunks_field}' must be a non-empty list of non-empty strings")
            docs.append(value)
        else:
            if not isinstance(value, str) or not value.strip():
                raise DataFileError(f"{p}:{n}: '{text_field}' must be a non-empty string")
            texts.append(value)
    if mode is None:
        raise DataFileError(f"{p} holds no records")
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataFileError(
            f"{p}: id '{dup}' appears more than once (records without _id/id take their 0-based position as id)"
        )
    return Records(ids=ids, documents=docs) if mode == "chunks" else Records(ids=ids, texts=texts)


def output_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return "npy"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise DataFileError(f"output {path} must end in .npy or .parquet")


def write_embeddings(path: str | Path, ids: list[str], embeddings: np.ndarray,
                     doc_ids: list[str] | None = None, chunk_index: list[int] | None = None) -> list[Path]:
    """Write embeddings and their ids; returns the files written."""
    out = Path(path)
    fmt = output_format(out)
    if fmt == "npy":
        ids_path = out.with_suffix(".ids.txt")

        def save(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.save(f, embeddings)

        write_files({out: save, ids_path: lambda tmp: Path(tmp).write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")})
        return [out, ids_path]

    import pyarrow as pa
    import pyarrow.parquet as pq

    width = embeddings.shape[1]
    values = pa.array(embeddings.reshape(-1))
    columns = {"id": pa.array(ids, pa.string())}
    if doc_ids is not None:
        columns["doc_id"] = pa.array(doc_ids, pa.string())
        columns["chunk_index"] = pa.array(chunk_index, pa.int32())
    columns["embedding"] = pa.FixedSizeListArray.from_arrays(values, width)
    table = pa.table(columns)
    write_files({out: lambda tmp: pq.write_table(table, tmp)})
    return [out]
