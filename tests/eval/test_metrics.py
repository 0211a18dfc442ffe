"""Metrics equal hand-computed values, including ties, unjudged queries and queries with no results."""

import math

import pytest

from diffembed.eval.metrics import evaluate_run, per_query


def test_single_query_by_hand():
    qrels = {"q": {"d2": 1, "d5": 1}}
    run = {"q": {"d1": 0.9, "d2": 0.8, "d3": 0.7, "d4": 0.6, "d5": 0.5}}
    m = per_query(qrels, run)["q"]
    dcg = 1 / math.log2(3) + 1 / math.log2(6)
    idcg = 1 + 1 / math.log2(3)
    assert m["ndcg@10"] == pytest.approx(dcg / idcg, abs=1e-4)
    assert m["recall@1"] == 0.0
    assert m["recall@10"] == 1.0
    assert m["mrr@10"] == pytest.approx(0.5)
    assert m["map"] == pytest.approx((1 / 2 + 2 / 5) / 2, abs=1e-4)


def test_ties_break_by_doc_id_descending():
    # d_a and d_b tie; trec_eval puts d_b first, so the relevant d_a is at rank 2.
    m = per_query({"q": {"d_a": 1}}, {"q": {"d_a": 1.0, "d_b": 1.0, "d_c": 0.1}})["q"]
    assert m["mrr@10"] == pytest.approx(0.5)
    assert m["recall@1"] == 0.0


def test_mrr_is_cut_at_10():
    run = {"q": {f"d{i:02d}": 1.0 - i / 100 for i in range(12)}}
    assert per_query({"q": {"d11": 1}}, run)["q"]["mrr@10"] == 0.0
    assert per_query({"q": {"d09": 1}}, run)["q"]["mrr@10"] == pytest.approx(0.1)


def test_averaging_policy():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q_unjudged": {"a": 0}}
    run = {"q1": {"a": 1.0, "b": 0.5}, "q_unjudged": {"a": 1.0}}  # q2 retrieved nothing
    m = evaluate_run(qrels, run)
    assert m["queries"] == 2  # q_unjudged has no relevant doc: not averaged
    assert m["ndcg@10"] == pytest.approx(0.5)  # q1 = 1, q2 (no results) = 0
    assert m["mrr@10"] == pytest.approx(0.5)


def test_graded_relevance_uses_linear_gain():
    # trec_eval's ndcg: gain = relevance level (not 2^rel - 1); ranking b (rel 1) above a (rel 2)
    m = per_query({"q": {"a": 2, "b": 1}}, {"q": {"b": 0.9, "a": 0.8}})["q"]
    assert m["ndcg@10"] == pytest.approx((1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3)), abs=1e-4)
