"""The sentence-transformers folder format: what `write_st_files` writes, `read_st_folder` reads back,
and `Embedder(folder)` gives the vectors `SentenceTransformer(folder)` gives, for every pooling kind."""

import json
import shutil

import numpy as np
import pytest

from diffembed import Embedder
from diffembed.errors import ModelLoadError
from diffembed.modeling import read_model_spec
from diffembed.modeling.st_format import (ModelConfig, PoolingConfig, STFolder, TransformerConfig, read_st_folder,
                                          write_st_files)

# "germany" and "capital" are in the tiny vocabulary; the last text is longer than the 16-token window.
TEXTS = ["the cat sat on the mat", "berlin is the capital of germany", "one",
         " ".join(["red green blue cat dog sat mat house tree water"] * 3)]
PROMPTS = {"query": "the city of ", "document": ""}
POOLINGS = [(mode, include) for mode in ("mean", "cls", "last") for include in (True, False)]
IDS = [f"{mode}-{'with' if include else 'without'}-prompt" for mode, include in POOLINGS]


def _st_folder(tiny_dir, tmp_path, st: STFolder):
    folder = tmp_path / "model"
    shutil.copytree(tiny_dir("bert"), folder)
    write_st_files(folder, st)
    return folder


def _spec(mode="mean", include_prompt=True, max_seq_length=16, **model):
    return STFolder(transformer=TransformerConfig(max_seq_length=max_seq_length),
                    pooling=PoolingConfig(mode=mode, include_prompt=include_prompt, dimension=32),
                    model=ModelConfig(**model))


def _sentence_transformers(folder):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), device="cpu", trust_remote_code=False)


@pytest.mark.parametrize("mode,include_prompt", POOLINGS, ids=IDS)
def test_round_trip_reads_back_every_part(tmp_path, mode, include_prompt):
    written = _spec(mode, include_prompt, prompts=PROMPTS, similarity_fn_name="dot")
    write_st_files(tmp_path, written)
    read = read_st_folder(tmp_path)
    assert read == STFolder(transformer=written.transformer, pooling=written.pooling, normalize=True,
                            model=written.model, modules=("Transformer", "Pooling", "Normalize"))


@pytest.mark.parametrize("mode,include_prompt", POOLINGS, ids=IDS)
def test_written_folder_gives_sentence_transformers_vectors(tiny_dir, tmp_path, mode, include_prompt):
    """The proof the runtime reads what sentence-transformers defines: the same folder, the same
    vectors (the long text cut at the same 16 tokens)."""
    folder = _st_folder(tiny_dir, tmp_path, _spec(mode, include_prompt, prompts=PROMPTS))
    spec = read_model_spec(folder)
    assert (spec.pooling, spec.include_prompt, spec.max_length, spec.prompts) == (mode, include_prompt, 16, PROMPTS)
    emb, st = Embedder(str(folder), show_progress=False), _sentence_transformers(folder)
    assert emb.max_length == st.max_seq_length == 16
    np.testing.assert_allclose(emb.encode(TEXTS), st.encode(TEXTS, normalize_embeddings=True), atol=1e-5)


@pytest.mark.parametrize("mode,include_prompt", POOLINGS, ids=IDS)
def test_prompted_vectors_match_sentence_transformers(tiny_dir, tmp_path, mode, include_prompt):
    """Without the prompt, sentence-transformers also leaves the leading [CLS] out of the pool (mean),
    takes the first token after the prompt (cls) and still the last token (lasttoken)."""
    folder = _st_folder(tiny_dir, tmp_path, _spec(mode, include_prompt, prompts=PROMPTS))
    emb, st = Embedder(str(folder), show_progress=False), _sentence_transformers(folder)
    np.testing.assert_allclose(emb.encode(TEXTS, prompt_name="query"),
                               st.encode(TEXTS, prompt_name="query", normalize_embeddings=True), atol=1e-5)


@pytest.mark.parametrize("st_mode,ours", [("mean", "mean"), ("cls", "cls"), ("lasttoken", "last")])
def test_folder_saved_by_sentence_transformers_6(tiny_dir, tmp_path, st_mode, ours):
    """6.x writes `pooling_mode` (not the flags) and keeps the window in the tokenizer config."""
    from sentence_transformers import SentenceTransformer, models

    st = SentenceTransformer(modules=[models.Transformer(str(tiny_dir("bert")), max_seq_length=16),
                                      models.Pooling(32, pooling_mode=st_mode), models.Normalize()], device="cpu")
    st.save(str(tmp_path / "saved"))
    assert json.loads((tmp_path / "saved" / "1_Pooling" / "config.json").read_text())["pooling_mode"] == st_mode
    assert read_model_spec(tmp_path / "saved").pooling == ours
    emb = Embedder(str(tmp_path / "saved"), show_progress=False)
    assert emb.max_length == 16
    np.testing.assert_allclose(emb.encode(TEXTS), st.encode(TEXTS, normalize_embeddings=True), atol=1e-5)


