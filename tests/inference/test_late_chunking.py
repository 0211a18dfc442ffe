"""Late chunking: one pass per window, spans without separators, context flows within a document only."""

import numpy as np
import pytest
import torch

from diffembed import Embedder
from diffembed.errors import InputError
from diffembed.inference.late_chunking import make_windows, plan_from_chunks, window_bounds
from diffembed.inference.tokens import SpecialTemplate

DOC = ["berlin is the capital of germany", "it has a population of three million people", "the river is old"]


@pytest.fixture(scope="module", params=["bert", "qwen3", "llama"])
def emb(request, tiny_dir):
    return Embedder(str(tiny_dir(request.param)), show_progress=False)


def test_one_chunk_document_equals_plain_encode(emb):
    text = "the cat sat on the mat in the old house"
    ctx = emb.encode_contextual([[text]])[0]
    np.testing.assert_allclose(ctx[0], emb.encode(text), atol=1e-5)


def test_context_flows_within_document_only(emb):
    base = emb.encode_contextual([DOC, ["the dog sat on the mat"]])
    changed_same_doc = emb.encode_contextual([[DOC[0], "the king and the queen of france", DOC[2]], ["the dog sat on the mat"]])
    changed_other_doc = emb.encode_contextual([DOC, ["one two three four five"]])
    assert not np.allclose(base[0][0], changed_same_doc[0][0], atol=1e-4)
    np.testing.assert_allclose(base[0], changed_other_doc[0], atol=1e-5)


def test_causal_model_sees_no_later_chunk(tiny_dir):
    emb = Embedder(str(tiny_dir("qwen3")), bidirectional=False, show_progress=False)
    a = emb.encode_contextual([DOC])[0]
    b = emb.encode_contextual([[DOC[0], "the king and the queen of france", DOC[2]]])[0]
    np.testing.assert_allclose(a[0], b[0], atol=1e-5)


def test_spans_exclude_separators_and_match_manual_pooling(tiny_dir):
    emb = Embedder(str(tiny_dir("bert")), show_progress=False)
    tok = emb.tokenizer
    ids = [tok(c, add_special_tokens=False)["input_ids"] for c in DOC]
    cls, sep = tok.cls_token_id, tok.sep_token_id
    seq = [cls] + ids[0] + [sep] + ids[1] + [sep] + ids[2] + [sep]
    with torch.no_grad():
        hidden = emb.model(input_ids=torch.tensor([seq])).last_hidden_state[0]
    a0, a1 = 1 + len(ids[0]), 2 + len(ids[0]) + len(ids[1])
    manual = torch.stack([hidden[0:a0].mean(0), hidden[a0 + 1 : a1].mean(0), hidden[a1 + 1 :].mean(0)])
    # first chunk owns [CLS], last chunk owns the final [SEP]; inner separators belong to no chunk
    got = emb.encode_contextual([DOC], normalize=False)[0]
    np.testing.assert_allclose(got, manual.numpy(), atol=1e-5)
    plan = plan_from_chunks(ids, emb.template)
    owner = plan.owner
    assert owner[a0] == -1 and owner[a1] == -1
    assert set(owner.tolist()) == {-1, 0, 1, 2}


@pytest.mark.parametrize("n,cap,overlap", [(10, 20, 5), (100, 20, 5), (101, 16, 0), (57, 9, 8), (1, 4, 0)])
def test_windows_embed_every_token_once(n, cap, overlap):
    template = SpecialTemplate(prefix=(1,), suffix=(2,), separator=(2,), pad_id=0)
    plan = plan_from_chunks([list(range(10, 10 + n))], template)
    windows = make_windows(0, plan, template, cap + 2, overlap)
    kept = np.concatenate([w.positions[w.keep] for w in windows])
    assert sorted(kept.tolist()) == list(range(n + 2))
    assert all(len(w.ids) <= cap + 2 for w in windows)
    for earlier, later in zip(windows, windows[1:]):
        # every later window starts with `overlap` tokens of left context whose outputs are dropped
        content_kept = later.keep[1:-1]
        assert not content_kept[:overlap].any()


def test_window_overlap_must_be_smaller_than_window():
    with pytest.raises(InputError, match="overlap"):
        window_bounds(100, 10, 10)


def test_long_document_uses_overlapping_windows(tiny_dir):
    emb = Embedder(str(tiny_dir("bert64")), show_progress=False)  # 64-token window
    chunks = [f"the city {w} has a river and an old house" for w in "one two three four five six seven eight nine ten".split()]
    long_doc = chunks * 3  # ~300 tokens, five or more windows
    out = emb.encode_contextual([long_doc], overlap=16)[0]
    assert out.shape == (len(long_doc), 32)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    # changing the last chunk reaches chunks in the same or overlapping window, not the first one
    edited = long_doc[:-1] + ["the king and the queen of france"]
    out2 = emb.encode_contextual([edited], overlap=16)[0]
    np.testing.assert_allclose(out[0], out2[0], atol=1e-5)
    assert not np.allclose(out[-2], out2[-2], atol=1e-4)


