"""Cost of one very long input (issue 10, F1): time and peak memory of ``Embedder.encode`` on an
8.3 MB text, against the same call on a normal-length text, and against what the old path did first
(tokenizing the whole text; it did that once in the Embedder and up to four more times in the server).

Each case runs in a fresh process, so peak RSS (``ru_maxrss``) belongs to that case alone; "kept" is
the RSS left after the call, to show the memory does not stay high.

Reproduce:
    .venv/bin/python benchmarks/long_input.py --json bench_out/long_input.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import resource
import time

CASES = ("normal text (1 kB)", "8.3 MB text", "old path: tokenize all 8.3 MB")
WORDS = ("the quick brown fox jumps over a lazy dog while embeddings of long documents are pooled into "
         "vectors, searched by cosine; Berlin is the capital of Germany.").split()


def make_text(chars: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    parts, n = [], 0
    while n < chars:
        w = rng.choice(WORDS)
        parts.append(w)
        n += len(w) + 1
    return " ".join(parts)[:chars]


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_case(case: str, model: str | None, queue) -> None:
    from diffembed import Embedder

    emb = Embedder(model, device="cpu", show_progress=False)
    text = make_text(1_000 if case.startswith("normal") else 8_300_000)
    emb.encode("warm up")
    before = rss_mb()
    start = time.perf_counter()
    if case.startswith("old path"):
        n = len(emb.tokenizer(text, add_special_tokens=False)["input_ids"])
    else:
        emb.encode(text)
        n = None
    seconds = time.perf_counter() - start
    queue.put({"case": case, "chars": len(text), "seconds": round(seconds, 4), "rss_before_mb": round(before),
               "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
               "rss_after_mb": round(rss_mb()), "tokens_counted": n})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model folder or id (default: the packaged MiniLM)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    rows = []
    for case in CASES:
        q = ctx.Queue()
        p = ctx.Process(target=run_case, args=(case, args.model, q))
        p.start()
        rows.append(q.get())
        p.join()
        r = rows[-1]
        print(f"{r['case']:32s} {r['chars']:>9,d} chars  {r['seconds']:8.3f} s  peak RSS {r['peak_rss_mb']:5d} MB "
              f"(before {r['rss_before_mb']} MB, after {r['rss_after_mb']} MB)", flush=True)
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"model": args.model or "all-MiniLM-L6-v2 (packaged)", "cpu_threads": os.cpu_count(),
                       "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
