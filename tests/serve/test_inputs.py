"""The server's request tokenizer does bounded work on one huge input (issue 10, F1): a refusal says
"more than N tokens" without counting them all, and a cut equals the one full tokenization gives.
It tokenizes once: the model thread receives the token ids (issue 11)."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from transformers import PreTrainedTokenizerBase

from diffembed.inference.tokens import BOUNDARY_CHARS, FIRST_CHARS_PER_TOKEN, head_char_cap
from diffembed.serve.app import create_app
from diffembed.serve.errors import ApiError
from diffembed.serve.inputs import RequestTokenizer
from diffembed.serve.settings import ServeSettings

HUGE = "the cat sat on the mat, and then the dog came " * 100_000  # 4.6 MB


@pytest.fixture()
def spy(monkeypatch):
    """Characters handed to any tokenizer call."""
    seen = {"chars": 0}
    original = PreTrainedTokenizerBase.__call__

    def counting(tok, text=None, *args, **kwargs):
        seen["chars"] += sum(len(t) for t in ([text] if isinstance(text, str) else text or []) if isinstance(t, str))
        return original(tok, text, *args, **kwargs)

    monkeypatch.setattr(PreTrainedTokenizerBase, "__call__", counting)
    return seen


def first_look(limit: int) -> int:
    return (limit + 1) * FIRST_CHARS_PER_TOKEN + BOUNDARY_CHARS


def old_cut(tok, text: str, limit: int) -> str:
    """The cut as it was before the fix: tokenize everything, cut at the limit, tighten."""
    for _ in range(4):
        offsets = tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        if len(offsets) <= limit:
            return text
        text = text[: offsets[limit - 1][1]]
    return text


def test_refusal_says_more_than_the_limit_without_counting_everything(minilm, spy):
    rt = RequestTokenizer(minilm)
    with pytest.raises(ApiError) as err:
        rt.prepare_texts(["fine", HUGE], prompt=None, limit=254, truncate=False, what="input")
    assert err.value.status == 400 and err.value.code == "input_too_long"
    assert err.value.message == "input[1] has more than 254 tokens; this server takes at most 254 tokens per input"
    assert spy["chars"] <= first_look(254) + len("fine")


@pytest.mark.parametrize("prompt", [None, "query: "])
def test_cut_below_the_window_equals_the_full_tokenization_cut(minilm, spy, prompt):
    rt = RequestTokenizer(minilm)
    prepared = rt.prepare_texts([HUGE], prompt=prompt, limit=20, truncate=True, what="inputs")
    assert spy["chars"] <= first_look(20) + 4 * 200  # one bounded look, then the short cut re-checked
    full = (prompt or "") + HUGE[:10_000]  # the first 20 tokens lie well inside this
    expected = old_cut(minilm.tokenizer, full, 20)
    assert prepared.ids == [minilm.template.wrap(minilm.tokenizer(expected, add_special_tokens=False)["input_ids"])]
    assert prepared.tokens == 20 and len(prepared.ids[0]) == 22


def test_at_the_window_the_first_window_tokens_are_kept(minilm, spy):
    prepared = RequestTokenizer(minilm).prepare_texts([HUGE], prompt=None, limit=254, truncate=True, what="inputs")
    assert spy["chars"] <= first_look(254)
    first = minilm.tokenizer(HUGE[:10_000], add_special_tokens=False)["input_ids"][:254]
    assert prepared.ids == [minilm.template.wrap(first)] and prepared.tokens == 254


def test_text_past_the_character_cap(minilm):
    text = "hello " + " " * 300_000 + "world"  # WordPiece drops whitespace: two tokens in 300 k characters
    rt = RequestTokenizer(minilm)
    with pytest.raises(ApiError, match=rf"inputs\[0\] is longer than {head_char_cap(20)} characters; this server "
                                       "takes at most 20 tokens per input"):
        rt.prepare_texts([text], prompt=None, limit=20, truncate=False, what="inputs")
    prepared = rt.prepare_texts([text], prompt=None, limit=20, truncate=True, what="inputs")
    expected = minilm.tokenizer(text[: head_char_cap(20)], add_special_tokens=False)["input_ids"]
    assert prepared.ids == [minilm.template.wrap(expected)] and prepared.tokens == 1


def test_embed_route_answers_a_huge_text_from_a_bounded_prefix(minilm, spy):
    with TestClient(create_app(minilm, ServeSettings(max_body_bytes=16 << 20))) as c:
        cut = c.post("/embed", json={"inputs": [HUGE], "truncate": True})
        refused = c.post("/v1/embeddings", json={"input": ["fine", HUGE]})
    assert cut.status_code == 200, cut.text
    assert refused.status_code == 400
    assert refused.json()["error"]["message"].startswith("input[1] has more than 254 tokens")
    # One look at the /embed text (on the request thread; the model thread gets ids), one for the refusal.
    assert spy["chars"] <= 2 * first_look(254) + 100
    np.testing.assert_allclose(np.array(cut.json(), dtype=np.float32),
                               minilm.encode([HUGE[:20_000]], precision="float32"), atol=1e-5)
