"""Peak memory of one contrastive training step: GradCache (`loss.mini_batch_size`) vs the plain loss.

Each configuration runs in a fresh child process, which builds the stage's model and loss exactly as
`diffembed train` does (`ContrastiveTask.build_model` on the packaged all-MiniLM-L6-v2, max_seq_length
128, temperature 0.05, float loss), takes one batch of N (query, positive) pairs from
data/pairs/train.jsonl (`diffembed data pairs`; the first N rows with no text twice), and runs
forward + backward + AdamW step once. Reported: the process's peak resident memory (ru_maxrss), the
resident memory right before the step (model, optimizer state not yet allocated, tokenized batch),
their difference (what the step itself needed), and the step's wall time.

- plain: sentence-transformers' MultipleNegativesRankingLoss: every activation of the 2N texts is
  kept for the backward pass, so memory grows with N;
- gradcache: CachedMultipleNegativesRankingLoss with mini_batch_size M: the 2N embeddings are computed
  without a graph, the loss's gradient w.r.t. them is taken, then each mini-batch of M texts is
  re-embedded with a graph and back-propagated, so activations for only M texts live at once.

Reproduce (about 15 minutes on 2 CPU cores; plain at 512 pairs and more needs more than 24 GiB):
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/gradcache_memory.py \
        --run plain:128 plain:256 gradcache:256 gradcache:1024 \
        --json benchmarks/results/gradcache_memory.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAIRS = ROOT / "data" / "pairs" / "train.jsonl"


def rss_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def pairs(n: int) -> tuple[list[str], list[str]]:
    if not PAIRS.is_file():
        sys.exit(f"{PAIRS} is missing: build it with `diffembed data pairs --out data/pairs`")
    seen: set[str] = set()
    queries, positives = [], []
    with PAIRS.open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            if row["query"] in seen or row["positive"] in seen:
                continue
            seen.update((row["query"], row["positive"]))
            queries.append(row["query"])
            positives.append(row["positive"])
            if len(queries) == n:
                return queries, positives
    sys.exit(f"{PAIRS} has fewer than {n} distinct pairs")


def child(kind: str, n: int, mini: int, threads: int) -> dict:
    import torch

    from diffembed.training.contrastive import ContrastiveTask
    from diffembed.training.train_config import StageConfig

    torch.set_num_threads(threads)
    q, p = pairs(n)
    rows = Path(tempfile.mkdtemp(prefix="gradcache-bench-")) / "pairs.jsonl"  # the task reads only these rows
    rows.write_text("".join(json.dumps({"query": a, "positive": b}) + "\n" for a, b in zip(q, p)), encoding="utf-8")
    loss = {"temperature": 0.05, **({"mini_batch_size": mini} if kind == "gradcache" else {})}
    stage = StageConfig.model_validate({"name": "bench", "data": {"train": [str(rows)]}, "batch": {"size": n},
                                        "loss": loss, "train": {"steps": 1}, "output_dir": str(rows.parent / "out")})
    task = ContrastiveTask(stage, "default", max_length=128)
    model = task.build_model()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5)
    features = [task.st.preprocess(q), task.st.preprocess(p)]
    tokens = sum(int(f["attention_mask"].sum()) for f in features)
    padded = sum(int(f["attention_mask"].numel()) for f in features)
    before = rss_mib()
    t0 = time.perf_counter()
    out = model(sentence_features=features, labels=torch.zeros(n))
    out["loss"].backward()
    optimizer.step()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"kind": kind, "pairs": n, "mini_batch_size": mini if kind == "gradcache" else None,
            "loss": float(out["loss"]), "rss_before_step_mib": round(before, 1), "peak_rss_mib": round(peak, 1),
            "step_mib": round(peak - before, 1), "step_s": round(seconds, 2), "tokens": tokens,
            "padded_tokens": padded}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", nargs="+", default=["plain:128", "plain:256", "gradcache:256", "gradcache:1024"],
                    help="kind:pairs, kind plain or gradcache")
    ap.add_argument("--mini-batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, n = args.child.split(":")
        print(json.dumps(child(kind, int(n), args.mini_batch_size, args.threads)))
        return
    results = []
    for spec in args.run:
        kind, _, n = spec.partition(":")
        if kind not in ("plain", "gradcache") or not n.isdigit():
            ap.error(f"--run takes kind:pairs with kind plain or gradcache, got {spec!r}")
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        proc = subprocess.run([sys.executable, __file__, "--child", spec, "--mini-batch-size", str(args.mini_batch_size),
                               "--threads", str(args.threads)], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            row = {"kind": kind, "pairs": int(n), "error": proc.stderr.strip().splitlines()[-1:]}
        else:
            row = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {"date": dt.date.today().isoformat(), "cpus": os.cpu_count(), "threads": args.threads,
                "load_average": os.getloadavg()}
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
