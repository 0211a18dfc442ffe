"""Bounded work for one long input (issue 10, F1).

Single-vector paths keep at most a window of tokens, so they must not tokenize megabytes to keep a
few hundred tokens. Two things are checked for every tokenizer family diffembed meets (WordPiece,
byte-level BPE, Unigram/Metaspace): the kept tokens equal "tokenize everything, then cut" on normal
and awkward texts, and the characters handed to the tokenizer stay bounded however long the text.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from diffembed.errors import InputError
from diffembed.inference.tokens import BOUNDARY_CHARS, FIRST_CHARS_PER_TOKEN, head_char_cap, tokenize_heads

WORDS = ("the quick brown fox jumps over a lazy dog while embeddings of long documents are pooled "
         "into vectors, searched by cosine; don't stop: 3.14 and 2,718 (e.g.) tokens!").split()
CJK = "我们的模型把长文本切成窗口并且每个词都有上下文東京大学の研究者が새로운방법을제안했다"
EMOJI = ["😀", "👍🏽", "👨‍👩‍👧", "🇩🇪", "❤️", "🚀"]


def _words(rng: random.Random, n: int, sep: str = " ") -> str:
    return sep.join(rng.choice(WORDS) for _ in range(n))


def edge_texts() -> dict[str, str]:
    """Normal and awkward texts, each far longer than any window used here."""
    rng = random.Random(0)
    code_line = "def f(x):\n" + "".join(" " * rng.randint(0, 120) + _words(rng, 3) + "\n" for _ in range(600))
    return {
        "english": _words(rng, 40_000),
        "short": _words(rng, 20),
        "whitespace_runs": "".join(_words(rng, 5) + " " * rng.choice([1, 80, 700, 3000]) for _ in range(400)),
        "indented_code": code_line,
        "spaces_then_words": " " * 20_000 + _words(rng, 5_000),
        "cjk": "".join(rng.choice(CJK) for _ in range(60_000)),
        "no_spaces_letters": "".join(rng.choice("abcdefghij") for _ in range(60_000)),
        "one_char_repeated": "a" * 80_000,
        "dashes": "-" * 50_000 + " end",
        "emoji": "".join(rng.choice(EMOJI) + rng.choice(["", " "]) for _ in range(30_000)),
        "combining": "".join("e\u0301" + rng.choice(["", " "]) for _ in range(30_000)),
        "newlines": "\n\n\n".join(_words(rng, 4) for _ in range(5_000)),
    }


# ---------------------------------------------------------------------------- tokenizers
def _trained(kind: str) -> PreTrainedTokenizerFast:
    """A small real tokenizer of the given algorithm, trained here on the test texts' alphabet."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    rng = random.Random(1)
    corpus = [_words(rng, 50) for _ in range(200)] + [CJK * 3, " ".join(EMOJI) * 5, "-" * 64 + " " * 64, "a" * 200,
                                                      "e\u0301 " * 50, "abcdefghij" * 20]
    if kind == "bpe":  # GPT-2 / SmolLM2 style: byte-level pre-tokenizer and merges
        core = Tokenizer(models.BPE())
        core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        core.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=800, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      special_tokens=["<unk>"], show_progress=False)
    else:  # T5 / XLM-R style: Metaspace and Unigram's Viterbi over each word
        core = Tokenizer(models.Unigram())
        core.pre_tokenizer = pre_tokenizers.Metaspace()
        core.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=400, special_tokens=["<unk>"], unk_token="<unk>",
                                          show_progress=False)
    core.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>")


@pytest.fixture(scope="module")
def tokenizers_by_kind(minilm):
    return {"wordpiece": minilm.tokenizer, "bpe": _trained("bpe"), "unigram": _trained("unigram")}


# ---------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("kind", ["wordpiece", "bpe", "unigram"])
@pytest.mark.parametrize("limit", [5, 254])
def test_kept_tokens_equal_full_tokenization_then_cut(tokenizers_by_kind, kind, limit):
    tok = tokenizers_by_kind[kind]
    texts = edge_texts()
    names = list(texts)
    heads = tokenize_heads(tok, [texts[n] for n in names], limit, offsets=True)
    for name, head in zip(names, heads):
        enc = tok(texts[name], add_special_tokens=False, return_offsets_mapping=True)
        full, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
        if head.capped(limit):
            # Only text that tokenizes to (almost) nothing reaches the character cap: here WordPiece's
            # one [UNK] for a word longer than 100 characters, the same token full tokenization gives.
            assert (kind, name) == ("wordpiece", "one_char_repeated"), (kind, limit, name)
            assert head.ids == full == [tok.unk_token_id]
            continue
        assert head.ids[:limit] == full[:limit], (kind, limit, name)
        assert head.offsets[:limit] == offsets[:limit], (kind, limit, name)
        assert head.over(limit) == (len(full) > limit), (kind, limit, name)
        if head.complete:
            assert head.ids == full


