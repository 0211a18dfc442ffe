"""Index search: recall and speed of the binary first pass + int8 rescoring (``diffembed index``).

Two parts, both through the real index code (``IndexStore.put_documents``, ``Searcher.dense_from_vectors``):

1. Recall on real embeddings. Corpus: every SQuAD v1.1 dev paragraph plus ``python3.11-doc``
   paragraphs (>= 20 words, deduplicated) up to ``--paragraphs``; queries: a seeded sample of SQuAD dev
   questions. Model: the packaged all-MiniLM-L6-v2. Each paragraph is one document with one chunk
   (embedded whole, cut at the model's 256-token window). Recall@10 is measured against exact float
   cosine top-10, for binary only, binary + int8 rescoring at several ``rescore`` settings, and int8
   exhaustive; the gold SQuAD paragraph's hit rate / MRR / nDCG@10 is the quality check.
2. Speed at ``--vectors`` (default 1,000,000) SYNTHETIC vectors: embedding 1M real texts on a CPU takes
   hours, so the vectors are drawn from a multivariate normal fitted (mean and covariance) to the real
   raw pooled paragraph vectors of part 1. Queries are real SQuAD question vectors. The peers are exact
   float search over the same vectors, normalised, in memory: faiss ``IndexFlatIP`` and a torch
   matmul + topk (the faster of the two on our 2-core test machine).

Paragraph and question embeddings are cached in ``bench_out/`` so a re-run skips the model.

Reproduce:
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/index_search.py --json benchmarks/results/index_search.json
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/index_search.py --quick   # smoke run (minutes if not cached)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shlex
import shutil
import sqlite3
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a model hub

import numpy as np
import torch

from encode_throughput import doc_paragraphs as all_doc_paragraphs
from encode_throughput import machine_info

ROOT = Path(__file__).resolve().parent.parent
SQUAD = ROOT.parent / "shared" / "data" / "squad-v1.1-dev.json.gz"
OUT = ROOT / "bench_out"
K = 10
RESCORES = (1, 2, 5, 10, 20, 40)


# ---------------------------------------------------------------------------- data
def squad_corpus(path: Path) -> tuple[list[str], list[tuple[str, str, int]]]:
    """SQuAD dev paragraphs (deduplicated by text) and (question id, question, paragraph index)."""
    from diffembed.eval.builders import load_squad

    squad = load_squad(path)
    paragraphs: list[str] = []
    where: dict[str, int] = {}
    questions = []
    for art in squad.articles:
        for par in art.paragraphs:
            text = " ".join(par.context.split())
            if text not in where:
                where[text] = len(paragraphs)
                paragraphs.append(text)
            for q in par.questions:
                if q.answers:
                    questions.append((q.id, q.question, where[text]))
    return paragraphs, questions


def doc_paragraphs(min_words: int = 20) -> list[str]:
    """python3.11-doc paragraphs (see encode_throughput) of >= min_words words, first occurrence only."""
    return list(dict.fromkeys(p for p in all_doc_paragraphs() if len(p.split()) >= min_words))


def load_data(n_paragraphs: int, n_questions: int, seed: int = 0):
    squad_pars, questions = squad_corpus(SQUAD)
    if n_paragraphs < len(squad_pars):
        sys.exit(f"--paragraphs must be at least the {len(squad_pars)} SQuAD dev paragraphs")
    seen = set(squad_pars)
    docs = [p for p in doc_paragraphs() if p not in seen]
    extra = n_paragraphs - len(squad_pars)
    if extra > len(docs):
        sys.exit(f"--paragraphs {n_paragraphs}: only {len(squad_pars) + len(docs)} paragraphs available")
    corpus = squad_pars + random.Random(seed).sample(docs, extra)
    qs = random.Random(seed).sample(questions, n_questions)
    return corpus, qs, {"squad_paragraphs": len(squad_pars), "doc_paragraphs": extra,
                        "doc_paragraphs_available": len(docs), "squad_questions_available": len(questions)}


def embed_cached(embedder, corpus: list[str], questions: list[str]) -> tuple[np.ndarray, np.ndarray, dict]:
    """Raw pooled paragraph vectors and normalised query vectors, cached by content hash."""
    h = hashlib.sha256()
    h.update(embedder.loaded.name.encode())
    for t in corpus + ["\x00"] + questions:
        h.update(t.encode() + b"\x00")
    key = h.hexdigest()[:16]
    path = OUT / f"index_search_emb_{len(corpus)}_{len(questions)}_{key}.npz"
    if path.exists():
        z = np.load(path)
        return z["paragraphs"], z["queries"], {"cache": str(path.relative_to(ROOT)), "cached": True}
    t0 = time.perf_counter()
    pooled = embedder.pooled(corpus, show_progress=True).numpy().astype(np.float32)
    t1 = time.perf_counter()
    # the same call Searcher.dense_rowids makes for a text query
    queries = embedder.encode_query(questions, precision="float32", show_progress=False).astype(np.float32)
    t2 = time.perf_counter()
    OUT.mkdir(parents=True, exist_ok=True)
    np.savez(path, paragraphs=pooled, queries=queries)
    return pooled, queries, {"cache": str(path.relative_to(ROOT)), "cached": False,
                             "embed_paragraphs_s": t1 - t0, "embed_queries_s": t2 - t1}


# ---------------------------------------------------------------------------- helpers
def normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def topk(scores: np.ndarray, k: int) -> np.ndarray:
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, 1), axis=1, kind="stable")
    return np.take_along_axis(part, order, 1)


def recall(found: list, exact: np.ndarray, k: int = K) -> float:
    return float(np.mean([len(set(map(int, f[:k])) & set(map(int, e[:k]))) / k for f, e in zip(found, exact)]))


def gold_metrics(found: list, gold: np.ndarray, k: int = K) -> dict:
    hit1, hit, rr, ndcg = [], [], [], []
    for f, g in zip(found, gold):
        f = [int(x) for x in f[:k]]
        rank = f.index(int(g)) + 1 if int(g) in f else None
        hit1.append(rank == 1)
        hit.append(rank is not None)
        rr.append(1.0 / rank if rank else 0.0)
        ndcg.append(1.0 / np.log2(rank + 1) if rank else 0.0)  # one relevant paragraph: IDCG = 1
    return {"hit@1": float(np.mean(hit1)), f"hit@{k}": float(np.mean(hit)), f"mrr@{k}": float(np.mean(rr)),
            f"ndcg@{k}": float(np.mean(ndcg))}


def folder_bytes(folder: Path) -> dict:
    sizes = {p.name: p.stat().st_size for p in folder.iterdir() if p.is_file()}
    return {"files": sizes, "sqlite": sum(v for n, v in sizes.items() if n.startswith("index.sqlite")),
            "bits_cache": sum(sizes.get(n, 0) for n in ("bits.npy", "ids.npy", "bits.json")),
            "total": sum(sizes.values())}


def new_index(folder: Path, embedder):
    from diffembed.index.settings import settings_for
    from diffembed.index.store import IndexStore

    if folder.exists():
        shutil.rmtree(folder)
    store = IndexStore(folder, create=True)
    # one chunk per paragraph, embedded whole: chunk_tokens = the model's window
    store.set_settings(settings_for(embedder, None, chunk_tokens=embedder.window_capacity, mode="naive").to_dict())
    return store


def put(store, start: int, raw: np.ndarray, texts: list[str], prefix: str) -> int:
    from diffembed.index.settings import content_hash
    from diffembed.index.store import NewDocument
    from diffembed.inference.quantize import finalize

    pooled = torch.from_numpy(np.ascontiguousarray(raw))
    bits = finalize(pooled, "ubinary", None, False)
    int8 = finalize(pooled, "int8", None, False)
    docs = [NewDocument(doc_id=f"{prefix}{start + i:07d}", content_hash=content_hash(t), source=None,
                        n_chars=len(t), spans=[(0, len(t))], texts=[t], bits=bits[i : i + 1], int8=int8[i : i + 1])
            for i, t in enumerate(texts)]
    return store.put_documents(docs)


def row_positions(store, n: int) -> np.ndarray:
    """rowid -> position in insertion order (-1 for none); checks one row per document."""
    rows = store.db.execute("SELECT id FROM chunks ORDER BY doc_id").fetchall()
    assert len(rows) == n, (len(rows), n)
    lookup = np.full(max(r[0] for r in rows) + 1, -1, dtype=np.int64)
    lookup[[r[0] for r in rows]] = np.arange(n)
    return lookup


def to_pos(lookup: np.ndarray, rowid_lists) -> list[list[int]]:
    return [[int(lookup[r]) for r in rows if r >= 0] for rows in rowid_lists]


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


# ---------------------------------------------------------------------------- part 1
def recall_part(embedder, pooled: np.ndarray, queries: np.ndarray, gold: np.ndarray, folder: Path) -> dict:
    from diffembed.index.search import Searcher
    from diffembed.index.vectors import MIN_CANDIDATES
    from diffembed.inference.quantize import finalize

    n = len(pooled)
    store = new_index(folder, embedder)
    t_insert, _ = timed(lambda: put(store, 0, pooled, [f"p{i}" for i in range(n)], "p"))
    store.close()
    searcher = Searcher(folder, embedder)
    lookup = row_positions(searcher.store, n)

    scores = queries @ normalise(pooled).T
    exact = topk(scores, K)
    profile = score_profile(-np.sort(-scores, axis=1)[:, :100])
    int8 = finalize(torch.from_numpy(pooled), "int8", None, False).astype(np.float32)
    int8_top = topk(queries @ normalise(int8).T, K)
    _, bin_rows = searcher.dense.search(queries, K)
    binary = to_pos(lookup, bin_rows)

    res = {"n_paragraphs": n, "n_queries": len(queries), "insert_s": t_insert, "disk": folder_bytes(folder),
           "exact_cosine_by_rank": profile,
           "exact_float": {"recall@10": 1.0, **gold_metrics(exact, gold)},
           "int8_exhaustive": {"recall@10": recall(int8_top, exact), **gold_metrics(int8_top, gold)},
           "binary_only": {"recall@10": recall(binary, exact), **gold_metrics(binary, gold)},
           "rescore": {}}
    for r in RESCORES:
        searcher.rescore = r
        n_cand = min(max(K * r, MIN_CANDIDATES), n)
        _, cand_rows = searcher.dense.search(queries, max(K * r, MIN_CANDIDATES))
        cands = to_pos(lookup, cand_rows)
        secs, hits = timed(lambda: searcher.dense_from_vectors(queries, k=K))
        found = to_pos(lookup, [[rowid for rowid, _ in h] for h in hits])
        res["rescore"][str(r)] = {
            "candidates": n_cand, "recall@10": recall(found, exact),
            # share of the exact top-10 among the Hamming candidates: the ceiling for rescoring
            "candidate_recall@10": float(np.mean([len(set(c) & set(map(int, e))) / K for c, e in zip(cands, exact)])),
            "seconds": secs, **gold_metrics(found, gold)}
        if n_cand == MIN_CANDIDATES:
            res["_found_100"] = found
    searcher.close()
    return res


def simulate(pooled: np.ndarray, queries: np.ndarray, n_cand: int, chunk: int = 250) -> np.ndarray:
    """The same two passes in memory (faiss Hamming top-n_cand, int8 cosine rescoring) -> top-10 positions."""
    import faiss

    from diffembed.inference.quantize import finalize

    raw = torch.from_numpy(np.ascontiguousarray(pooled))
    codes = finalize(raw, "ubinary", None, False)
    int8 = normalise(finalize(raw, "int8", None, False).astype(np.float32))
    index = faiss.IndexBinaryFlat(pooled.shape[1])
    index.add(codes)
    _, cand = index.search(np.packbits(queries >= 0, axis=-1), min(n_cand, len(pooled)))
    out = []
    for a in range(0, len(queries), chunk):
        c = cand[a : a + chunk]
        scores = np.einsum("qcd,qd->qc", int8[c], normalise(queries[a : a + chunk]))
        order = np.argsort(-scores, axis=1, kind="stable")[:, :K]
        out.append(np.take_along_axis(c, order, 1))
    return np.concatenate(out)


def scaling_part(pooled: np.ndarray, queries: np.ndarray, full_found: list, seed: int = 0) -> dict:
    """Recall@10 at a fixed candidate count on growing random subsets of the real corpus."""
    n = len(pooled)
    perm = np.random.default_rng(seed).permutation(n)
    sizes = sorted({m for m in (1000, 2000, 4000, n) if m <= n})
    out = {"sizes": sizes, "recall@10": {}}
    for n_cand in (100, 200, 400):
        row = {}
        for m in sizes:
            sub = pooled[np.sort(perm[:m])]
            exact = topk(queries @ normalise(sub).T, K)
            found = simulate(sub, queries, n_cand)
            row[str(m)] = recall(found, exact)
            if m == n and n_cand == 100:  # the in-memory model agrees with the index code path
                full = simulate(pooled, queries, 100)
                out["same_top10_as_index_path"] = float(np.mean([list(map(int, a)) == list(b)
                                                                  for a, b in zip(full, full_found)]))
        out["recall@10"][str(n_cand)] = row
    return out


# ---------------------------------------------------------------------------- part 2
def synthetic(real: np.ndarray, n: int, seed: int, chunk: int):
    """Chunks of raw vectors ~ N(mean, cov) of the real raw pooled paragraph vectors."""
    rng = np.random.default_rng(seed)
    mean = real.mean(0).astype(np.float64)
    cov = np.cov(real.astype(np.float64), rowvar=False) + 1e-6 * np.eye(real.shape[1])
    chol = np.linalg.cholesky(cov)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        yield start, (rng.standard_normal((m, real.shape[1])) @ chol.T + mean).astype(np.float32)


def speed_part(embedder, real: np.ndarray, queries: np.ndarray, n: int, folder: Path, *, batch: int,
               single: int, repeats: int, seed: int) -> dict:
    import faiss

    from diffembed.index.search import Searcher
    from diffembed.index.vectors import DEFAULT_RESCORE, MIN_CANDIDATES

    dim = real.shape[1]
    store = new_index(folder, embedder)
    normed = np.empty((n, dim), dtype=np.float32)
    t_gen = t_ins = 0.0
    t0 = time.perf_counter()
    for start, raw in synthetic(real, n, seed, batch):
        t1 = time.perf_counter()
        t_gen += t1 - t0
        normed[start : start + len(raw)] = normalise(raw)
        put(store, start, raw, [f"synthetic vector {start + i}" for i in range(len(raw))], "s")
        t0 = time.perf_counter()
        t_ins += t0 - t1
        print(f"\r  inserted {start + len(raw):,}/{n:,} ({t_ins:.0f} s)", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    first, last, count = store.db.execute("SELECT MIN(id), MAX(id), COUNT(*) FROM chunks").fetchone()
    assert (first, last, count) == (1, n, n), (first, last, count)  # rowid = position + 1
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    disk_sqlite = folder_bytes(folder)

    # first pass: cold (no bits cache: read every row's bits from SQLite, write the cache) and cached
    opened = {}
    for label in ("no_cache", "cache"):
        t_open, searcher = timed(lambda: Searcher(folder, embedder))
        t_first, _ = timed(lambda: searcher.dense_from_vectors(queries[:1], k=K))
        opened[label] = {"open_s": t_open, "first_search_s": t_first}
        if label == "no_cache":
            searcher.close()
    disk = folder_bytes(folder)

    t_flat, flat = timed(lambda: _flat(normed))
    xt = torch.from_numpy(normed)
    batch_q = min(len(queries), 200)
    qb = np.ascontiguousarray(queries[: max(batch_q, single)])
    q_batch = qb[:batch_q]
    _, (_, exact_pos) = timed(lambda: flat.search(q_batch, K))
    exact_rows = exact_pos + 1
    profile = score_profile(_matmul_topk(xt, q_batch, k=100, scores=True)[0])

    runs: dict[str, list[float]] = {"faiss_flat_ip": [], "torch_matmul_topk": [], "binary_first_pass": []}
    results: dict[str, list] = {}
    settings = sorted({DEFAULT_RESCORE, 20, 40})
    for r in settings:
        runs[f"dense_rescore_{r}"] = []

    def run_all(order):
        for name in order:
            if name == "faiss_flat_ip":
                secs, _ = timed(lambda: flat.search(q_batch, K))
            elif name == "torch_matmul_topk":
                secs, found = timed(lambda: _matmul_topk(xt, q_batch))
                results[name] = found
            elif name == "binary_first_pass":
                searcher.rescore = DEFAULT_RESCORE
                secs, _ = timed(lambda: searcher.dense.search(q_batch, max(K * DEFAULT_RESCORE, MIN_CANDIDATES)))
            else:
                searcher.rescore = int(name.rsplit("_", 1)[1])
                secs, hits = timed(lambda: searcher.dense_from_vectors(q_batch, k=K))
                results[name] = hits
            runs[name].append(secs)

    names = list(runs)
    run_all(names)  # warm-up (page cache, faiss threads)
    for name in runs:
        runs[name].clear()
    for i in range(repeats):
        run_all(names if i % 2 == 0 else names[::-1])

    # one query at a time (a server's usual load), default rescore
    searcher.rescore = DEFAULT_RESCORE
    lat = {"faiss_flat_ip": [], "torch_matmul_topk": [], f"dense_rescore_{DEFAULT_RESCORE}": []}
    for i in range(single):
        q = qb[i : i + 1]
        lat["faiss_flat_ip"].append(timed(lambda: flat.search(q, K))[0])
        lat["torch_matmul_topk"].append(timed(lambda: _matmul_topk(xt, q))[0])
        lat[f"dense_rescore_{DEFAULT_RESCORE}"].append(timed(lambda: searcher.dense_from_vectors(q, k=K))[0])
    # the same with faiss on one OpenMP thread (on a shared 2-core machine, 2 threads can stall a single query)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    for name in ("faiss_flat_ip", f"dense_rescore_{DEFAULT_RESCORE}"):
        lat[f"{name} (faiss 1 thread)"] = []
    for i in range(single):
        q = qb[i : i + 1]
        lat["faiss_flat_ip (faiss 1 thread)"].append(timed(lambda: flat.search(q, K))[0])
        lat[f"dense_rescore_{DEFAULT_RESCORE} (faiss 1 thread)"].append(
            timed(lambda: searcher.dense_from_vectors(q, k=K))[0])
    faiss.omp_set_num_threads(threads)

    best = {name: min(v) for name, v in runs.items()}
    speed = {name: {"runs_s": v, "best_s": best[name], "queries_per_s": batch_q / best[name],
                    "qps_ratio_vs_flat_ip": best["faiss_flat_ip"] / best[name],
                    "qps_ratio_vs_torch_matmul": best["torch_matmul_topk"] / best[name]} for name, v in runs.items()}
    _, bin_rows = searcher.dense.search(q_batch, K)
    searcher.close()
    recall_1m = {"binary_only": {"candidates": K, "recall@10": recall(bin_rows, exact_rows)},
                 "torch_matmul_topk (check)": {"recall@10": recall(results["torch_matmul_topk"], exact_pos)}}
    for r in settings:
        found = [[rowid for rowid, _ in h] for h in results[f"dense_rescore_{r}"]]
        recall_1m[str(r)] = {"candidates": max(K * r, MIN_CANDIDATES), "recall@10": recall(found, exact_rows)}
    latency = {name: {"median_ms": 1000 * float(np.median(v)), "p90_ms": 1000 * float(np.percentile(v, 90)),
                      "queries": len(v)} for name, v in lat.items()}
    for peer in ("faiss_flat_ip", "torch_matmul_topk"):
        latency[f"median_ratio_{peer}_over_dense"] = (latency[peer]["median_ms"]
                                                      / latency[f"dense_rescore_{DEFAULT_RESCORE}"]["median_ms"])
    latency["median_ratio_torch_matmul_topk_over_dense_1_thread"] = (
        latency["torch_matmul_topk"]["median_ms"]
        / latency[f"dense_rescore_{DEFAULT_RESCORE} (faiss 1 thread)"]["median_ms"])
    return {
        "n_vectors": n, "dim": dim, "synthetic": "multivariate normal with the mean and covariance of the real raw "
        "pooled paragraph vectors (part 1); queries are real SQuAD question vectors",
        "generate_s": t_gen, "insert_s": t_ins, "insert_vectors_per_s": n / t_ins, "insert_batch_docs": batch,
        "exact_cosine_by_rank": profile, "disk_after_insert": disk_sqlite, "disk": disk,
        "disk_bytes_per_vector": disk_sqlite["sqlite"] / n,
        "peers": "faiss IndexFlatIP over the normalised float32 vectors; the same exact search as a torch matmul + "
        "topk in 65,536-row chunks (faster than IndexFlatIP's knn on this machine)",
        "memory_bytes_per_vector": {"binary_first_pass": dim // 8, "binary_first_pass_with_row_ids": dim // 8 + 8,
                                    "faiss_flat_ip_float32": 4 * dim, "int8_on_disk_only": dim},
        "first_pass_open": opened, "faiss_flat_add_s": t_flat,
        "batch_queries": batch_q, "repeats": repeats, "speed": speed, "recall_vs_exact": recall_1m,
        "single_query_latency": latency, "default_rescore": DEFAULT_RESCORE, "min_candidates": MIN_CANDIDATES,
    }


def _matmul_topk(x: torch.Tensor, q: np.ndarray, k: int = K, chunk: int = 65536, scores: bool = False):
    """Exact float search as a plain BLAS matmul + top-k (torch), in database chunks."""
    qt = torch.from_numpy(q)
    best_s, best_i = None, None
    for a in range(0, len(x), chunk):
        s, i = torch.topk(qt @ x[a : a + chunk].T, k, dim=1)
        i += a
        if best_s is not None:
            s, j = torch.topk(torch.cat([best_s, s], 1), k, dim=1)
            i = torch.gather(torch.cat([best_i, i], 1), 1, j)
        best_s, best_i = s, i
    return (best_s.numpy(), best_i.numpy()) if scores else best_i.numpy()


def score_profile(sorted_scores: np.ndarray) -> dict:
    """Mean exact cosine at ranks 1, 10 and 100: how far the true top-10 stand out from the 100th."""
    return {f"rank_{r}": float(sorted_scores[:, r - 1].mean()) for r in (1, 10, 100) if r <= sorted_scores.shape[1]}


def _flat(normed: np.ndarray):
    import faiss

    index = faiss.IndexFlatIP(normed.shape[1])
    index.add(normed)
    return index


# ---------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    full = {"paragraphs": 8000, "questions": 2000, "vectors": 1_000_000, "single": 20, "repeats": 3}
    quick = {"paragraphs": 3000, "questions": 500, "vectors": 50_000, "single": 5, "repeats": 2}
    ap.add_argument("--paragraphs", type=int, help="corpus size for part 1 (default 8000)")
    ap.add_argument("--questions", type=int, help="SQuAD dev questions for part 1 (default 2000)")
    ap.add_argument("--vectors", type=int, help="synthetic vectors for part 2 (default 1,000,000)")
    ap.add_argument("--insert-batch", type=int, default=10_000, help="documents per put_documents transaction")
    ap.add_argument("--single", type=int, help="one-at-a-time queries for latency (default 20)")
    ap.add_argument("--repeats", type=int, help="timed runs per system after a warm-up; best kept (default 3)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 3000 paragraphs, 500 questions, 50k vectors, 5 single queries, 2 repeats")
    ap.add_argument("--skip-speed", action="store_true", help="part 1 only")
    ap.add_argument("--json", type=Path, help="write all figures to this JSON file")
    args = ap.parse_args()
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    import faiss

    import diffembed
    from diffembed import Embedder

    info = machine_info()
    info.update(faiss=faiss.__version__, faiss_omp_threads=faiss.omp_get_max_threads(), numpy=np.__version__,
                sqlite=sqlite3.sqlite_version, diffembed=diffembed.__version__, load_average_start=os.getloadavg())
    command = "HF_HUB_OFFLINE=1 .venv/bin/python " + shlex.join(["benchmarks/index_search.py", *sys.argv[1:]])
    print(f"{info['cpu']} | {info['cores']} cores | torch threads {info['torch_threads']} | faiss {info['faiss']} "
          f"({info['faiss_omp_threads']} OpenMP threads) | SQLite {info['sqlite']} | load avg "
          f"{' '.join(f'{x:.1f}' for x in info['load_average_start'])}")

    corpus, qs, counts = load_data(args.paragraphs, args.questions)
    embedder = Embedder()
    pooled, queries, cache = embed_cached(embedder, corpus, [q for _, q, _ in qs])
    gold = np.array([g for _, _, g in qs])
    print(f"corpus: {len(corpus)} paragraphs ({counts['squad_paragraphs']} SQuAD dev + {counts['doc_paragraphs']} "
          f"python3.11-doc), {len(qs)} SQuAD dev questions; embeddings {'cached' if cache['cached'] else 'computed'}"
          f" ({cache['cache']})")

    work = OUT / "index_search"
    part1 = recall_part(embedder, pooled, queries, gold, work / "real")
    part1["scaling"] = scaling_part(pooled, queries, part1.pop("_found_100"))
    print(f"\nPart 1: recall@10 vs exact float cosine top-10 ({part1['n_paragraphs']} real paragraphs, "
          f"{part1['n_queries']} real queries), and the gold SQuAD paragraph")
    print(f"{'method':<28}{'cands':>7}{'recall@10':>11}{'cand rec':>10}{'hit@1':>8}{'hit@10':>8}{'nDCG@10':>9}")
    rows = [("exact float32", "", part1["exact_float"], None), ("int8 exhaustive", "", part1["int8_exhaustive"], None),
            ("binary only (Hamming)", "10", part1["binary_only"], None)]
    rows += [(f"binary + int8, rescore={r}", str(v["candidates"]), v, v["candidate_recall@10"])
             for r, v in part1["rescore"].items()]
    for name, cands, v, cr in rows:
        print(f"{name:<28}{cands:>7}{v['recall@10']:>11.4f}{'' if cr is None else f'{cr:.4f}':>10}"
              f"{v['hit@1']:>8.4f}{v['hit@10']:>8.4f}{v['ndcg@10']:>9.4f}")

    pr = part1["exact_cosine_by_rank"]
    print("mean exact cosine at rank 1 / 10 / 100: " + " / ".join(f"{v:.3f}" for v in pr.values()))
    sc = part1["scaling"]
    print(f"\nrecall@10 vs corpus size (random subsets of the real corpus; in-memory model of the same two passes, "
          f"same top-10 as the index path for {100 * sc['same_top10_as_index_path']:.1f}% of queries)")
    print(f"{'candidates':<12}" + "".join(f"{m:>10,}" for m in sc["sizes"]))
    for n_cand, row in sc["recall@10"].items():
        print(f"{n_cand:<12}" + "".join(f"{v:>10.4f}" for v in row.values()))

    part2 = None
    if not args.skip_speed:
        print(f"\nPart 2: {args.vectors:,} synthetic vectors (fitted Gaussian), real query vectors")
        part2 = speed_part(embedder, pooled, queries, args.vectors, work / "synthetic", batch=args.insert_batch,
                           single=args.single, repeats=args.repeats, seed=0)
        d = part2["disk"]
        print(f"insert: {part2['insert_s']:.1f} s ({part2['insert_vectors_per_s']:,.0f} vectors/s, "
              f"{args.insert_batch} docs/transaction); SQLite {d['sqlite'] / 1e6:.1f} MB = "
              f"{part2['disk_bytes_per_vector']:.0f} B/vector; bits cache {d['bits_cache'] / 1e6:.1f} MB")
        for label, v in part2["first_pass_open"].items():
            print(f"open Searcher ({label}): {v['open_s']:.2f} s; first search (builds/loads first pass): "
                  f"{v['first_search_s']:.2f} s")
        print(f"\n{part2['batch_queries']} queries per batch, best of {part2['repeats']}:")
        print(f"{'system':<26}{'best s':>9}{'queries/s':>11}{'vs IndexFlatIP':>16}{'vs matmul':>11}{'recall@10':>11}")
        for name, v in part2["speed"].items():
            rec = None
            if "rescore" in name:
                rec = part2["recall_vs_exact"][name.rsplit("_", 1)[1]]["recall@10"]
            print(f"{name:<26}{v['best_s']:>9.3f}{v['queries_per_s']:>11.1f}{v['qps_ratio_vs_flat_ip']:>15.2f}x"
                  f"{v['qps_ratio_vs_torch_matmul']:>10.2f}x{'' if rec is None else f'{rec:.4f}':>11}")
        pr = part2["exact_cosine_by_rank"]
        print("mean exact cosine at rank 1 / 10 / 100: " + " / ".join(f"{v:.3f}" for v in pr.values()))
        print(f"binary only (Hamming top-10) recall@10: {part2['recall_vs_exact']['binary_only']['recall@10']:.4f}")
        lat = part2["single_query_latency"]
        print("one query at a time (median / p90 ms):")
        for k, v in lat.items():
            if isinstance(v, dict):
                print(f"  {k:<40}{v['median_ms']:>9.1f}{v['p90_ms']:>9.1f}")
        print(f"  IndexFlatIP / dense: {lat['median_ratio_faiss_flat_ip_over_dense']:.1f}x, matmul / dense: "
              f"{lat['median_ratio_torch_matmul_topk_over_dense']:.1f}x, matmul / dense (faiss 1 thread): "
              f"{lat['median_ratio_torch_matmul_topk_over_dense_1_thread']:.1f}x")
        m = part2["memory_bytes_per_vector"]
        print(f"memory per vector: first pass {m['binary_first_pass']} B (+8 B row id) vs float32 "
              f"{m['faiss_flat_ip_float32']} B; int8 {m['int8_on_disk_only']} B stay on disk")

    info["load_average_end"] = os.getloadavg()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {"command": command, "machine": info,
                  "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                  "corpus": {"n_paragraphs": len(corpus), **counts, "n_questions": len(qs), "embeddings": cache,
                             "model": embedder.loaded.name, "dim": embedder.dim},
                  "recall_real": part1, "speed_synthetic": part2}
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
