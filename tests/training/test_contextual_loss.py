"""Contextual (late-chunked) training pieces: chunk vectors with grad pooled exactly as the runtime pools
them, and the InSeNT loss against a naive loop reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffembed import Embedder
from diffembed.errors import InputError
from diffembed.inference.late_chunking import plan_from_chunks, plan_windows, tokenize_documents
from diffembed.modeling.loader import load_model
from diffembed.training.contextual_loss import insent_loss, insent_terms, late_chunk_embeddings

DOCS = [
    ["berlin is the capital of germany", "it has a population of three million people", "the river is old"],
    ["the cat sat on the mat"],
    ["the dog sat on the mat in the old house", "it is the capital of the house"],
]
# About 90 tokens: more than one 64-position window.
LONG = [f"the {w} sat on the mat in the old house of the king" for w in ("cat", "dog", "river", "queen", "capital",
                                                                          "people", "city")]


def _naive_terms(q, docs, targets, temperature, section_ends=None):
    """Plain-loop InSeNT terms: cosine / temperature, softmax over the candidate set of each query
    (a split section's later pieces are no candidates of its query)."""
    def cos(a, b):
        return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))

    seq, batch = [], []
    for qi, (d, c) in enumerate(targets):
        end = section_ends[qi] if section_ends else c + 1
        gold = cos(q[qi], docs[d][c]) / temperature
        own = [cos(q[qi], x) / temperature for k, x in enumerate(docs[d]) if not c < k < end]
        others = [cos(q[qi], x) / temperature for e, doc in enumerate(docs) if e != d for x in doc]
        seq.append(-gold + math.log(sum(math.exp(s) for s in own)))
        batch.append(-gold + math.log(sum(math.exp(s) for s in [gold, *others])))
    return sum(seq) / len(seq), sum(batch) / len(batch)


@pytest.fixture
def fixed_inputs():
    g = torch.Generator().manual_seed(7)
    docs = [torch.randn(n, 8, generator=g, dtype=torch.float64) for n in (3, 1, 4, 2)]
    targets = [(0, 2), (1, 0), (2, 1), (2, 3), (3, 0), (0, 0)]
    q = torch.randn(len(targets), 8, generator=g, dtype=torch.float64)
    return q, docs, targets


@pytest.mark.parametrize("temperature", [0.05, 0.5])
def test_insent_equals_naive_reference(fixed_inputs, temperature):
    q, docs, targets = fixed_inputs
    ref_seq, ref_batch = _naive_terms(q.numpy(), [d.numpy() for d in docs], targets, temperature)
    seq, batch = insent_terms(q, docs, targets, temperature)
    assert seq.item() == pytest.approx(ref_seq, rel=1e-9)
    assert batch.item() == pytest.approx(ref_batch, rel=1e-9)
    for lam in (0.0, 0.3, 0.5, 1.0):
        got = insent_loss(q, docs, targets, temperature, lam=lam).item()
        assert got == pytest.approx(lam * ref_seq + (1 - lam) * ref_batch, rel=1e-9)
    # lam = 1 / 0 are the pure terms, and the two terms really differ on these inputs.
    assert insent_loss(q, docs, targets, temperature, lam=1.0).item() == pytest.approx(ref_seq, rel=1e-12)
    assert insent_loss(q, docs, targets, temperature, lam=0.0).item() == pytest.approx(ref_batch, rel=1e-12)
    assert abs(ref_seq - ref_batch) > 0.1


def test_section_pieces_are_no_negatives_of_their_query(fixed_inputs):
    q, docs, targets = fixed_inputs  # targets (0, 0) and (2, 1) head sections of 3 and 2 pieces
    ends = [3, 1, 3, 4, 1, 3]
    ref_seq, ref_batch = _naive_terms(q.numpy(), [d.numpy() for d in docs], targets, 0.05, ends)
    seq, batch = insent_terms(q, docs, targets, 0.05, section_ends=ends)
    assert seq.item() == pytest.approx(ref_seq, rel=1e-9)
    assert batch.item() == pytest.approx(ref_batch, rel=1e-9)
    plain_seq, _ = insent_terms(q, docs, targets, 0.05)
    assert abs(plain_seq.item() - seq.item()) > 1e-3  # the mask changed something
    same, _ = insent_terms(q, docs, targets, 0.05, section_ends=[c + 1 for _, c in targets])
    assert same.item() == pytest.approx(plain_seq.item(), rel=1e-12)
    with pytest.raises(InputError, match="section_ends"):
        insent_terms(q, docs, targets, 0.05, section_ends=[4, 1, 3, 4, 1, 3])  # doc 0 has 3 chunks


def test_insent_rejects_bad_inputs(fixed_inputs):
    q, docs, targets = fixed_inputs
    with pytest.raises(InputError, match=r"targets\[0\]"):
        insent_loss(q, docs, [(1, 1), *targets[1:]])
    with pytest.raises(InputError, match="lam"):
        insent_loss(q, docs, targets, lam=1.5)
    with pytest.raises(InputError, match="temperature"):
        insent_loss(q, docs, targets, temperature=0.0)
    with pytest.raises(InputError, match="one row per target"):
        insent_loss(q[:2], docs, targets)


