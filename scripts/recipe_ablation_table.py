"""Tables and a plot for issue 14's backbone ablation (scripts/run_recipe_ablation.sh).

Reads runs/abl-s<seed>-<backbone>/ (the recipe's results.jsonl and the SQuAD evaluations of each
final stage) and runs/abl-ref-<name>/ (reference models on the same sets), and writes the markdown
tables to stdout, every figure to --json and a bar chart to --plot. With several seeds a cell is
the mean and its spread (max - min) over the seeds that finished.

    python scripts/recipe_ablation_table.py --json docs/recipe-results/ablation.json \
        --plot docs/recipe-results/ablation.png
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

BACKBONES = ("diffusion", "mntp", "bidirectional", "causal")
REFS = {"minilm": "all-MiniLM-L6-v2", "mpnet": "all-mpnet-base-v2"}
STAGES = ("contextual", "triplets", "merged")
# (column label, source, mode, precision)
COLUMNS = [
    ("SQuAD q->p f32", "squad3-retrieval", "naive", "float32"),
    ("q->p int8", "squad3-retrieval", "naive", "int8"),
    ("q->p binary", "squad3-retrieval", "naive", "binary"),
    ("SQuAD chunks naive", "squad3-contextual", "naive", "float32"),
    ("chunks late", "squad3-contextual", "late", "float32"),
    ("pairs dev f32", "dev-beir-300", "naive", "float32"),
    ("pairs dev int8", "dev-beir-300", "naive", "int8"),
    ("pairs dev binary", "dev-beir-300", "naive", "binary"),
    ("ctx dev naive", "dev-contextual-16", "naive", "float32"),
    ("ctx dev late", "dev-contextual-16", "late", "float32"),
]


def _eval_json(path: Path) -> dict[tuple[str, str], float]:
    if not path.exists():
        return {}
    rows = json.loads(path.read_text())["rows"]
    return {(r["mode"], r["precision"]): r["ndcg@10"] for r in rows if r.get("system", "diffembed") == "diffembed"}


def _recipe_rows(run: Path, stage: str) -> dict[str, dict[tuple[str, str], float]]:
    """{dataset name: {(mode, precision): nDCG@10}} of the stage's latest rows in results.jsonl."""
    out: dict[str, dict] = {}
    path = run / "results.jsonl"
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        r = json.loads(line)
        if r["stage"] == stage:
            out.setdefault(r["name"], {})[(r["mode"], r["precision"])] = r["ndcg@10"]
    return out


def scores(run: Path, stage: str) -> dict[str, float]:
    """Every column for one model: the SQuAD evals are files, the dev sets come from the recipe."""
    squad_dir = run if stage == "merged" else run / f"eval-{stage}"
    got: dict[str, float] = {}
    recipe = _recipe_rows(run, stage)
    for label, source, mode, precision in COLUMNS:
        if source.startswith("squad"):
            table = _eval_json(squad_dir / f"{source}.json")
        else:
            table = recipe.get(source) or _eval_json(squad_dir / f"{source}.json")
        if (mode, precision) in table:
            got[label] = table[(mode, precision)]
    return got


def collect(runs: Path) -> dict:
    data: dict = {"variants": {}, "references": {}}
    for path in sorted(runs.glob("abl-s*-*")):
        m = re.fullmatch(r"abl-s(\d+)-(\w+)", path.name)
        if not m or m.group(2) not in BACKBONES or not path.is_dir():
            continue
        seed, backbone = int(m.group(1)), m.group(2)
        for stage in STAGES:
            got = scores(path, stage)
            if got:
                data["variants"].setdefault(backbone, {}).setdefault(stage, {})[str(seed)] = got
    for key, name in REFS.items():
        got = scores(runs / f"abl-ref-{key}", "merged")
        if got:
            data["references"][name] = got
    return data


def _cell(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ±{(max(values) - min(values)) / 2:.4f}"


def _row(name: str, by_seed: dict[str, dict[str, float]], seeds: str | None = None) -> str:
    cells = [_cell([s[label] for s in by_seed.values() if label in s]) for label, *_ in COLUMNS]
    return f"| {name} | {seeds or len(by_seed)} | " + " | ".join(cells) + " |"


def tables(data: dict) -> str:
    head = "| model | seeds | " + " | ".join(label for label, *_ in COLUMNS) + " |"
    rule = "|---|---|" + "---|" * len(COLUMNS)
    lines = ["## Backbone variants (the merged model of each) and references", "", head, rule]
    for backbone in BACKBONES:
        merged = data["variants"].get(backbone, {}).get("merged")
        if merged:
            lines.append(_row(backbone, merged))
    for name, got in data["references"].items():
        lines.append(_row(name, {"-": got}, seeds="-"))
    lines += ["", "## The merge's effect (contextual-only, triplet-only, SLERP-merged)", "", head, rule]
    for backbone in BACKBONES:
        stages = data["variants"].get(backbone, {})
        # the merged row over the seeds whose branches were scored too, so the rows compare alike
        branch_seeds = {seed for stage in STAGES[:-1] for seed in stages.get(stage, {})}
        for stage in STAGES:
            got = stages.get(stage)
            if got and stage == "merged" and branch_seeds:
                got = {seed: v for seed, v in got.items() if seed in branch_seeds}
            if got:
                lines.append(_row(f"{backbone} {stage}", got))
    return "\n".join(lines) + "\n"


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = ["SQuAD q->p f32", "q->p binary", "SQuAD chunks naive", "chunks late", "pairs dev f32", "ctx dev late"]
    models = [(b, data["variants"][b]["merged"]) for b in BACKBONES if data["variants"].get(b, {}).get("merged")]
    models += [(n, {"-": g}) for n, g in data["references"].items()]
    fig, ax = plt.subplots(figsize=(10, 4.8))
    width = 0.8 / max(1, len(models))
    for i, (name, by_seed) in enumerate(models):
        means = [statistics.mean([s[c] for s in by_seed.values() if c in s] or [float("nan")]) for c in shown]
        ax.bar([x + i * width for x in range(len(shown))], means, width, label=name)
    ax.set_xticks([x + width * (len(models) - 1) / 2 for x in range(len(shown))], shown, rotation=20, ha="right")
    ax.set_ylabel("nDCG@10")
    ax.set_title("SmolLM2-135M: backbone variants after the same contrastive budget (CPU), and references")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=Path, default=Path("runs"))
    ap.add_argument("--json", type=Path, help="write every figure here")
    ap.add_argument("--plot", type=Path, help="write a bar chart (PNG) here")
    args = ap.parse_args()
    data = collect(args.runs)
    if not data["variants"] and not data["references"]:
        raise SystemExit(f"error: no ablation results under {args.runs} (run scripts/run_recipe_ablation.sh)")
    print(tables(data), end="")
    if args.json:
        args.json.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    if args.plot:
        plot(data, args.plot)


if __name__ == "__main__":
    main()
