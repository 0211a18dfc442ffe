"""IR metrics through pytrec_eval (trec_eval's own code), with the averaging policy made explicit.

Averaging: over the queries that have at least one relevant (score > 0) judgment. A query with no
retrieved documents counts as 0 (pytrec_eval would silently leave it out and inflate the mean).
Ties are broken as trec_eval does: equal scores are ordered by document id, descending.
MRR@10 is trec_eval's reciprocal rank on each query's top 10.
"""

from __future__ import annotations

from diffembed.extras import require

pytrec_eval = require("pytrec_eval", "eval", "retrieval metrics")

Run = dict[str, dict[str, float]]
METRICS = ("ndcg@10", "recall@1", "recall@10", "recall@100", "mrr@10", "map")
_TREC = {"ndcg@10": "ndcg_cut_10", "recall@1": "recall_1", "recall@10": "recall_10", "recall@100": "recall_100",
         "map": "map"}


def _top(run: Run, k: int) -> Run:
    # Same order trec_eval uses: score descending, then doc id descending.
    return {q: dict(sorted(docs.items(), key=lambda x: (x[1], x[0]), reverse=True)[:k]) for q, docs in run.items()}


def per_query(qrels: dict[str, dict[str, int]], run: Run) -> dict[str, dict[str, float]]:
    judged = {q: docs for q, docs in qrels.items() if any(s > 0 for s in docs.values())}
    full = pytrec_eval.RelevanceEvaluator(judged, {"ndcg_cut.10", "recall.1", "recall.10", "recall.100", "map"}).evaluate(run)
    rr = pytrec_eval.RelevanceEvaluator(judged, {"recip_rank"}).evaluate(_top(run, 10))
    out = {}
    for q in judged:
        scores = {name: float(full.get(q, {}).get(key, 0.0)) for name, key in _TREC.items()}
        scores["mrr@10"] = float(rr.get(q, {}).get("recip_rank", 0.0))
        out[q] = scores
    return out


def evaluate_run(qrels: dict[str, dict[str, int]], run: Run) -> dict[str, float]:
    """Mean of each metric over judged queries, plus the number of queries averaged."""
    table = per_query(qrels, run)
    n = len(table)
    means = {m: (sum(row[m] for row in table.values()) / n if n else 0.0) for m in METRICS}
    means["queries"] = n
    return means
