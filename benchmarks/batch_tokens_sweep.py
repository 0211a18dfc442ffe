"""How diffembed's throughput depends on the padded-token budget per batch (``batch_tokens``).

Same corpus as encode_throughput.py (real python3.11-doc paragraphs), packaged all-MiniLM-L6-v2,
best of ``--repeats`` runs per budget. This is what sets the CPU default of 2048.

Reproduce:
    .venv/bin/python benchmarks/batch_tokens_sweep.py --n 1200 --json bench_out/batch_tokens_sweep.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from encode_throughput import load_corpus, machine_info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1200)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--budgets", default="512,1024,2048,4096,8192,16384,65536")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from diffembed import Embedder

    texts = load_corpus(5000)[: args.n]  # the first n of the same seeded sample
    emb = Embedder(show_progress=False)
    emb.encode(texts[:64])
    rows = []
    for budget in (int(b) for b in args.budgets.split(",")):
        best = min(_time(lambda: emb.encode(texts, batch_tokens=budget)) for _ in range(args.repeats))
        rows.append({"batch_tokens": budget, "seconds": best, "texts_per_s": len(texts) / best})
        print(f"batch_tokens={budget:<7d} {len(texts) / best:8.1f} texts/s", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine_info(), "n_texts": len(texts), "rows": rows}, indent=2) + "\n")


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
