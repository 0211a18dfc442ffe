"""A recipe's `evaluate` section: score each stage's final folder as it finishes, then one table and one
plot across stages.

Scoring is `diffembed eval`'s own code (`eval.runner.evaluate` on a `DiffembedSystem` around an
`Embedder`), so a row here equals `diffembed eval <dataset> --model <stage>/final` with the same
precision, mode and `--max-queries`. Rows go to `<output_dir>/results.jsonl`, one per stage x dataset x
mode x precision, keyed by the stage's fingerprint: a stage whose fingerprint already has its rows is
not scored again, and a changed stage (new fingerprint) is. `results.md` and `results.png` show, for
each stage in recipe order, the rows of its current fingerprint. Every file is written atomically.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from diffembed.atomic import write_files, write_text
from diffembed.training.train_config import TrainRecipe

RESULTS = "results.jsonl"
TABLE = "results.md"
PLOT = "results.png"


def read_results(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines if line.strip()]


def _same_setup(row: dict[str, Any], recipe: TrainRecipe, dataset: str) -> bool:
    ev = recipe.evaluate
    return (row.get("dataset") == dataset and row.get("split") == ev.split
            and row.get("max_queries") == ev.max_queries)


def wanted(kind: str, recipe: TrainRecipe) -> list[tuple[str, str]]:
    """(mode, precision) pairs a dataset of this kind is scored at: retrieval sets have one mode."""
    ev = recipe.evaluate
    modes = ev.modes if kind == "contextual" else ["naive"]
    return [(m, p) for m in modes for p in ev.precisions]


def evaluate_stage(recipe: TrainRecipe, stage: str, folder: Path, fingerprint: str, *,
                   datasets: dict[str, Any] | None = None,
                   on_stage: Callable[[str, str], None] | None = None) -> list[dict[str, Any]]:
    """Score `folder` on every dataset of `recipe.evaluate` it has no rows for yet (for this
    fingerprint); append the new rows to results.jsonl and return them."""
    from diffembed.eval.datasets import load_dataset
    from diffembed.eval.runner import DiffembedSystem, Grid, evaluate

    ev = recipe.evaluate
    path = recipe.out / RESULTS
    old = read_results(path)
    datasets = {} if datasets is None else datasets
    system = None
    new: list[dict[str, Any]] = []
    for dataset in ev.datasets:
        mine = [r for r in old if r.get("stage") == stage and r.get("fingerprint") == fingerprint
                and _same_setup(r, recipe, dataset)]
        have = {(r["mode"], r["precision"]) for r in mine}
        if mine and set(wanted(mine[0]["kind"], recipe)) <= have:
            continue
        if dataset not in datasets:
            datasets[dataset] = load_dataset(dataset, split=ev.split)
        ds = datasets[dataset]
        missing = [pair for pair in wanted(ds.kind, recipe) if pair not in have]
        grid = Grid(modes=tuple(dict.fromkeys(m for m, _ in missing)),
                    precisions=tuple(dict.fromkeys(p for _, p in missing)), max_queries=ev.max_queries)
        if system is None:
            from diffembed import Embedder

            system = DiffembedSystem(Embedder(str(folder), device=ev.device, show_progress=False))
        rows = [{"stage": stage, "fingerprint": fingerprint, "dataset": dataset, "name": ds.name, "kind": ds.kind,
                 "split": ev.split, "max_queries": ev.max_queries, "folder": str(folder), **r}
                for r in evaluate(ds, system, grid) if (r["mode"], r["precision"]) in missing]
        new += rows
        if on_stage:
            scores = ", ".join(f"{r['mode'] + ' ' if ds.kind == 'contextual' else ''}{r['precision']} "
                               f"{r['ndcg@10']:.4f}" for r in rows)
            on_stage(stage, f"{ds.name} nDCG@10: {scores}")
    if new:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in [*old, *new])
        write_text(path, text)
    elif on_stage:
        on_stage(stage, f"already evaluated ({path}); skipped")
    return new


def summary(recipe: TrainRecipe, fingerprints: dict[str, str]) -> tuple[list[str], list[str], dict]:
    """(stage names, column labels, {(stage, column): nDCG@10}) from the rows of each stage's current
    fingerprint, columns in the order dataset, mode, precision of the recipe."""
    ev = recipe.evaluate
    rows = read_results(recipe.out / RESULTS)
    names = {}
    for r in rows:
        names.setdefault(r["dataset"], r["name"])
    clash = len(set(names.values())) < len(names)
    columns: list[str] = []
    values: dict[tuple[str, str], float] = {}
    for dataset in ev.datasets:
        mine = [r for r in rows if _same_setup(r, recipe, dataset)
                and r.get("fingerprint") == fingerprints.get(r.get("stage"))]
        if not mine:
            continue
        kind = mine[0]["kind"]
        shown = dataset if clash else names[dataset]
        for mode, precision in wanted(kind, recipe):
            column = f"{shown} {mode} {precision}" if kind == "contextual" else f"{shown} {precision}"
            columns.append(column)
            for r in mine:  # later rows win
                if r["mode"] == mode and r["precision"] == precision:
                    values[(r["stage"], column)] = r["ndcg@10"]
    scored = [s.name for s in recipe.stages if ev.scores(s.name)]
    return scored, columns, values


def write_summary(recipe: TrainRecipe, fingerprints: dict[str, str]) -> tuple[Path, Path]:
    """results.md (rows: stages in recipe order; columns: dataset/mode/precision nDCG@10) and
    results.png (the same numbers, one line per column)."""
    stages, columns, values = summary(recipe, fingerprints)
    kinds = {s.name: s.kind for s in recipe.stages}
    lines = ["# Results per stage", "",
             f"nDCG@10 of each stage's final folder (`diffembed eval`'s scoring"
             + (f", first {recipe.evaluate.max_queries} judged queries" if recipe.evaluate.max_queries else "")
             + f"; every row: `{RESULTS}`).", "",
             "| stage | kind | " + " | ".join(columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for name in stages:
        cells = [f"{values[(name, c)]:.4f}" if (name, c) in values else "-" for c in columns]
        lines.append(f"| {name} | {kinds[name]} | " + " | ".join(cells) + " |")
    table = recipe.out / TABLE
    write_text(table, "\n".join(lines) + "\n")
    plot = recipe.out / PLOT
    _plot(stages, columns, values, plot)
    return table, plot


def _plot(stages: list[str], columns: list[str], values: dict, path: Path) -> None:
    from diffembed.extras import require

    matplotlib = require("matplotlib", "train", "diffembed train's results plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(stages) + 3), 4.5))
    x = list(range(len(stages)))
    for column in columns:
        ax.plot(x, [values.get((s, column), math.nan) for s in stages], marker="o", label=column)
    ax.set_xticks(x, stages, rotation=30, ha="right")
    ax.set_ylabel("nDCG@10")
    ax.set_title("nDCG@10 per stage")
    ax.grid(alpha=0.3)
    if columns:
        ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        write_files({path: lambda tmp: fig.savefig(tmp, format="png", dpi=120)})
    finally:
        plt.close(fig)
