"""Eval results as a terminal table, a JSON file and PNG charts."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from diffembed.atomic import write_text
from diffembed.extras import require

COLUMNS = [("ndcg@10", "nDCG@10"), ("recall@1", "R@1"), ("recall@10", "R@10"), ("recall@100", "R@100"),
           ("mrr@10", "MRR@10"), ("map", "MAP")]


def label(row: dict) -> str:
    return f"{row['mode']} {row['precision']} {row['dimensions']}d"


def print_table(rows: list[dict], title: str, console: Console | None = None) -> None:
    table = Table(title=title)
    for col in ("model", "system", "mode", "precision", "dims"):
        table.add_column(col)
    for _, head in COLUMNS:
        table.add_column(head, justify="right")
    for r in rows:
        table.add_row(short_name(r["model"]), r["system"], r["mode"], r["precision"], str(r["dimensions"]),
                      *(f"{r[k]:.4f}" for k, _ in COLUMNS))
    if console is None:
        console = Console()
        if not console.is_terminal:  # piped: keep the table whole rather than squeezing it into 80 columns
            console = Console(width=160)
    console.print(table)


def short_name(model: str) -> str:
    """A path-like model name shown by its last component."""
    return model.rstrip("/").split("/")[-1] or model


def write_json(path: str | Path, payload: dict) -> None:
    write_text(path, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")


def plot(rows: list[dict], path: str | Path, title: str, metric: str = "ndcg@10") -> None:
    matplotlib = require("matplotlib", "eval", "eval --plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{short_name(r['model'])[:28]}\n{label(r)}" for r in rows]
    values = [r[metric] for r in rows]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(rows) + 2), 4.2))
    colors = ["#4C72B0" if r["mode"] == "naive" else "#DD8452" for r in rows]
    bars = ax.bar(range(len(rows)), values, color=colors)
    ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.set_xticks(range(len(rows)), labels, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel(metric)
    ax.set_ylim(0, min(1.12, max(values + [0.01]) * 1.15))
    ax.set_title(title)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