class _NoOffsets:
    """A tokenizer without character offsets, as a slow (Python) tokenizer is."""

    is_fast = False

    def __init__(self, tok):
        self.tok = tok

    def __call__(self, texts, **kwargs):
        assert not kwargs.get("return_offsets_mapping")
        return self.tok(texts, **kwargs)


def test_without_offsets_the_dropped_tokens_are_the_margin(minilm):
    tok, limit = minilm.tokenizer, 254
    texts = edge_texts()
    heads = tokenize_heads(_NoOffsets(tok), list(texts.values()), limit)
    for (name, text), head in zip(texts.items(), heads):
        full = tok(text, add_special_tokens=False)["input_ids"]
        assert head.ids[:limit] == full[:limit] and head.over(limit) == (len(full) > limit), name
        assert head.chars <= head_char_cap(limit)
    with pytest.raises(InputError, match="offsets need a fast"):
        tokenize_heads(_NoOffsets(tok), ["x"], limit, offsets=True)


def test_a_long_whitespace_run_before_the_words_is_read_through(minilm):
    """WordPiece drops whitespace, so the window's words may start far into the text: the prefix
    grows until they are found, and the result equals full tokenization."""
    tok, limit = minilm.tokenizer, 254
    text = " " * (limit * 40) + _words(random.Random(2), 2_000)
    head = tokenize_heads(tok, [text], limit)[0]
    assert head.ids[:limit] == tok(text, add_special_tokens=False)["input_ids"][:limit]
    assert head.chars > (limit + 1) * FIRST_CHARS_PER_TOKEN + BOUNDARY_CHARS  # it did grow


# ---------------------------------------------------------------------------- bounded work
class _Spy:
    """Counts the characters every tokenizer call is handed, for any tokenizer class."""

    def __init__(self, monkeypatch):
        self.chars, self.calls = 0, 0
        original = PreTrainedTokenizerBase.__call__
        spy = self

        def counting(tok, text=None, *args, **kwargs):
            items = [text] if isinstance(text, str) else list(text or [])
            spy.chars += sum(len(t) for t in items if isinstance(t, str))
            spy.calls += 1
            return original(tok, text, *args, **kwargs)

        monkeypatch.setattr(PreTrainedTokenizerBase, "__call__", counting)


HUGE = "the cat sat on the mat " * 200_000  # 4.6 MB


def test_embedder_tokenizes_a_bounded_prefix_of_a_huge_text(minilm, monkeypatch):
    spy = _Spy(monkeypatch)
    got = minilm.encode(HUGE)
    cap = minilm.window_capacity
    assert spy.calls >= 1
    assert spy.chars <= (cap + 1) * FIRST_CHARS_PER_TOKEN + BOUNDARY_CHARS  # one first look, far below 4.6 MB
    monkeypatch.undo()
    np.testing.assert_allclose(got, minilm.encode(HUGE[:20_000]), atol=1e-6)  # same kept tokens


def test_embedder_refuses_a_huge_text_without_counting_it(minilm, monkeypatch):
    spy = _Spy(monkeypatch)
    with pytest.raises(InputError, match=r"input\[1\] has more than 254 tokens; the model takes at most 254"):
        minilm.encode(["short", HUGE], truncate=False)
    assert spy.chars <= 2 * head_char_cap(minilm.window_capacity)


def test_text_that_tokenizes_to_nothing_is_read_only_to_the_cap(minilm, monkeypatch):
    """8 MB of whitespace with a word at the end: WordPiece yields one token in all; the work stops
    at the documented character cap, and truncate=False says why it refuses."""
    text = "hello " + " " * 8_000_000 + "world"
    cap = minilm.window_capacity
    spy = _Spy(monkeypatch)
    got = minilm.encode(text)
    assert spy.chars <= 2 * head_char_cap(cap)  # the growing looks sum to under twice the cap
    monkeypatch.undo()
    np.testing.assert_allclose(got, minilm.encode("hello"), atol=1e-6)
    with pytest.raises(InputError, match=rf"input\[0\] is longer than {head_char_cap(cap)} characters"):
        minilm.encode(text, truncate=False)


def test_cli_encode_of_a_huge_line_tokenizes_a_bounded_prefix(tmp_path, minilm, monkeypatch, capsys):
    from cli_helpers import run_cli

    src, out = tmp_path / "one.txt", tmp_path / "one.npy"
    src.write_text("a short line\n" + HUGE + "\n", encoding="utf-8")
    spy = _Spy(monkeypatch)
    code, _, err = run_cli(["encode", src, "-o", out], monkeypatch, capsys)
    assert code == 0, err
    # Loading the model probes the tokenizer with a few words; the texts add one bounded look each.
    assert spy.chars <= 2 * ((minilm.window_capacity + 1) * FIRST_CHARS_PER_TOKEN + BOUNDARY_CHARS)
    monkeypatch.undo()
    np.testing.assert_allclose(np.load(out), minilm.encode(["a short line", HUGE[:20_000]]), atol=1e-5)
