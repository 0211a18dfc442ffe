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


# ---------------------------------------------------------------------------- Korean, CJK, SentencePiece
KOREAN = ("1989년 2월 15일 여의도 농민 폭력 시위를 주도한 혐의로 지명수배되었다. 그는 “나는 무죄다.” 라고 말했다… "
          "이후 3월 12일 서울지방검찰청 공안부는 사전구속영장을 발부받았다! 정말인가? 「그렇다.」 그 뒤 체포되었다.")


def test_korean_and_cjk_sentence_ends():
    starts = [KOREAN[s:][:6] for s in sentence_starts(KOREAN)]
    assert starts == ["1989년 ", "그는 “나는", "이후 3월 ", "정말인가? ", "「그렇다.」", "그 뒤 체포"]
    chinese = "北京是中国的首都。上海是最大的城市！你好吗？“是的。”好"
    assert [chinese[s:][:2] for s in sentence_starts(chinese)] == ["北京", "上海", "你好", "“是", "好"]
    assert sentence_starts("3.5 퍼센트와 e.g.는 문장 끝이 아니다") == [0]


def test_offsets_with_leading_spaces_keep_words_and_sentences_whole():
    """SentencePiece (and byte-level BPE) count the space before a word into its token: '▁가나' is
    (5, 8) for ' 가나'. Sentence and word starts must still fall on the word, not one token later."""
    text = "가나다 라마. 바사 아자차. 카타 파하."
    tokens = [(0, 3), (3, 6), (6, 7), (7, 10), (10, 14), (14, 15), (15, 18), (18, 21), (21, 22)]
    assert [text[s:e] for s, e in tokens][:4] == ["가나다", " 라마", ".", " 바사"]
    chunks = split_chunks(text, tokens, 3)
    assert [text[c.char_start:c.char_end] for c in chunks] == ["가나다 라마.", "바사 아자차.", "카타 파하."]
    chunks = split_chunks(text, tokens, 2)  # sentences over budget are cut between words
    assert [text[c.char_start:c.char_end] for c in chunks] == ["가나다", "라마.", "바사", "아자차.", "카타", "파하."]


@pytest.mark.parametrize("budget", [4, 16, 48])
def test_multilingual_e5_chunks_korean_at_sentences_never_inside_a_character(e5_embedder, budget):
    from diffembed.inference.tokens import tokenize_with_offsets

    text = KOREAN + " 北京是中国的首都。上海是最大的城市。 😀👍🏽 𠜎𠜱 끝."
    _, offsets = tokenize_with_offsets(e5_embedder.tokenizer, text)
    chunks = split_chunks(text, offsets, budget)
    pieces = [text[c.char_start:c.char_end] for c in chunks]
    assert all(c.token_end - c.token_start <= budget for c in chunks)
    assert all(p == p.strip() and p for p in pieces)  # no chunk starts or ends with a space
    assert "".join("".join(pieces).split()) == "".join(text.split())  # nothing lost or repeated
    starts = set(sentence_starts(text))
    for c in chunks[1:]:  # each cut is at a sentence start, else between words, else between characters
        assert c.char_start in starts or text[c.char_start - 1].isspace() or budget < 16, text[c.char_start:][:10]
    if budget == 48:  # every sentence fits: chunks are whole sentences
        assert all(c.char_start in starts for c in chunks)
    doc = e5_embedder.encode_document(text, chunk_tokens=budget)
    assert doc.chunks == pieces and doc.embeddings.shape == (len(pieces), 384)
