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


@pytest.fixture(scope="module")
def minilm_tokenizer():
    from transformers import AutoTokenizer

    from diffembed.modeling.loader import default_model_path

    return AutoTokenizer.from_pretrained(default_model_path())


def test_hard_cuts_never_split_a_character(minilm_tokenizer):
    # MiniLM's NFD normaliser gives each Hangul syllable 2-3 jamo tokens with the same offsets; cutting
    # blindly every `budget` tokens would put one syllable in two chunks.
    from diffembed.inference.tokens import tokenize_with_offsets

    text = "대한민국의 수도는 서울특별시이며 가장 큰 도시이고 한강이 도시의 가운데를 흐른다 " * 3 + "끝."
    _, offsets = tokenize_with_offsets(minilm_tokenizer, text)
    for budget in (3, 8, 20):
        chunks = split_chunks(text, offsets, budget)
        assert all(x.char_end <= y.char_start for x, y in zip(chunks, chunks[1:]))
        assert all(c.token_end - c.token_start <= budget for c in chunks)
        assert [c.token_start for c in chunks[1:]] == [c.token_end for c in chunks[:-1]]
        assert chunks[0].token_start == 0 and chunks[-1].token_end == len(offsets)
        covered = "".join(text[c.char_start:c.char_end] for c in chunks)
        assert "".join(covered.split()) == "".join(text.split())
        if budget == 20:  # every word fits in the budget: no word is cut
            assert all(text[c.char_start - 1].isspace() for c in chunks[1:])


def test_long_sentences_are_cut_between_words(minilm_tokenizer):
    from diffembed.inference.tokens import tokenize_with_offsets

    text = "The Elbphilharmonie concert hall opened in January 2017 after many years of delays and disputes."
    _, offsets = tokenize_with_offsets(minilm_tokenizer, text)  # "Elbphilharmonie" is 7 tokens
    chunks = split_chunks(text, offsets, 7)
    assert all(text[c.char_start - 1].isspace() for c in chunks[1:])
    assert all(c.token_end - c.token_start <= 7 for c in chunks)
    assert " ".join(text[c.char_start:c.char_end] for c in chunks) == text


def test_korean_document_chunks_do_not_overlap(minilm):
    text = "대한민국의 수도는 서울특별시이다. 서울에는 한강이 흐른다. " * 12
    doc = minilm.encode_document(text, chunk_tokens=10)
    assert all(a[1] <= b[0] for a, b in zip(doc.spans, doc.spans[1:]))
    assert [text[a:b] for a, b in doc.spans] == doc.chunks
