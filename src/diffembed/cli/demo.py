"""`diffembed demo`: the main job on real text, naive vs late-chunked retrieval side by side.

Six Wikipedia articles from SQuAD v1.1 dev are chunked by a token budget; every question is asked
against all chunks, once with chunks embedded on their own (naive) and once late-chunked (each
chunk pooled from a pass over its whole article). The gold chunk holds the answer's first character.
"""

from __future__ import annotations

import json
import time
from importlib import resources

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from diffembed.cli.common import DeviceOpt, DtypeOpt, ModelOpt, print_json


def _load_sample() -> list[dict]:
    text = resources.files("diffembed.data").joinpath("squad_sample.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _ranks(scores: np.ndarray, gold: np.ndarray) -> np.ndarray:
    gold_scores = scores[np.arange(len(gold)), gold]
    return (scores > gold_scores[:, None]).sum(axis=1) + 1


def demo(
    model: str = ModelOpt,
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    chunk_tokens: int = typer.Option(None, help="Chunk budget in tokens (default: a quarter of the model window)."),
    examples: int = typer.Option(6, help="How many example questions to show."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Chunk six real articles, embed them naive and late-chunked, and score real questions."""
    from diffembed import Embedder

    console = Console()
    articles = _load_sample()
    started = time.perf_counter()
    embedder = Embedder(model, device=device, dtype=dtype)
    docs = embedder.encode_documents([a["text"] for a in articles], chunk_tokens=chunk_tokens)
    chunks, owners, late = [], [], []
    gold, questions = [], []
    for a_idx, (article, doc) in enumerate(zip(articles, docs)):
        base = len(chunks)
        starts = np.array([s for s, _ in doc.spans])
        for q in article["questions"]:
            questions.append(q["question"])
            gold.append(base + int(np.searchsorted(starts, q["answer_start"], side="right") - 1))
        chunks.extend(doc.chunks)
        owners.extend([a_idx] * len(doc.chunks))
        late.append(doc.embeddings)
    late_m = np.concatenate(late)
    naive_m = embedder.encode(chunks)
    query_m = embedder.encode_query(questions)
    gold_a = np.array(gold)
    owner_a = np.array(owners)
    seconds = time.perf_counter() - started

    results = {}
    for name, matrix in (("naive", naive_m), ("late", late_m)):
        scores = query_m @ matrix.T
        ranks = _ranks(scores, gold_a)
        results[name] = {
            "article@1": float((owner_a[scores.argmax(axis=1)] == owner_a[gold_a]).mean()),
            "hit@1": float((ranks == 1).mean()),
            "hit@10": float((ranks <= 10).mean()),
            "mrr@10": float(np.where(ranks <= 10, 1.0 / ranks, 0.0).mean()),
            "ranks": ranks,
        }
    summary = {
        "model": embedder.loaded.name,
        "articles": len(articles),
        "chunks": len(chunks),
        "chunk_tokens": chunk_tokens or embedder.default_chunk_tokens,
        "questions": len(questions),
        "seconds": round(seconds, 2),
        **{f"{m}_{k}": round(v[k], 4) for m, v in results.items() for k in ("hit@1", "hit@10", "mrr@10", "article@1")},
    }
    if as_json:
        print_json(summary)
        return

    console.print(
        f"[bold]diffembed demo[/]: {summary['articles']} Wikipedia articles (SQuAD v1.1 dev) -> {summary['chunks']} chunks "
        f"of <= {summary['chunk_tokens']} tokens; {summary['questions']} real questions; model {summary['model']}"
    )
    table = Table(title="Example questions: rank of the chunk holding the answer (1 = best)")
    table.add_column("question", max_width=48)
    table.add_column("article")
    table.add_column("gold chunk", max_width=60)
    table.add_column("naive", justify="right")
    table.add_column("late", justify="right")
    gain = results["naive"]["ranks"] - results["late"]["ranks"]
    picks = list(np.argsort(-gain)[: examples // 2]) + list(np.argsort(gain)[: examples - examples // 2])
    for i in sorted(set(int(p) for p in picks)):
        snippet = " ".join(chunks[gold[i]].split())
        table.add_row(questions[i], articles[owners[gold[i]]]["title"], snippet[:80] + ("..." if len(snippet) > 80 else ""),
                      str(results["naive"]["ranks"][i]), str(results["late"]["ranks"][i]))
    console.print(table)
    scores = Table(title=f"Chunk retrieval over all {summary['chunks']} chunks")
    for col in ("embedding", "hit@1", "hit@10", "MRR@10", "article@1"):
        scores.add_column(col, justify="right" if col != "embedding" else "left")
    for name, label in (("naive", "naive (chunks alone)"), ("late", "late chunking (whole article)")):
        r = results[name]
        scores.add_row(label, f"{r['hit@1']:.3f}", f"{r['hit@10']:.3f}", f"{r['mrr@10']:.3f}", f"{r['article@1']:.3f}")
    console.print(scores)
    console.print("hit@k: the chunk holding the answer is in the top k; article@1: the top chunk comes from the answer's article.")
    console.print(f"Done in {seconds:.1f}s. Try: diffembed encode FILE -o out.npy, diffembed info, diffembed --help")
