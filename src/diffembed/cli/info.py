"""`diffembed info`: what a model is and how diffembed will run it."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from diffembed.cli.common import DeviceOpt, DtypeOpt, print_json


def info(
    model: str = typer.Argument(None, help="Model folder or hub id (default: packaged all-MiniLM-L6-v2)."),
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the description as JSON."),
) -> None:
    """Print a model's architecture, embedding size, max length, pooling and attention direction."""
    from diffembed.modeling import load_model

    details = load_model(model, device=device, dtype=dtype).describe()
    if as_json:
        print_json(details)
        return
    table = Table(show_header=False, box=None)
    for key, value in details.items():
        if key == "parameters":
            value = f"{value:,} ({value / 1e6:.1f}M)"
        elif key == "prompts":
            value = ", ".join(f"{k}={v!r}" for k, v in value.items()) or "none"
        table.add_row(f"[bold]{key}[/]", str(value))
    Console().print(table)