def test_bad_documents(emb):
    with pytest.raises(InputError, match=r"documents\[1\] has no chunks"):
        emb.encode_contextual([DOC, []])
    with pytest.raises(InputError, match=r"documents\[0\]\[1\] is an empty string"):
        emb.encode_contextual([["ok text", "  "]])
    with pytest.raises(InputError, match="list of chunk strings"):
        emb.encode_contextual(["just a string"])


def _prompted(tiny_dir, tmp_path, family, include_prompt):
    """A tiny model saved as a sentence-transformers folder whose default prompt is "query"."""
    import shutil

    from diffembed.modeling.st_format import ModelConfig, PoolingConfig, STFolder, write_st_files

    folder = tmp_path / f"{family}-{include_prompt}"
    shutil.copytree(tiny_dir(family), folder)
    write_st_files(folder, STFolder(pooling=PoolingConfig(mode="mean", include_prompt=include_prompt, dimension=32),
                                    model=ModelConfig(prompts={"query": "the city of "}, default_prompt_name="query")))
    return Embedder(str(folder), show_progress=False)


@pytest.mark.parametrize("include_prompt", [True, False], ids=["with-prompt", "without-prompt"])
@pytest.mark.parametrize("family", ["bert", "qwen3", "llama"])
def test_one_chunk_document_equals_plain_encode_with_a_prompt(tiny_dir, tmp_path, family, include_prompt):
    """The prompt leads the first chunk; without it in the pool (``include_prompt=False``) the first
    chunk leaves out what ``encode`` leaves out. The default prompt applies to late chunking too."""
    emb = _prompted(tiny_dir, tmp_path, family, include_prompt)
    text = "the cat sat on the mat in the old house"
    want = emb.encode(text, prompt_name="query")
    assert not np.allclose(want, emb.encode(text, prompt=""), atol=1e-3)  # the prompt matters
    np.testing.assert_allclose(emb.encode(text), want, atol=1e-6)  # the default prompt
    for got in (emb.encode_contextual([[text]], prompt_name="query")[0][0], emb.encode_contextual([[text]])[0][0],
                emb.encode_documents([text], prompt_name="query")[0].embeddings[0],
                emb.encode_documents([text])[0].embeddings[0]):
        np.testing.assert_allclose(got, want, atol=1e-5)
    plain = emb.encode(text, prompt="")
    np.testing.assert_allclose(emb.encode_contextual([[text]], prompt="")[0][0], plain, atol=1e-5)
    np.testing.assert_allclose(emb.encode_documents([text], prompt="")[0].embeddings[0], plain, atol=1e-5)


def test_prompt_left_out_of_the_first_chunk_only(tiny_dir, tmp_path):
    """include_prompt=False: [CLS] and the prompt belong to no chunk (as sentence-transformers pools a
    prompted text); the second chunk is pooled as before, with the prompt as context."""
    emb = _prompted(tiny_dir, tmp_path, "bert", include_prompt=False)
    tok = emb.tokenizer
    prompt_ids = tok("the city of ", add_special_tokens=False)["input_ids"]
    ids = [tok(c, add_special_tokens=False)["input_ids"] for c in DOC[:2]]
    seq = [tok.cls_token_id, *prompt_ids, *ids[0], tok.sep_token_id, *ids[1], tok.sep_token_id]
    with torch.no_grad():
        hidden = emb.model(input_ids=torch.tensor([seq])).last_hidden_state[0]
    skip, a0 = 1 + len(prompt_ids), 1 + len(prompt_ids) + len(ids[0])
    assert emb.prompt_skip("the city of ") == skip
    manual = torch.stack([hidden[skip:a0].mean(0), hidden[a0 + 1 :].mean(0)])
    np.testing.assert_allclose(emb.encode_contextual([DOC[:2]], normalize=False)[0], manual.numpy(), atol=1e-5)
    raw = emb.encode_documents([DOC[0] + " " + DOC[1]], chunk_tokens=len(ids[0]), normalize=False)[0]
    assert raw.chunks[0] == DOC[0]  # raw text: no separator, the first chunk ends where DOC[1] begins
    seq = [tok.cls_token_id, *prompt_ids, *ids[0], *ids[1], tok.sep_token_id]
    with torch.no_grad():
        hidden = emb.model(input_ids=torch.tensor([seq])).last_hidden_state[0]
    np.testing.assert_allclose(raw.embeddings[0], hidden[skip : skip + len(ids[0])].mean(0).numpy(), atol=1e-5)


def test_skip_never_reaches_past_the_first_chunk():
    template = SpecialTemplate(prefix=(1,), suffix=(2,), separator=(2,), pad_id=0)
    plan = plan_from_chunks([[10, 11], [12, 13]], template, skip=5)
    assert plan.owner.tolist() == [-1, -1, -1, -1, 1, 1, 1]