def test_pooling_with_every_flag_off_is_mean_as_in_sentence_transformers(tiny_dir, tmp_path):
    folder = _st_folder(tiny_dir, tmp_path, _spec("cls"))
    flags = json.loads((folder / "1_Pooling" / "config.json").read_text())
    flags["pooling_mode_cls_token"] = False
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(flags))
    assert read_model_spec(folder).pooling == "mean"
    assert _sentence_transformers(folder)[1].pooling_mode == "mean"


def test_do_lower_case_is_applied_like_sentence_transformers(tiny_dir, tmp_path):
    folder = _st_folder(tiny_dir, tmp_path, STFolder(transformer=TransformerConfig(do_lower_case=True),
                                                     pooling=PoolingConfig(dimension=32)))
    assert read_model_spec(folder).do_lower_case
    texts = ["The CAT sat on the Mat", "BERLIN"]  # the tiny vocabulary is lower case: else all [UNK]
    ours = Embedder(str(folder), show_progress=False).encode(texts)
    np.testing.assert_allclose(ours, _sentence_transformers(folder).encode(texts, normalize_embeddings=True), atol=1e-5)
    plain = Embedder(str(tiny_dir("bert")), show_progress=False).encode(["the cat sat on the mat", "berlin"])
    np.testing.assert_allclose(ours, plain, atol=1e-6)


def test_default_prompt_read_from_a_sentence_transformers_folder(tiny_dir, tmp_path):
    folder = _st_folder(tiny_dir, tmp_path, _spec())
    meta = json.loads((folder / "config_sentence_transformers.json").read_text())
    (folder / "config_sentence_transformers.json").write_text(
        json.dumps({**meta, "prompts": PROMPTS, "default_prompt_name": "query"}))
    assert read_model_spec(folder).default_prompt_name == "query"
    np.testing.assert_allclose(Embedder(str(folder), show_progress=False).encode(TEXTS),
                               _sentence_transformers(folder).encode(TEXTS, normalize_embeddings=True), atol=1e-5)


@pytest.mark.parametrize("mode,include_prompt", POOLINGS, ids=IDS)
def test_written_default_prompt_gives_sentence_transformers_vectors(tiny_dir, tmp_path, mode, include_prompt):
    """The writer keeps a default prompt, which both runtimes apply to a call naming no prompt (and
    "" turns off); ``encode_query`` still takes the query prompt."""
    folder = _st_folder(tiny_dir, tmp_path, _spec(mode, include_prompt, prompts={"query": "the city of ",
                                                                                 "doc": "germany and "},
                                                  default_prompt_name="doc"))
    assert read_st_folder(folder).model.default_prompt_name == "doc"
    emb, st = Embedder(str(folder), show_progress=False), _sentence_transformers(folder)
    for ours, theirs in [(emb.encode(TEXTS), st.encode(TEXTS)),
                         (emb.encode(TEXTS, prompt=""), st.encode(TEXTS, prompt="")),
                         (emb.encode_query(TEXTS), st.encode_query(TEXTS))]:
        np.testing.assert_allclose(ours, theirs / np.linalg.norm(theirs, axis=1, keepdims=True), atol=1e-5)
    assert not np.allclose(emb.encode(TEXTS), emb.encode(TEXTS, prompt=""), atol=1e-3)


def test_writer_refuses_what_embedder_would_not_reproduce(tmp_path):
    with pytest.raises(ValueError, match="st_quantize"):
        write_st_files(tmp_path, STFolder(pooling=PoolingConfig(dimension=32), quantizer=True))
    with pytest.raises(ValueError, match="unknown pooling 'max'"):
        PoolingConfig(mode="max", dimension=32)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("file,content,needle", [
    ("sentence_bert_config.json", {"max_seq_length": 0}, "max_seq_length must be a positive integer"),
    ("sentence_bert_config.json", {"do_lower_case": "yes"}, "do_lower_case must be true or false"),
    ("1_Pooling/config.json", {"pooling_mode": "mean", "include_prompt": "no"}, "include_prompt must be true or false"),
    ("config_sentence_transformers.json", {"prompts": {"query": 3}}, "prompts must map names to strings"),
    ("config_sentence_transformers.json", {"prompts": {}, "default_prompt_name": "query"},
     "default_prompt_name 'query' is not one of its prompts"),
    ("diffembed.json", {"pooling": "max"}, "unknown pooling 'max'"),
])
def test_malformed_part_is_refused_naming_its_file(tiny_dir, tmp_path, file, content, needle):
    folder = _st_folder(tiny_dir, tmp_path, _spec())
    (folder / file).write_text(json.dumps(content))
    with pytest.raises(ModelLoadError, match=needle) as err:
        read_model_spec(folder)
    assert file.rsplit("/", 1)[-1] in str(err.value)
