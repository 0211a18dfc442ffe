"""Tables for docs/training-results.md from the eval JSON files of scripts/train_minilm_ablation.sh
(and of the 300-step arms, when present; docs/training-results.md gives their commands), and of
scripts/train_minilm_contextual.sh (the contextual stage: files squadctx-/squad-/ctxdev-<arm>.json).

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


CONTEXTUAL_ARMS = [("minilm-start", "all-MiniLM-L6-v2 (start)"),
                   ("minilm-contextual", "contextual stage, lambda 0.5 (187 steps)"),
                   ("minilm-contextual-lam08", "contextual stage, lambda 0.8 (166 steps)"),
                   ("pairs-start", "pairs-stage output (start)"), ("pairs-contextual", "contextual stage from the pairs output")]


def _ndcg(path: Path, mode: str, precision: str = "float32") -> float | None:
    if not path.is_file():
        return None
    rows = json.loads(path.read_text())["rows"]
    hit = [r["ndcg@10"] for r in rows if r.get("mode", "naive") == mode and r["precision"] == precision
           and r["dimensions"] == max(x["dimensions"] for x in rows)]
    return hit[0] if hit else None


def contextual_table(folder: Path) -> str:
    """nDCG@10, full dimension: SQuAD chunks naive/late (float32 and binary), late - naive, SQuAD
    question -> paragraph (float32), the contextual dev set naive/late."""
    head = ("| model | SQuAD chunks naive | SQuAD chunks late | late - naive | late binary | naive binary "
            "| SQuAD q -> p | dev naive | dev late |")
    lines = [head, "|---" * 9 + "|"]
    for arm, label in CONTEXTUAL_ARMS:
        ctx, qp, dev = (folder / f"{k}-{arm}.json" for k in ("squadctx", "squad", "ctxdev"))
        if not ctx.is_file():
            continue
        naive, late = _ndcg(ctx, "naive"), _ndcg(ctx, "late")
        cells = [naive, late, late - naive, _ndcg(ctx, "late", "binary"), _ndcg(ctx, "naive", "binary"),
                 _ndcg(qp, "naive"), _ndcg(dev, "naive"), _ndcg(dev, "late")]
        text = [("-" if c is None else f"{c:+.4f}" if i == 2 else f"{c:.4f}") for i, c in enumerate(cells)]
        lines.append(f"| {label} | " + " | ".join(text) + " |")
    return "\n".join(lines)


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/training")
    if any(folder.glob("squadctx-*.json")):
        print("### The contextual stage: SQuAD v1.1 dev chunks (64 tokens) and question -> paragraph (first 2,000 "
              f"questions by id), contextual dev set, nDCG@10\n\n{contextual_table(folder)}\n")
    for dataset, title in (("squad", "SQuAD v1.1 dev, question -> paragraph (2,067 paragraphs, first 2,000 "
                                     "questions by id), nDCG@10"),
                           ("dev", "Debian pairs dev set (data/pairs/dev-beir, hash-split, never trained on), nDCG@10")):
        print(f"### {title}\n\n{table(folder, dataset)}\n")


if __name__ == "__main__":
    main()
