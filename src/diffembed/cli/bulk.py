"""`diffembed bulk-embed`: embed files too large for one process with a pool of Ray actors."""

from __future__ import annotations

import os
import time
from pathlib import Path

import typer

from diffembed.cli.common import DeviceOpt, DtypeOpt, ModelOpt, err_console, print_json


def bulk_embed(
    inputs: list[str] = typer.Argument(..., metavar="INPUT...", help="jsonl / parquet / txt files or folders of them (one format)."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder to write Parquet files into (must not exist)."),
    model: str = ModelOpt,
    mode: str = typer.Option("text", help="text: one vector per record; chunks: late-chunk each record's 'chunks'; "
                                          "document: chunk each record's text here, then late-chunk."),
    input_format: str = typer.Option("auto", "--input-format", help="auto, txt, jsonl or parquet."),
    text_field: str = typer.Option("text", help="Column holding the text (text and document modes)."),
    chunks_field: str = typer.Option("chunks", help="Column holding a document's ordered chunks (chunks mode)."),
    id_field: str = typer.Option(None, help="Column holding record ids (default: _id, else id; txt: line numbers)."),
    keep: list[str] = typer.Option(None, "--keep", help="Input column to copy to the output (repeatable)."),
    text: bool = typer.Option(True, "--text/--no-text", help="Write each record's (or chunk's) text next to its vector."),
    precision: str = typer.Option(None, help="float32, int8, binary or ubinary (default: the model's own)."),
    dimensions: int = typer.Option(None, help="Matryoshka truncation to this many dimensions."),
    prompt: str = typer.Option(None, help="Text prepended to every input (text and chunks modes)."),
    prompt_name: str = typer.Option(None, help="A prompt the model defines, e.g. query."),
    chunk_tokens: int = typer.Option(None, help="Document mode: token budget per chunk (default: a quarter window)."),
    actors: int = typer.Option(1, "--actors", help="Embedding actors; each loads the model once."),
    cpus_per_actor: float = typer.Option(1.0, help="CPUs reserved per actor (also its torch thread count)."),
    gpus_per_actor: float = typer.Option(0.0, help="GPUs per actor (fractions share a GPU)."),
    batch_size: int = typer.Option(None, help="Records per Ray batch (default: 512 texts, 32 documents)."),
    batch_tokens: int = typer.Option(None, help="Padded-token budget per forward pass inside an actor."),
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    address: str = typer.Option(None, help="Ray cluster: auto, ray://host:10001 ... (default: start a local one)."),
    num_cpus: int = typer.Option(None, help="CPUs of the local Ray instance (default: all this process may use)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder (only on success)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
) -> None:
    """Embed INPUT records with Ray Data and write OUTPUT/*.parquet.

    Same embedding code as `diffembed encode`, one model load per actor. The output folder appears only
    when every file is written.
    """
    from diffembed.bulk.ray_data import check_cluster, embed_to_parquet, require_ray
    from diffembed.errors import InputError

    if output.exists() and not overwrite:  # before starting Ray: a refusal should be instant
        raise InputError(f"output folder {output} already exists; pass --overwrite to replace it")
    if address and num_cpus is not None:
        raise InputError("--num-cpus sizes a local Ray instance; it cannot be used with --address")
    ray = require_ray()
    start = time.perf_counter()
    started = _init_ray(ray, address, num_cpus)
    try:
        startup = time.perf_counter() - start
        if address:  # a cluster may grow (autoscaling): warn instead of refusing
            try:
                check_cluster(ray, actors, cpus_per_actor, gpus_per_actor)
            except InputError as exc:
                err_console.print(f"[yellow]warning:[/] {exc}", highlight=False, soft_wrap=True)
        begin = time.perf_counter()
        summary = embed_to_parquet(
            inputs, output, input_format=input_format, overwrite=overwrite, model=model, mode=mode,
            text_column=text_field, chunks_column=chunks_field, id_column=id_field, keep_columns=keep or (),
            include_text=text, precision=precision, dimensions=dimensions, prompt=prompt, prompt_name=prompt_name,
            chunk_tokens=chunk_tokens, concurrency=actors, num_cpus_per_actor=cpus_per_actor,
            num_gpus_per_actor=gpus_per_actor, batch_size=batch_size, batch_tokens=batch_tokens, device=device,
            dtype=dtype, check_resources=not address,
        )
        seconds = time.perf_counter() - begin
    finally:
        if started:
            ray.shutdown()
    summary.update(mode=mode, model=model or "all-MiniLM-L6-v2 (packaged)", precision=precision or "model default",
                   actors=actors, seconds=round(seconds, 3), rows_per_second=round(summary["rows"] / max(seconds, 1e-9), 1),
                   ray_startup_seconds=round(startup, 3))
    if as_json:
        print_json(summary)
    else:
        err_console.print(
            f"Embedded {summary['rows']} rows ({mode} mode, {actors} actor(s)) in {seconds:.1f}s "
            f"({summary['rows_per_second']:.0f} rows/s; Ray start-up {startup:.1f}s) -> {summary['output']} "
            f"({summary['files']} Parquet file(s), {summary['dim']} x {summary['dtype']})",
            highlight=False, soft_wrap=True,
        )


def _init_ray(ray, address: str | None, num_cpus: int | None) -> bool:
    """Connect or start Ray; True when this command started it (and so must shut it down)."""
    from diffembed.errors import InputError

    if ray.is_initialized():
        return False
    try:
        if address:
            ray.init(address=address)
        else:
            cpus = num_cpus or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
            ray.init(num_cpus=cpus, include_dashboard=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise InputError(f"cannot start or reach Ray{f' at {address}' if address else ''}: {exc}") from exc
    return True
