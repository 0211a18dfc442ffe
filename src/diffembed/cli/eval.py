"""`diffembed eval`: retrieval and contextual benchmarks, one table for mode x precision x dimensions."""

from __future__ import annotations

from pathlib import Path

import typer

from diffembed.cli.common import DeviceOpt, DtypeOpt, ModelOpt, err_console
from diffembed.extras import require_extra


def eval_command(
    dataset: Path = typer.Argument(..., help="A BEIR-format folder (corpus.jsonl) or a contextual one (documents.jsonl)."),
    model: str = ModelOpt,
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    mode: str = typer.Option("both", help="Contextual datasets: naive (chunks alone), late (late chunking) or both."),
    precision: str = typer.Option("float32", help="Comma list of float32, int8, binary."),
    dimensions: str = typer.Option("full", help="Comma list of Matryoshka sizes and/or 'full', e.g. 128,256,full."),
    baseline: list[str] = typer.Option(None, help="A sentence-transformers model folder evaluated through sentence-transformers (repeatable)."),
    split: str = typer.Option("test", help="qrels/<split>.tsv to use."),
    max_queries: int = typer.Option(None, help="Evaluate only the first N judged queries (by id)."),
    json_out: Path = typer.Option(None, "--json", help="Write all results to this JSON file."),
    plot: Path = typer.Option(None, help="Write an nDCG@10 bar chart (PNG) here."),
) -> None:
    """Score a model (and optional peers) on a dataset: nDCG@10, Recall@1/10/100, MRR@10, MAP."""
    require_extra("eval", "diffembed eval")
    from diffembed import Embedder
    from diffembed.eval.datasets import load_dataset
    from diffembed.eval.report import plot as plot_rows
    from diffembed.eval.report import print_table, write_json
    from diffembed.eval.runner import DiffembedSystem, Grid, evaluate, parse_dimensions, parse_modes, parse_precisions

    grid = Grid(modes=parse_modes(mode), precisions=parse_precisions(precision), dimensions=parse_dimensions(dimensions),
                max_queries=max_queries)
    if plot is not None and plot.suffix.lower() != ".png":
        raise typer.BadParameter("--plot must end in .png")
    ds = load_dataset(dataset, split=split)
    n_docs = len(ds.corpus) if ds.kind == "retrieval" else len(ds.chunk_ids())
    err_console.print(f"{ds.kind} dataset {ds.name}: {len(ds.queries)} queries, {n_docs} "
                      f"{'passages' if ds.kind == 'retrieval' else 'chunks'}")
    systems = [DiffembedSystem(Embedder(model, device=device, dtype=dtype))]
    for path in baseline or []:
        systems.append(_baseline(path, device))
    rows: list[dict] = []
    for system in systems:
        err_console.print(f"evaluating {system.name} ({system.system})")
        rows += evaluate(ds, system, grid)
    print_table(rows, title=f"{ds.name} ({ds.kind}, {rows[0]['queries']} queries)")
    payload = {"dataset": str(dataset), "name": ds.name, "kind": ds.kind, "split": split, "rows": rows}
    if json_out:
        write_json(json_out, payload)
        err_console.print(f"wrote {json_out}")
    if plot:
        plot_rows(rows, plot, title=f"{ds.name}: nDCG@10")
        err_console.print(f"wrote {plot}")


def _baseline(path: str, device: str | None):
    from diffembed.errors import ModelLoadError
    from diffembed.eval.runner import SentenceTransformersSystem

    if not Path(path).is_dir():
        raise ModelLoadError(f"baseline '{path}' is not a local sentence-transformers folder")
    try:
        return SentenceTransformersSystem(path, device=device)
    except Exception as exc:  # noqa: BLE001 - any load failure is the user's folder
        raise ModelLoadError(f"cannot load baseline {path} with sentence-transformers: {exc}") from exc
