"""The causal backbone variant (`model.attention: causal`, issue 14): a decoder kept causal through a
pairs stage and its export, pooled at the EOS the tokenizer appends, and loaded alike by Embedder,
`diffembed serve`, sentence-transformers and the training stage itself."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffembed.errors import DiffembedError
from diffembed.modeling.bidirectional import attends_to_future
from diffembed.training.train_config import TrainRecipe
from tiny_models import WORDS, add_chat_template, build_tiny

TEXTS = ["the cat sat on the mat", "red green blue", "the old king and the queen of paris",
         "one two three four five six seven eight nine ten and the river"]
VOCAB = sorted(set(WORDS) - {"!", ",", ".", "?"})


def pairs_file(path, n=40, seed=0):
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a = rng.sample(VOCAB, 3)
        rows.append({"query": " ".join(a[:2]), "positive": " ".join(a + rng.sample(VOCAB, 2))})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def causal_recipe(out, model, pairs, attention="causal"):
    model_section = {"path": str(model)} if attention is None else {"path": str(model), "attention": attention}
    return TrainRecipe.model_validate({
        "output_dir": str(out), "model": model_section,
        "stages": [{"name": "pairs", "data": {"train": [str(pairs)]}, "batch": {"size": 8},
                    "train": {"steps": 2, "log_every": 1}, "optim": {"lr": 1e-3}}]})


@pytest.fixture(scope="module", params=["llama", "qwen3-chat"])
def causal_run(request, tmp_path_factory):
    """(start folder, exported folder) of a 2-step causal pairs stage on a tiny random decoder; the
    qwen3 one's tokenizer has a chat template, as SmolLM2's has."""
    from diffembed.training.stages import run_recipe

    root = tmp_path_factory.mktemp(f"causal_{request.param}")
    family = request.param.removesuffix("-chat")
    start = build_tiny(root / family, family)
    if request.param.endswith("-chat"):
        add_chat_template(start)
    out = run_recipe(causal_recipe(root / "run", start, pairs_file(root / "pairs.jsonl")), progress=False)["pairs"]
    return start, out


def test_the_export_records_causal_attention_and_last_token_pooling(causal_run):
    from diffembed.modeling.layout import read_model_spec

    _, out = causal_run
    config = json.loads((out / "config.json").read_text())
    assert config["is_causal"] is True and config["use_bidirectional_attention"] is False
    pooling = json.loads((out / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode"] == "lasttoken"  # sentence-transformers 6.x's own spelling
    spec = read_model_spec(out)
    assert spec.marked_causal and spec.pooling == "last"
    info = json.loads((out / "diffembed_train.json").read_text())
    assert info["attention"] == "causal"
    assert "causal" in (out / "README.md").read_text()


def test_attention_stays_causal_in_every_loader(causal_run):
    """Changing a later token leaves earlier positions' states alone: Embedder, sentence-transformers
    and the training stage's own loading of the folder."""
    from sentence_transformers import SentenceTransformer

    from diffembed import Embedder
    from diffembed.training.contrastive import load_st_model

    _, out = causal_run
    emb = Embedder(str(out), device="cpu", show_progress=False)
    assert emb.loaded.bidirectional is False and emb.loaded.pooling == "last"
    st = SentenceTransformer(str(out), device="cpu")
    trained, _ = load_st_model(out)
    for backbone in (emb.model, st[0].auto_model, trained[0].auto_model):
        assert not attends_to_future(backbone, backbone.config.vocab_size)
    # and directly: positions 0..2 do not move when position 3 changes; position 3 does
    ids = torch.tensor([[5, 6, 7, 8]])
    other = ids.clone()
    other[0, 3] = 9
    with torch.no_grad():
        a, b = (emb.model(input_ids=x).last_hidden_state[0] for x in (ids, other))
    torch.testing.assert_close(a[:3], b[:3])
    assert not torch.allclose(a[3], b[3])