@pytest.mark.parametrize("kind", ["bert", "llama", "bert64"])
def test_late_chunk_embeddings_match_runtime(tiny_dir, kind):
    folder = str(tiny_dir(kind))
    emb = Embedder(folder, show_progress=False)
    backbone = load_model(folder).model  # a separate copy, grad enabled
    docs = [*DOCS, LONG]
    want = emb.encode_contextual(docs, prompt="", precision="float32", normalize=False)
    for batch_tokens in (None, 100):
        got = late_chunk_embeddings(backbone, emb.tokenizer, docs, max_length=emb.max_length, template=emb.template,
                                    batch_tokens=batch_tokens)
        assert [g.shape for g in got] == [w.shape for w in want]
        assert all(g.requires_grad for g in got)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g.detach().numpy(), w, atol=1e-5)
    if kind == "bert64":
        # The long document really spans windows here, and an explicit overlap is honoured alike.
        plans = [plan_from_chunks(c, emb.template) for c in tokenize_documents(emb.tokenizer, [LONG])]
        assert len(plan_windows(plans, emb.template, emb.max_length)) >= 2
        want = emb.encode_contextual([LONG], prompt="", precision="float32", normalize=False, overlap=5)[0]
        got = late_chunk_embeddings(backbone, emb.tokenizer, [LONG], max_length=emb.max_length, overlap=5)[0]
        np.testing.assert_allclose(got.detach().numpy(), want, atol=1e-5)


def test_prompt_leads_first_chunk_as_runtime(tiny_dir):
    folder = str(tiny_dir("bert"))
    emb = Embedder(folder, show_progress=False)
    want = emb.encode_contextual(DOCS, prompt="query: ", precision="float32", normalize=False)
    got = late_chunk_embeddings(load_model(folder).model, emb.tokenizer, DOCS, max_length=emb.max_length,
                                prompt="query: ", skip=emb.prompt_skip("query: "))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.detach().numpy(), w, atol=1e-5)


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_gradients_reach_the_backbone(tiny_dir, kind):
    folder = str(tiny_dir(kind))
    loaded = load_model(folder)
    backbone = loaded.model
    chunks = late_chunk_embeddings(backbone, loaded.tokenizer, DOCS, max_length=loaded.max_length)
    queries = late_chunk_embeddings(backbone, loaded.tokenizer, [["the capital"], ["the cat"], ["the house"]],
                                    max_length=loaded.max_length)
    q = torch.cat(queries, dim=0)
    loss = insent_loss(q, chunks, [(0, 1), (1, 0), (2, 1)])
    backbone.zero_grad()
    loss.backward()
    grads = [p.grad for p in backbone.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads[:5])
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0
    emb_grad = backbone.get_input_embeddings().weight.grad
    assert emb_grad is not None and float(emb_grad.abs().sum()) > 0


def test_empty_chunk_is_refused(tiny_dir):
    loaded = load_model(str(tiny_dir("bert")))
    with pytest.raises(InputError, match="documents"):
        late_chunk_embeddings(loaded.model, loaded.tokenizer, [["the cat", ""]], max_length=loaded.max_length)


def test_insent_loss_module_sums_views_and_prefixes(tiny_dir):
    """InSeNTLoss = sum over views (weights) and Matryoshka sizes of the plain loss on the
    straight-through quantized, truncated vectors; the logged terms make up the loss."""
    from diffembed.training.contextual_loss import InSeNTLoss
    from diffembed.training.contrastive import load_st_model
    from diffembed.training.quantize_aware import quantize_ste

    model, _ = load_st_model(tiny_dir("bert"))
    model.eval()
    queries, targets, ends = ["the capital", "the cat", "the house"], [(0, 1), (1, 0), (2, 1)], [3, 1, 2]
    dim = model.get_embedding_dimension()
    loss = InSeNTLoss(model, temperature=0.1, lam=0.3, views={"float": 1.0, "binary": 0.5}, dims=[dim // 2, dim * 2])
    assert loss.dims == (dim, dim // 2)  # sizes at or above the full dimension are dropped
    with torch.no_grad():
        out = loss(DOCS, queries, targets, ends)
        chunks, q = loss.chunk_vectors(DOCS), loss.query_vectors(queries)
    want = 0.0
    for mode, weight in (("float", 1.0), ("binary", 0.5)):
        for d in (dim, dim // 2):
            want += weight * insent_loss(quantize_ste(q, mode)[:, :d], [quantize_ste(c, mode)[:, :d] for c in chunks],
                                         targets, 0.1, lam=0.3, section_ends=ends).item()
    assert out["loss"].item() == pytest.approx(want, rel=1e-6)
    assert out["loss"].item() == pytest.approx(0.3 * out["in_sequence"].item() + 0.7 * out["in_batch"].item(), rel=1e-6)


def test_insent_loss_module_embeds_as_the_runtime_with_prompts(tiny_dir, tmp_path):
    """With document and query prompts the loss sees what `Embedder` serves: chunks as
    `encode_contextual` with the document prompt, queries as `encode_query`."""
    import json

    from diffembed.training.contextual_loss import InSeNTLoss
    from diffembed.training.contrastive import load_st_model

    folder = tmp_path / "prompted"
    import shutil

    shutil.copytree(tiny_dir("bert"), folder)
    model, _ = load_st_model(folder)
    model.prompts = {"query": "query: ", "document": "passage: "}
    model.save(str(folder))
    cfg = json.loads((folder / "config_sentence_transformers.json").read_text())
    assert cfg["prompts"]["document"] == "passage: "
    model, _ = load_st_model(folder)
    model.eval()
    loss = InSeNTLoss(model)
    emb = Embedder(str(folder), show_progress=False)
    with torch.no_grad():
        chunks = loss.chunk_vectors(DOCS)
        q = loss.query_vectors(["the capital", "the cat"])
    want = emb.encode_contextual(DOCS, prompt_name="document", precision="float32", normalize=False)
    for got, w in zip(chunks, want):
        np.testing.assert_allclose(got.numpy(), w, atol=1e-5)
    np.testing.assert_allclose(q.numpy(), emb.encode_query(["the capital", "the cat"], normalize=False), atol=1e-5)
