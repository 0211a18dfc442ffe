"""Minimal load generator for a running `diffembed serve`: N threads, one text per request.

Used for the server-settings sweep in BENCHMARKS.md, e.g.:
    diffembed serve --port 8125 --batch-tokens 512 --call-tokens 16384 &
    .venv/bin/python benchmarks/serve_load.py 8125 32 600
It prints requests/s; read `diffembed_batch_requests_{sum,count}` from /metrics for batch sizes.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from encode_throughput import load_corpus  # noqa: E402


def main() -> None:
    port, concurrency, n = (int(a) for a in sys.argv[1:4])
    texts = [t for t in load_corpus(3 * n) if len(t) < 900][:n]  # short enough for a 256-token window
    cursor, lock = [0], threading.Lock()

    def worker() -> None:
        with httpx.Client(timeout=120) as client:
            while True:
                with lock:
                    i = cursor[0]
                    cursor[0] += 1
                if i >= len(texts):
                    return
                r = client.post(f"http://127.0.0.1:{port}/v1/embeddings",
                                json={"input": texts[i], "encoding_format": "float"})
                r.raise_for_status()

    start = time.time()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"{len(texts) / (time.time() - start):.1f} req/s")


if __name__ == "__main__":
    main()
