"""Render docs/results/*.json (written by `diffembed eval --json`) as markdown tables.

Run: .venv/bin/python scripts/results_tables.py docs/results/squad-retrieval-minilm.json [...]
"""

import json
import sys
from pathlib import Path

COLS = [("ndcg@10", "nDCG@10"), ("recall@1", "R@1"), ("recall@10", "R@10"), ("recall@100", "R@100"),
        ("mrr@10", "MRR@10"), ("map", "MAP")]


def table(path: Path) -> str:
    data = json.loads(path.read_text())
    rows = data["rows"]
    out = [f"`{path.name}`: {data['name']} ({data['kind']}, {rows[0]['queries']} queries)", "",
           "| model | run by | mode | precision | dims | " + " | ".join(h for _, h in COLS) + " |",
           "|---|---|---|---|---|" + "---|" * len(COLS)]
    for r in rows:
        model = r["model"].rstrip("/").split("/")[-1]
        out.append(f"| {model} | {r['system']} | {r['mode']} | {r['precision']} | {r['dimensions']} | "
                   + " | ".join(f"{r[k]:.4f}" for k, _ in COLS) + " |")
    return "\n".join(out) + "\n"


def throughput(path: Path) -> str:
    """A table of scripts/bench_encode.py's JSON: texts/s and tokens/s per dataset and model."""
    data = json.loads(path.read_text())
    meta = data["meta"]
    out = [f"`{path.name}`: encode throughput (median of {meta['rounds']} rounds, torch {meta['torch']}, "
           f"{meta['torch_threads']} threads)", "",
           "| dataset | model | texts | tokens | seconds | texts/s | tokens/s |", "|---|---|---|---|---|---|---|"]
    for r in data["results"]:
        out.append(f"| {r['dataset']} | {r['model']} | {r['texts']} | {r['tokens']:,} | {r['seconds_median']:.1f} | "
                   f"{r['texts_per_s']:.1f} | {r['tokens_per_s']:,} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print("\n".join(table(Path(p)) for p in sys.argv[1:]))
