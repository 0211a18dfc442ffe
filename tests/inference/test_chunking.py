"""Token-budget chunking at sentence boundaries with exact character spans."""

import pytest

from diffembed import Embedder
from diffembed.inference.chunking import sentence_starts, split_chunks

TEXT = ("Berlin is the capital of Germany. It has a population of three million people. "
        "The river is old! Is the city large? The dog sat on the mat.\n\nParis is the capital of France.")


def test_sentence_starts():
    starts = sentence_starts(TEXT)
    assert starts[0] == 0
    assert TEXT[starts[1]:].startswith("It has")
    assert any(TEXT[s:].startswith("Paris") for s in starts)


@pytest.fixture(scope="module")
def emb(tiny_dir):
    return Embedder(str(tiny_dir("bert")), show_progress=False)


@pytest.mark.parametrize("budget", [3, 8, 12, 1000])
def test_chunks_respect_budget_and_spans(emb, budget):
    doc = emb.encode_document(TEXT, chunk_tokens=budget)
    assert len(doc.chunks) == len(doc.spans) == len(doc.embeddings)
    for chunk, (a, b) in zip(doc.chunks, doc.spans):
        assert chunk == TEXT[a:b]
        assert len(emb.tokenizer(chunk, add_special_tokens=False)["input_ids"]) <= budget
    # spans are ordered, disjoint and cover all non-space text
    covered = "".join(TEXT[a:b] for a, b in doc.spans).replace(" ", "").replace("\n", "")
    assert covered == TEXT.replace(" ", "").replace("\n", "")


def test_chunks_end_at_sentence_boundaries_when_they_fit(emb):
    doc = emb.encode_document(TEXT, chunk_tokens=12)
    assert all(c.rstrip().endswith((".", "!", "?")) for c in doc.chunks)


def test_one_chunk_document_equals_encode(emb):
    text = "the cat sat on the mat ."
    doc = emb.encode_document(text, chunk_tokens=100)
    assert doc.chunks == [text]
    import numpy as np

    np.testing.assert_allclose(doc.embeddings[0], emb.encode(text), atol=1e-5)


def test_split_chunks_cuts_overlong_sentence():
    offsets = [(i * 2, i * 2 + 1) for i in range(10)]
    text = "a " * 10
    chunks = split_chunks(text, offsets, 4)
    assert [(c.token_start, c.token_end) for c in chunks] == [(0, 4), (4, 8), (8, 10)]
