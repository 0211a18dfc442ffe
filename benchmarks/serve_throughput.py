"""Server throughput: `diffembed serve` under concurrent clients vs offline ``Embedder.encode``, same texts.

A real server process on 127.0.0.1 and a separate load-generator process (threads, one
``httpx.Client`` each, one text per request so batching can only come from the server's cross-request
batcher). For each concurrency level the generator sends every text once (bounded by --max-seconds),
and reports embeddings/s and p50/p99 request latency. The peer is the offline throughput of
``Embedder.encode`` on the same texts, measured in this process while the server is idle. Server and
load generator share the machine's cores, which is the honest setting for a one-box deployment.

CPU seconds are recorded too (offline process, server process, load generator), per text. Unlike
throughput they barely move when other work shares the machine, and they bound what any scheduling
could reach: the server cannot beat offline by more than offline CPU / (server + generator CPU).

Reproduce:
    .venv/bin/python benchmarks/serve_throughput.py --json bench_out/serve_throughput.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from encode_throughput import load_corpus, machine_info  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, model: str | None, env: dict[str, str] | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "diffembed.cli.app", "serve", "--host", "127.0.0.1", "--port", str(port)]
    if model:
        cmd += ["--model", model]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    sys.exit("server did not become healthy within 120 s")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _load_worker(url: str, texts: list[str], concurrency: int, max_seconds: float, out: mp.Queue) -> None:
    """Runs in its own process: `concurrency` threads pull texts from a shared cursor until done."""
    import httpx

    cpu0 = time.process_time()

    lock = threading.Lock()
    cursor = [0]
    latencies: list[float] = []
    vectors: dict[int, list[float]] = {}
    errors: list[str] = []
    deadline = time.monotonic() + max_seconds

    def worker() -> None:
        with httpx.Client(timeout=120) as client:
            while time.monotonic() < deadline:
                with lock:
                    i = cursor[0]
                    cursor[0] += 1
                if i >= len(texts):
                    return
                t0 = time.perf_counter()
                r = client.post(url, json={"input": texts[i], "model": "bench", "encoding_format": "float"})
                dt_ = time.perf_counter() - t0
                with lock:
                    if r.status_code == 200:
                        latencies.append(dt_)
                        vectors[i] = r.json()["data"][0]["embedding"]
                    else:
                        errors.append(f"{r.status_code}: {r.text[:200]}")

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    out.put({"wall": wall, "latencies": latencies, "vectors": vectors, "errors": errors[:5], "n_errors": len(errors),
             "cpu": time.process_time() - cpu0})


def run_load(url: str, texts: list[str], concurrency: int, max_seconds: float) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_load_worker, args=(url, texts, concurrency, max_seconds, q))
    p.start()
    res = q.get()
    p.join()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="texts per concurrency level (default 2000)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--max-seconds", type=float, default=180, help="cap per concurrency level")
    ap.add_argument("--model", default=None, help="model folder (default: packaged all-MiniLM-L6-v2)")
    ap.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                    help="environment for the server process only, e.g. OMP_WAIT_POLICY=PASSIVE (repeatable)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    print(f"load average at start: {load_at_start}")
    from diffembed import Embedder

    emb = Embedder(args.model, show_progress=False)
    # /v1/embeddings refuses inputs longer than the window (never cuts), so keep paragraphs that fit.
    pool = load_corpus(min(4 * args.n, 20000))
    lengths = [len(x) for x in emb.tokenizer(pool, add_special_tokens=False)["input_ids"]]
    texts = [t for t, n in zip(pool, lengths) if n <= emb.window_capacity][: args.n]
    emb.encode(texts[:64])  # warm-up
    t0, cpu0 = time.perf_counter(), time.process_time()
    offline = emb.encode(texts)
    offline_s, offline_cpu = time.perf_counter() - t0, time.process_time() - cpu0
    offline_rate = len(texts) / offline_s
    offline_cpu_ms = 1000 * offline_cpu / len(texts)
    del emb
    print(f"offline Embedder.encode: {offline_rate:.1f} texts/s ({len(texts)} texts, {offline_s:.1f} s, "
          f"{offline_cpu_ms:.1f} CPU ms/text)")

    port = free_port()
    server_env = dict(kv.split("=", 1) for kv in args.server_env)
    server = start_server(port, args.model, server_env)
    url = f"http://127.0.0.1:{port}/v1/embeddings"
    rows = []
    try:
        run_load(url, texts[:32], 4, 60)  # warm-up
        for c in args.concurrency:
            server_cpu0 = process_cpu_s(server.pid)
            res = run_load(url, texts, c, args.max_seconds)
            server_cpu = process_cpu_s(server.pid) - server_cpu0
            lat = np.asarray(res["latencies"]) * 1000
            done = len(res["vectors"])
            got = np.asarray([res["vectors"][i] for i in sorted(res["vectors"])], dtype=np.float32)
            ref = offline[sorted(res["vectors"])]
            cos_min = float(np.min(np.sum(got * ref, axis=1))) if done else float("nan")
            rate = done / res["wall"]
            n = max(done + res["n_errors"], 1)
            cpu = {"server_cpu_ms_per_request": round(1000 * server_cpu / n, 2),
                   "loadgen_cpu_ms_per_request": round(1000 * res["cpu"] / n, 2)}
            # What the CPU spent allows, were every core busy all the time: offline CPU over server + generator.
            cpu["cpu_bound_ratio"] = round(offline_cpu_ms / (cpu["server_cpu_ms_per_request"] +
                                                             cpu["loadgen_cpu_ms_per_request"]), 3)
            rows.append({
                "concurrency": c, "requests": done, "errors": res["n_errors"], "error_samples": res["errors"],
                "seconds": round(res["wall"], 3), "embeddings_per_s": round(rate, 2),
                "ratio_vs_offline": round(rate / offline_rate, 3),
                "p50_ms": round(float(np.percentile(lat, 50)), 1) if done else None,
                "p99_ms": round(float(np.percentile(lat, 99)), 1) if done else None,
                "min_cosine_vs_offline": round(cos_min, 6), **cpu,
            })
            r = rows[-1]
            print(f"concurrency {c:>3}: {rate:7.1f} emb/s = {r['ratio_vs_offline']:.2f}x offline, "
                  f"p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, {done} ok, {res['n_errors']} errors, "
                  f"min cosine {cos_min:.6f}; CPU ms/request: server {cpu['server_cpu_ms_per_request']}, "
                  f"generator {cpu['loadgen_cpu_ms_per_request']} (offline {offline_cpu_ms:.1f}/text: "
                  f"at most {cpu['cpu_bound_ratio']:.2f}x)")
        import httpx

        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()

    result = {
        "benchmark": "serve_throughput",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info(),
        "model": args.model or "packaged all-MiniLM-L6-v2",
        "texts": len(texts),
        "server_env": server_env,
        "request": "one text per POST /v1/embeddings, encoding_format=float",
        "offline_texts_per_s": round(offline_rate, 2),
        "offline_cpu_ms_per_text": round(offline_cpu_ms, 2),
        "load_average_at_start": load_at_start,
        "levels": rows,
        "server_batch_metrics": [ln for ln in metrics.splitlines() if "batch" in ln and not ln.startswith("#")][:12],
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
