"""`diffembed encode`: embed a file of texts (or chunked documents) into npy or parquet."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from diffembed.cli.common import DeviceOpt, DtypeOpt, ModelOpt, err_console, print_json


def encode(
    input: Path = typer.Argument(..., help="txt (one text per line), jsonl (a 'text' or 'chunks' field) or parquet."),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write: .npy (plus OUTPUT.ids.txt) or .parquet."),
    model: str = ModelOpt,
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    input_format: str = typer.Option("auto", "--input-format", help="auto, txt, jsonl or parquet."),
    text_field: str = typer.Option("text", help="Field holding the text in jsonl/parquet."),
    chunks_field: str = typer.Option("chunks", help="Field holding a document's ordered chunks (contextual mode)."),
    precision: str = typer.Option(None, help="float32, int8, binary or ubinary (default: the model's own)."),
    dimensions: int = typer.Option(None, help="Matryoshka truncation to this many dimensions."),
    prompt: str = typer.Option(None, help="Text prepended to every input."),
    prompt_name: str = typer.Option(None, help="A prompt the model defines, e.g. query."),
    batch_tokens: int = typer.Option(None, help="Padded-token budget per forward batch (default: 2048 on CPU, 16384 on CUDA)."),
    normalize: bool = typer.Option(True, "--normalize/--no-normalize", help="L2-normalise float32 output."),
    truncate: bool = typer.Option(True, "--truncate/--no-truncate", help="Cut texts longer than the model window (else error)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
) -> None:
    """Embed every record of INPUT. Records with 'chunks' are late-chunked as one document each."""
    from diffembed import Embedder
    from diffembed.cli.io import output_format, read_records, write_embeddings

    output_format(output)  # fail on a bad output name before loading anything
    records = read_records(input, input_format, text_field=text_field, chunks_field=chunks_field)
    embedder = Embedder(model, device=device, dtype=dtype, batch_tokens=batch_tokens)
    start = time.perf_counter()
    common = dict(precision=precision, dimensions=dimensions, normalize=normalize, prompt=prompt, prompt_name=prompt_name)
    if records.contextual:
        import numpy as np

        per_doc = embedder.encode_contextual(records.documents, **common)
        doc_ids = [d for d, arr in zip(records.ids, per_doc) for _ in range(len(arr))]
        chunk_index = [c for arr in per_doc for c in range(len(arr))]
        ids = [f"{d}_{c}" for d, c in zip(doc_ids, chunk_index)]
        matrix = np.concatenate(per_doc, axis=0)
        files = write_embeddings(output, ids, matrix, doc_ids=doc_ids, chunk_index=chunk_index)
    else:
        matrix = embedder.encode(records.texts, truncate=truncate, **common)
        files = write_embeddings(output, records.ids, matrix)
    seconds = time.perf_counter() - start
    summary = {
        "records": len(records),
        "contextual": records.contextual,
        "vectors": int(matrix.shape[0]),
        "dim": int(matrix.shape[1]),
        "dtype": str(matrix.dtype),
        "precision": precision or embedder.default_precision,
        "model": embedder.loaded.name,
        "files": [str(f) for f in files],
        "seconds": round(seconds, 3),
    }
    if as_json:
        print_json(summary)
    else:
        kind = "documents" if records.contextual else "texts"
        err_console.print(
            f"Encoded {len(records)} {kind} -> {matrix.shape[0]} x {matrix.shape[1]} {summary['precision']} "
            f"in {seconds:.1f}s ({len(records) / max(seconds, 1e-9):.0f} {kind}/s); wrote {', '.join(summary['files'])}"
        )
