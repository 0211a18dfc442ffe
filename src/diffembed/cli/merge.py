"""`diffembed merge`: SLERP two model folders, or average N, into a new folder."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from diffembed.cli.common import err_console, print_json


def _parse_weights(text: str | None) -> list[float] | None:
    from diffembed.errors import InputError

    if text is None:
        return None
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InputError(f"--weights must be comma-separated numbers, got '{text}'") from None


def merge(
    models: list[Path] = typer.Argument(..., help="Model folders to merge (two for SLERP, two or more for --linear)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (replaced atomically if it exists)."),
    t: float = typer.Option(None, "--t", help="SLERP position: 0 gives the first model, 1 the second (default 0.5)."),
    linear: bool = typer.Option(False, "--linear", help="Weighted mean of all models instead of SLERP."),
    weights: str = typer.Option(None, "--weights", help="With --linear: comma-separated weights, one per model "
                                                       "(normalised to sum 1; default equal)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary instead of the output path."),
) -> None:
    """Merge checkpoints of one model tensor by tensor and write a folder that Embedder, `diffembed
    serve` and plain sentence-transformers load.

    SLERP (default) follows mergekit's per-tensor formula, with linear interpolation for near-parallel
    tensors; tied weights stay tied. The folder gets the first model's config, tokenizer and
    sentence-transformers files, the merged model.safetensors and diffembed_merge.json (provenance).
    """
    from diffembed.errors import InputError
    from diffembed.training.merge import merge_folders

    if linear and t is not None:
        raise InputError("--t is for SLERP; --linear takes --weights")
    if not linear and weights is not None:
        raise InputError("--weights needs --linear")
    result = merge_folders(models, out, method="linear" if linear else "slerp",
                           t=None if linear else (0.5 if t is None else t), weights=_parse_weights(weights),
                           progress=not quiet and sys.stderr.isatty())
    if as_json:
        print_json(result.to_dict())
        return
    if not quiet:
        what = f"SLERP t={result.t}" if result.method == "slerp" else "linear mean"
        extra = f", {result.interpolated_linearly} near-parallel interpolated linearly" if result.method == "slerp" else ""
        err_console.print(f"{what} of {len(result.inputs)} models: {result.tensors} tensors, "
                          f"{result.parameters:,} parameters{extra}", highlight=False)
    typer.echo(result.output)
