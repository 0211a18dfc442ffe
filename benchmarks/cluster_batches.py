"""Cluster batches on vs off: does drawing each batch from one k-means cluster of the queries (CDE's
cluster batches) train a better retriever than random batches, at the same steps?

Task: Python standard-library docstrings (first paragraph -> the rest; tests/training/stdlib_pairs.py),
about 850 training and 200 dev pairs split by name hash; a random 2-layer BERT (hidden 64) with a
WordPiece vocabulary trained on the training text. Each arm trains `--steps` steps of batch 32, for
each seed, and is scored by dev nDCG@10 with diffembed's runtime. A toy scale: it says whether the
mechanism helps on harder in-batch negatives here, not what it does for MiniLM on Debian pairs.

Reproduce:
    .venv/bin/python benchmarks/cluster_batches.py --json benchmarks/results/cluster_batches.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests" / "training")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--clusters", type=int, default=8)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from stdlib_pairs import tiny_bert_for, write_task

    from diffembed import Embedder
    from diffembed.eval.datasets import load_dataset
    from diffembed.eval.runner import DiffembedSystem, Grid, evaluate
    from diffembed.training.stages import run_recipe
    from diffembed.training.train_config import TrainRecipe

    root = Path(tempfile.mkdtemp(prefix="cluster-batches-"))
    train, dev, texts = write_task(root / "task")
    folder = tiny_bert_for(texts, root / "tiny")
    ds = load_dataset(dev)
    score = lambda path: evaluate(ds, DiffembedSystem(Embedder(str(path), device="cpu")), Grid())[0]["ndcg@10"]
    rows = [{"arm": "start", "seed": None, "ndcg@10": score(folder)}]
    for seed in args.seeds:
        for k in (0, args.clusters):
            t0 = time.perf_counter()
            cfg = TrainRecipe.model_validate({
                "output_dir": str(root / f"run-{k}-{seed}"), "model": {"path": str(folder), "max_length": 128},
                "stages": [{"name": "pairs", "data": {"train": [str(train)]},
                            "batch": {"size": 32, "clusters": k}, "train": {"steps": args.steps, "seed": seed},
                            "eval": {"every": 10**6}, "optim": {"lr": 3e-3}}]})
            out = run_recipe(cfg, progress=False)["pairs"]
            rows.append({"arm": f"clusters={k}" if k else "random", "seed": seed, "ndcg@10": score(out),
                         "seconds": round(time.perf_counter() - t0, 1)})
            print(rows[-1], flush=True)
    summary = {}
    for arm in ("random", f"clusters={args.clusters}"):
        vals = [r["ndcg@10"] for r in rows if r["arm"] == arm]
        summary[arm] = {"mean": sum(vals) / len(vals), "runs": vals}
    result = {"task": "stdlib docstrings, tiny BERT", "steps": args.steps, "batch": 32, "rows": rows,
              "start_ndcg@10": rows[0]["ndcg@10"], "summary": summary}
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
