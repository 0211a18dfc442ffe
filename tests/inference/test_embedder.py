"""Embedder API behaviour: shapes, prompts, truncation and input errors naming the offending item."""

import numpy as np
import pytest

from diffembed import Embedder
from diffembed.errors import InputError


@pytest.fixture(scope="module")
def emb(tiny_dir):
    return Embedder(str(tiny_dir("bert64")), show_progress=False)


def test_shapes(emb):
    assert emb.encode("the cat").shape == (32,)
    assert emb.encode(["the cat", "the dog"]).shape == (2, 32)
    assert emb.encode([]).shape == (0, 32)
    assert emb.encode([], precision="ubinary").shape == (0, 4)


@pytest.mark.parametrize("texts,match", [
    (["ok", ""], r"input\[1\] is an empty string"),
    (["ok", "   "], r"input\[1\] is an empty string"),
    (["ok", 3], r"input\[1\] is int"),
    ([None], r"input\[0\] is NoneType"),
    (42, "must be a string or a list"),
])
def test_bad_texts(emb, texts, match):
    with pytest.raises(InputError, match=match):
        emb.encode(texts)


def test_truncation_is_explicit(emb):
    long = "the cat sat on the mat " * 30  # far beyond the 64-token window
    assert emb.encode(long).shape == (32,)
    with pytest.raises(InputError, match="tokens; the model takes at most 62"):
        emb.encode([long], truncate=False)


def test_prompt_changes_embedding_and_prompt_name_errors(emb):
    a = emb.encode("the cat")
    b = emb.encode("the cat", prompt="the dog ")
    assert not np.allclose(a, b)
    np.testing.assert_allclose(b, emb.encode("the dog the cat"), atol=1e-6)
    with pytest.raises(InputError, match="no prompt named 'query'"):
        emb.encode("the cat", prompt_name="query")
    assert np.allclose(emb.encode_query("the cat"), a)  # no query prompt defined: plain encode


def test_bad_batch_tokens(emb):
    with pytest.raises(InputError, match="batch_tokens"):
        emb.encode(["a"], batch_tokens=0)


def test_default_output_is_the_unit_length_raw_vector(emb):
    texts = ["the cat", "the dog sat on the mat"]
    out, raw = emb.encode(texts), emb.encode(texts, normalize=False)
    assert out.dtype == np.float32 and raw.dtype == np.float32
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-3)  # so the check below means something
    np.testing.assert_allclose(out, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-6)


def test_forward_only_entry_points_match_the_text_ones(emb):
    """A server tokenizes on request threads and hands ids to ``pooled_token_ids``/``pooled_chunk_ids``:
    they give what the text entry points give, and refuse sequences the model cannot take."""
    import torch

    texts = ["the cat sat on the mat", "a dog", "the old king and the queen had many books"]
    ids = [emb.template.wrap(emb.tokenizer("the dog " + t, add_special_tokens=False)["input_ids"]) for t in texts]
    torch.testing.assert_close(emb.pooled_token_ids(ids, skip=emb.prompt_skip("the dog ")),
                               emb.pooled(texts, prompt="the dog "), atol=1e-6, rtol=1e-6)
    docs = [["the cat sat", "on the mat"], ["a dog"]]
    chunk_ids = [[emb.tokenizer(c, add_special_tokens=False)["input_ids"] for c in d] for d in docs]
    for got, want in zip(emb.pooled_chunk_ids(chunk_ids), emb.pooled_contextual(docs)):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    with pytest.raises(InputError, match=r"input\[1\] has 65 token ids; expected 1..64"):
        emb.pooled_token_ids([ids[0], [1] * 65])
    with pytest.raises(InputError, match=r"input\[0\] has 0 token ids"):
        emb.pooled_token_ids([[]])


def test_pool_leaves_out_zeroed_leading_positions_like_sentence_transformers():
    """With the prompt zeroed out of the mask: cls is the first position left, last the last one
    (not ``mask.sum() - 1``), and a row with nothing left pools to zeros."""
    import torch

    from diffembed.inference.pooling import pool

    hidden = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)
    mask = torch.tensor([[0, 0, 1, 1, 0], [0, 0, 1, 1, 1]])  # row 0 right-padded by one
    torch.testing.assert_close(pool(hidden, mask, "cls"), hidden[:, 2])
    torch.testing.assert_close(pool(hidden, mask, "last"), torch.stack([hidden[0, 3], hidden[1, 4]]))
    torch.testing.assert_close(pool(hidden, mask, "mean"), torch.stack([hidden[0, 2:4].mean(0), hidden[1, 2:].mean(0)]))
    empty = torch.zeros(1, 5, dtype=torch.long)
    for mode in ("mean", "last"):
        assert not pool(hidden[:1], empty, mode).any()
    torch.testing.assert_close(pool(hidden[:1], empty, "cls"), hidden[:1, 0])


def test_default_prompt_applies_when_a_call_gives_none(tiny_dir, tmp_path):
    """As in sentence-transformers: ``default_prompt_name`` applies to every call naming no prompt
    (``prompt=""`` turns it off); ``encode_query`` prefers the query prompt, and an explicit
    prompt to it is used as given."""
    import shutil

    from diffembed.modeling.st_format import ModelConfig, PoolingConfig, STFolder, write_st_files

    folder = tmp_path / "model"
    shutil.copytree(tiny_dir("bert64"), folder)
    write_st_files(folder, STFolder(pooling=PoolingConfig(dimension=32),
                                    model=ModelConfig(prompts={"query": "the dog ", "doc": "a house "},
                                                      default_prompt_name="doc")))
    emb = Embedder(str(folder), show_progress=False)
    texts = ["the cat sat on the mat", "a king"]
    doc, query, plain = (emb.encode(texts, prompt=p) for p in ("a house ", "the dog ", ""))
    assert emb.default_prompt_name == "doc" and emb.resolve_prompt() == "a house "
    assert not np.allclose(doc, plain, atol=1e-3)
    np.testing.assert_allclose(emb.encode(texts), doc, atol=1e-6)
    np.testing.assert_allclose(emb.encode(texts, prompt_name="doc"), doc, atol=1e-6)
    np.testing.assert_allclose(emb.pooled(texts).numpy(), emb.pooled(texts, prompt="a house ").numpy(), atol=1e-6)
    np.testing.assert_allclose(emb.encode_query(texts), query, atol=1e-6)
    np.testing.assert_allclose(emb.encode_query(texts, prompt=""), plain, atol=1e-6)
    np.testing.assert_allclose(emb.encode_query(texts, prompt="a house "), doc, atol=1e-6)
    with pytest.raises(InputError, match="not both"):
        emb.encode_query(texts, prompt="x ", prompt_name="doc")
