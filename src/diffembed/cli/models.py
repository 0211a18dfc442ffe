"""`diffembed models`: the models usable offline (packaged, convertible, cached) and whether each is ready."""

from __future__ import annotations

import typer

from diffembed.cli.common import print_json


def _size(row) -> str:
    def mb(n: int) -> str:
        return f"{n / 1e6:,.0f} MB"

    parts = []
    if row.packaged_bytes:
        parts.append(f"{mb(row.packaged_bytes)} packed")
    if row.folder_bytes:
        parts.append(f"{mb(row.folder_bytes)} {'converted' if row.kind == 'convertible' else 'on disk'}")
    return ", ".join(parts) or "-"


def models(
    as_json: bool = typer.Option(False, "--json", help="Print the list as JSON."),
) -> None:
    """List the models diffembed can use with no hub access: name (what --model takes), kind, status,
    size, languages and embedding dimension. A convertible model is converted into the cache
    ($DIFFEMBED_CACHE or ~/.cache/diffembed) the first time any command uses it."""
    from rich.console import Console
    from rich.table import Table

    from diffembed.modeling.catalog import as_dicts, offline_models

    rows = offline_models()
    if as_json:
        print_json(as_dicts(rows))
        return
    table = Table(box=None, header_style="bold")
    for col in ("name", "ready", "kind", "size", "dim", "languages", "status"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r.name, "[green]yes[/]" if r.ready else "[yellow]no[/]", r.kind, _size(r), str(r.dim or "?"),
                      r.languages, r.status)
    console = Console(width=max(Console().width, 140))
    console.print(table)
    console.print("Use a name with --model (or Embedder(name)); 'default' is what commands use without --model.",
                  highlight=False)