def test_the_vector_is_the_state_of_the_appended_eos(causal_run):
    from diffembed import Embedder

    start, out = causal_run
    emb = Embedder(str(out), device="cpu", show_progress=False)
    tok = emb.tokenizer
    for text in TEXTS:
        ids = tok(text)["input_ids"]
        assert ids[-1] == tok.eos_token_id and tok.eos_token_id not in tok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            hidden = emb.model(input_ids=torch.tensor([ids])).last_hidden_state[0]
        np.testing.assert_allclose(emb.encode(text), F.normalize(hidden[-1], dim=-1).numpy(), atol=1e-5)
    # the start folder's own tokenizer did not append it: the stage added it, and saved it
    from transformers import AutoTokenizer

    stock = AutoTokenizer.from_pretrained(start)
    assert stock("the cat")["input_ids"][-1] != stock.eos_token_id


def test_embedder_serve_sentence_transformers_and_training_give_equal_vectors(causal_run):
    from fastapi.testclient import TestClient
    from sentence_transformers import SentenceTransformer

    from diffembed import Embedder
    from diffembed.serve.app import create_app
    from diffembed.training.contrastive import load_st_model

    _, out = causal_run
    emb = Embedder(str(out), device="cpu", show_progress=False)
    ours = emb.encode(TEXTS)
    st = SentenceTransformer(str(out), device="cpu").encode(TEXTS, normalize_embeddings=True)
    np.testing.assert_allclose(st, ours, atol=1e-5)
    for attention in (None, "causal"):  # as a later stage of the recipe would load it
        trained, _ = load_st_model(out, attention=attention)
        with torch.no_grad():
            vecs = F.normalize(trained.encode(TEXTS, convert_to_tensor=True), dim=-1).numpy()
        np.testing.assert_allclose(vecs, ours, atol=1e-5)
    with TestClient(create_app(emb)) as c:
        r = c.post("/v1/embeddings", json={"input": TEXTS})
    assert r.status_code == 200, r.text
    served = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
    np.testing.assert_allclose(served, ours, atol=1e-5)
    # truncated to a short window, the EOS is still the last token everywhere
    short = Embedder(str(out), device="cpu", max_length=5, show_progress=False).encode(TEXTS)
    st_short = SentenceTransformer(str(out), device="cpu")
    st_short.max_seq_length = 5
    np.testing.assert_allclose(st_short.encode(TEXTS, normalize_embeddings=True), short, atol=1e-5)
    assert not np.allclose(short[0], ours[0], atol=1e-3)


def test_the_stage_trains_causal_with_an_eos_on_every_text(tmp_path):
    """What the stage feeds its loss: EOS-terminated rows (padding after it), under causal attention,
    pooled at the EOS, from a stock decoder whose tokenizer adds no EOS."""
    from diffembed.training.contrastive import load_st_model

    start = build_tiny(tmp_path / "llama", "llama")
    st, _ = load_st_model(start, attention="causal")
    backbone = st[0].auto_model
    assert not attends_to_future(backbone, backbone.config.vocab_size)
    assert st[1].get_config_dict()["pooling_mode"] == "lasttoken"
    features = st.preprocess(TEXTS)
    eos = st.tokenizer.eos_token_id
    for ids, mask in zip(features["input_ids"], features["attention_mask"]):
        assert ids[int(mask.sum()) - 1] == eos
    # the default keeps today's behaviour: bidirectional, the runtime's mean pooling, no EOS added
    plain, _ = load_st_model(start, attention="bidirectional")
    assert attends_to_future(plain[0].auto_model, backbone.config.vocab_size)
    assert plain[1].get_config_dict()["pooling_mode"] == "mean"
    assert plain.tokenizer("the cat")["input_ids"][-1] != eos


@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
def test_a_chat_template_is_not_applied_in_training(tmp_path, attention):
    """The stage tokenizes bare texts, as Embedder does, even when the decoder's tokenizer has a chat
    template (which sentence-transformers would otherwise render every input through)."""
    from diffembed import Embedder
    from diffembed.training.contrastive import load_st_model

    start = add_chat_template(build_tiny(tmp_path / "qwen3", "qwen3"))
    st, _ = load_st_model(start, attention=attention)
    features = st.preprocess(TEXTS)
    emb = Embedder(str(start), device="cpu", bidirectional=attention == "bidirectional", show_progress=False)
    im_end = st.tokenizer.convert_tokens_to_ids("<|im_end|>")
    for text, ids, mask in zip(TEXTS, features["input_ids"], features["attention_mask"]):
        kept = ids[:int(mask.sum())].tolist()
        bare = emb.tokenizer(text, add_special_tokens=False)["input_ids"]
        assert kept[:len(bare)] == bare  # no system turn or role marker in front
        assert kept == bare + ([im_end] if attention == "causal" else [])  # only the EOS the causal stage adds


