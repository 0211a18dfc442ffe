"""Tables for docs/training-results.md from the eval JSON files of scripts/train_minilm_ablation.sh
(and of the 300-step arms, when present; docs/training-results.md gives their commands).

    .venv/bin/python scripts/training_results.py docs/training
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ARMS = [("start", "all-MiniLM-L6-v2 (start)"), ("plain", "80 steps, float loss"),
        ("qat", "80 steps, QAT mixed + Matryoshka"), ("plain-long", "300 steps, float loss"),
        ("qat-long", "300 steps, QAT mixed + Matryoshka")]
CELLS = [("float32", 384), ("int8", 384), ("binary", 384), ("float32", 256), ("float32", 128), ("binary", 128)]


def load(folder: Path, dataset: str, arm: str) -> dict | None:
    path = folder / f"{dataset}-minilm-{arm}.json"
    if not path.is_file():
        return None
    return {(r["precision"], r["dimensions"]): r["ndcg@10"] for r in json.loads(path.read_text())["rows"]}


def table(folder: Path, dataset: str) -> str:
    head = "| model | " + " | ".join(f"{p} {d}" for p, d in CELLS) + " | binary - float | 128 - float |"
    lines = [head, "|---" * (len(CELLS) + 3) + "|"]
    for arm, label in ARMS:
        cells = load(folder, dataset, arm)
        if cells is None:
            continue
        full = cells[("float32", 384)]
        lines.append(f"| {label} | " + " | ".join(f"{cells[c]:.4f}" for c in CELLS)
                     + f" | {cells[('binary', 384)] - full:+.4f} | {cells[('float32', 128)] - full:+.4f} |")
    return "\n".join(lines)


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/training")
    for dataset, title in (("squad", "SQuAD v1.1 dev, question -> paragraph (2,067 paragraphs, first 2,000 "
                                     "questions by id), nDCG@10"),
                           ("dev", "Debian pairs dev set (data/pairs/dev-beir, hash-split, never trained on), nDCG@10")):
        print(f"### {title}\n\n{table(folder, dataset)}\n")


if __name__ == "__main__":
    main()
