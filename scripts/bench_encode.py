"""Encode throughput of several models on the same texts (a retrieval dataset's corpus).

Each model embeds the first --texts paragraphs of each dataset --rounds times (models interleaved,
so a busy machine slows them alike); the median round is reported as texts/s and tokens/s, where
tokens are each model's own (with its document prompt and special tokens, up to its window).

  .venv/bin/python scripts/bench_encode.py --dataset DIR --model default --model multilingual-e5-small \
      --json docs/results/encode-throughput-e5.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from diffembed import Embedder
from diffembed.eval.datasets import load_dataset


def corpus_texts(folder: str, limit: int) -> list[str]:
    ds = load_dataset(folder)
    docs = list(ds.corpus.values())[:limit]
    return [(d.get("title", "") + "\n" + d["text"]).strip() if isinstance(d, dict) else str(d) for d in docs]


def token_count(embedder: Embedder, texts: list[str]) -> int:
    prompt = embedder.resolve_prompt()
    enc = embedder.tokenizer([prompt + t for t in texts], truncation=True, max_length=embedder.max_length)
    return sum(len(ids) for ids in enc["input_ids"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", action="append", required=True)
    ap.add_argument("--model", action="append", required=True, help="'default' for the packaged model")
    ap.add_argument("--texts", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", required=True)
    args = ap.parse_args()

    models = {m: Embedder(None if m == "default" else m, device="cpu", show_progress=False) for m in args.model}
    results = []
    for folder in args.dataset:
        texts = corpus_texts(folder, args.texts)
        for emb in models.values():
            emb.encode(texts[:16])  # warm-up
        times: dict[str, list[float]] = {m: [] for m in models}
        for _ in range(args.rounds):
            for name, emb in models.items():
                start = time.perf_counter()
                emb.encode(texts)
                times[name].append(time.perf_counter() - start)
        for name, emb in models.items():
            secs = statistics.median(times[name])
            tokens = token_count(emb, texts)
            results.append({"dataset": Path(folder).name, "model": emb.loaded.name, "texts": len(texts),
                            "tokens": tokens, "seconds_median": round(secs, 3),
                            "seconds_all": [round(t, 3) for t in times[name]],
                            "texts_per_s": round(len(texts) / secs, 1), "tokens_per_s": round(tokens / secs)})
            print(json.dumps(results[-1]), flush=True)
    meta = {"torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
            "torch": torch.__version__, "rounds": args.rounds}
    Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
