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
    """Print a model's architecture, embedding size, max length, pooling and attention direction.

    attends_to_future is measured on the loaded model: True when changing the last token of an input
    changes the first token's hidden state, i.e. attention really is bidirectional.
    """
    from diffembed.modeling import load_model
    from diffembed.modeling.bidirectional import attends_to_future

    loaded = load_model(model, device=device, dtype=dtype)
    details = loaded.describe()
    # Checked, not just read from the config: does a later token change token 0's state?
    details["attends_to_future"] = attends_to_future(loaded.model, loaded.model.config.vocab_size, loaded.device)
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