def test_the_default_recipe_and_its_fingerprint_are_unchanged(tmp_path):
    from diffembed.training.contrastive import ContrastiveTask

    model = build_tiny(tmp_path / "llama", "llama")
    pairs = pairs_file(tmp_path / "pairs.jsonl")
    implicit = causal_recipe(tmp_path / "a", model, pairs, attention=None)
    assert implicit.model.attention == "bidirectional"
    explicit = causal_recipe(tmp_path / "a", model, pairs, attention="bidirectional")
    causal = causal_recipe(tmp_path / "a", model, pairs)

    def fp(r):
        return ContrastiveTask(r.stages[0], str(model), attention=r.model.attention).fingerprint()

    assert fp(implicit) == fp(explicit) == ContrastiveTask(implicit.stages[0], str(model)).fingerprint()
    assert fp(causal) != fp(implicit)


def test_an_encoder_with_causal_attention_is_refused(tmp_path):
    from diffembed.training.stages import run_recipe

    bert = build_tiny(tmp_path / "bert", "bert")
    pairs = pairs_file(tmp_path / "pairs.jsonl")
    with pytest.raises(DiffembedError, match="is a bert encoder.*attention: bidirectional"):
        run_recipe(causal_recipe(tmp_path / "run", bert, pairs), progress=False)
    assert not (tmp_path / "run" / "pairs").exists()  # refused before any stage ran


def test_an_unknown_attention_is_refused_by_field(tmp_path):
    from diffembed.config_io import ConfigError, load_config

    path = tmp_path / "r.yaml"
    path.write_text("output_dir: out\nmodel: {attention: sideways}\nstages: [{name: p, data: {train: [x]}, "
                    "train: {steps: 1}}]\n")
    with pytest.raises(ConfigError, match="model.attention"):
        load_config(TrainRecipe, path, [])


def test_a_contextual_stage_keeps_the_variant(tmp_path):
    """A contextual stage under `attention: causal` trains and exports the same causal, EOS-pooled
    model; its late-chunked spans are mean-pooled as the runtime's are."""
    from sentence_transformers import SentenceTransformer

    from diffembed import Embedder
    from diffembed.training.stages import run_recipe

    start = build_tiny(tmp_path / "qwen3", "qwen3")
    rng = random.Random(1)
    docs = []
    for i in range(8):
        chunks = [" ".join(rng.sample(VOCAB, 5)) for _ in range(3)]
        docs.append({"id": f"d{i}", "chunks": chunks,
                     "queries": [{"query": " ".join(c.split()[:2]), "chunk": k} for k, c in enumerate(chunks)]})
    train = tmp_path / "docs.jsonl"
    train.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    cfg = TrainRecipe.model_validate({
        "output_dir": str(tmp_path / "run"), "model": {"path": str(start), "attention": "causal"},
        "stages": [{"name": "ctx", "kind": "contextual", "data": {"train": [str(train)]}, "batch": {"size": 4},
                    "train": {"steps": 2, "log_every": 1}}]})
    out = run_recipe(cfg, progress=False)["ctx"]
    assert json.loads((out / "config.json").read_text())["is_causal"] is True
    emb = Embedder(str(out), device="cpu", show_progress=False)
    assert not emb.loaded.bidirectional and emb.loaded.pooling == "last"
    np.testing.assert_allclose(SentenceTransformer(str(out), device="cpu").encode(TEXTS, normalize_embeddings=True),
                               emb.encode(TEXTS), atol=1e-5)
    assert emb.encode_contextual([docs[0]["chunks"]])[0].shape == (3, 32)
