"""Model merging: SLERP math (endpoints, midpoint norm, parallel fallback), N-way mean, folders that
load in Embedder and plain sentence-transformers, tied weights kept tied, one-line CLI errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from cli_helpers import assert_clean_error, run_cli
from diffembed.training.merge import DOT_THRESHOLD, PROVENANCE_FILE, lerp, merge_folders, slerp, weighted_mean
from tiny_models import build_tiny

TEXTS = ["the cat sat on the mat", "berlin is the capital of germany", "a red house by the river"]


# --- tensor math -------------------------------------------------------------------------------------


def _pair(seed: int = 0, shape=(7, 5)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g) * 3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_slerp_endpoints_are_exact(dtype):
    a, b = (x.to(dtype) for x in _pair())
    at0, lin0 = slerp(a, b, 0.0)
    at1, lin1 = slerp(a, b, 1.0)
    assert not lin0 and not lin1
    assert torch.equal(at0.to(dtype), a) and torch.equal(at1.to(dtype), b)


def _orthonormal(n: int, dim: int = 64) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(dim, n, generator=torch.Generator().manual_seed(5), dtype=torch.float64))
    return q.T.float()


def test_slerp_of_orthogonal_vectors_follows_the_great_circle():
    u, v = _orthonormal(2)
    mid, linear = slerp(u, v, 0.5)
    assert not linear
    assert math.isclose(float(mid.norm()), 1.0, rel_tol=1e-6)  # lerp's midpoint would have norm 1/sqrt(2)
    torch.testing.assert_close(mid, (u + v) / math.sqrt(2), rtol=1e-6, atol=1e-7)
    at, _ = slerp(u, v, 0.3)
    torch.testing.assert_close(at, math.cos(0.15 * math.pi) * u + math.sin(0.15 * math.pi) * v, rtol=1e-6, atol=1e-7)
    # equal norms r: the midpoint has norm r; mergekit applies the coefficients to the raw tensors
    r_mid, _ = slerp(3 * u, 3 * v, 0.5)
    assert math.isclose(float(r_mid.norm()), 3.0, rel_tol=1e-6)
    uneven, _ = slerp(u, 3 * v, 0.5)
    torch.testing.assert_close(uneven, math.sin(math.pi / 4) * (u + 3 * v), rtol=1e-6, atol=1e-7)


def test_near_parallel_and_zero_tensors_fall_back_to_lerp():
    a, noise = _pair(1)
    b = 2.5 * a + 1e-3 * noise  # |cos| just under 1
    cos = float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))
    assert abs(cos) > DOT_THRESHOLD
    for other in (b, -b):
        got, linear = slerp(a, other, 0.4)
        assert linear and torch.equal(got, lerp(a, other, 0.4))
    zero = torch.zeros_like(a)
    got, linear = slerp(zero, a, 0.5)
    assert linear and torch.equal(got, 0.5 * a)
    # just outside the threshold: real SLERP, which differs from lerp
    c = a + 0.2 * noise
    got, linear = slerp(a, c, 0.5)
    assert not linear and not torch.allclose(got, lerp(a, c, 0.5), rtol=0, atol=1e-6)


def test_weighted_mean_of_three():
    a, b = _pair(2)
    c = torch.randn(a.shape, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(weighted_mean([a, b, c], [1, 1, 1]), (a + b + c) / 3)
    torch.testing.assert_close(weighted_mean([a, b, c], [1, 2, 1]), (a + 2 * b + c) / 4)


# --- folders -----------------------------------------------------------------------------------------


def _st_files(folder: Path, dim: int) -> Path:
    """Make a transformers folder a sentence-transformers one (mean pooling, then Normalize)."""
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": False}))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": dim, "pooling_mode_mean_tokens": True, "pooling_mode_cls_token": False,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False, "include_prompt": True}))
    (folder / "2_Normalize").mkdir(exist_ok=True)
    (folder / "README.md").write_text("# model card of the first parent\n")
    return folder


@pytest.fixture(scope="module")
def berts(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("merge_inputs")
    return [_st_files(build_tiny(root / f"bert{seed}", "bert", seed=seed), 32) for seed in range(3)]


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_slerp_folder_endpoints_midpoint_and_provenance(berts, tmp_path):
    a, b = _tensors(berts[0]), _tensors(berts[1])
    for t, want in ((0.0, a), (1.0, b)):
        merge_folders(berts[:2], tmp_path / f"t{t}", t=t, progress=False)
        got = _tensors(tmp_path / f"t{t}")
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)

    result = merge_folders(berts[:2], tmp_path / "mid", t=0.5, progress=False)
    got = _tensors(tmp_path / "mid")
    for name in a:
        assert torch.equal(got[name], slerp(a[name], b[name], 0.5)[0].to(a[name].dtype)), name
    assert result.tensors == len(a) and result.slerped + result.interpolated_linearly == len(a)
    assert result.slerped > 0
    # the two LayerNorm weights start as all-ones in both random models: parallel -> lerp
    assert result.interpolated_linearly > 0
    prov = json.loads((tmp_path / "mid" / PROVENANCE_FILE).read_text())
    assert prov["method"] == "slerp" and prov["t"] == 0.5 and prov["inputs"] == [str(p.resolve()) for p in berts[:2]]
    out = tmp_path / "mid"
    assert (out / "modules.json").read_text() == (berts[0] / "modules.json").read_text()
    assert (out / "2_Normalize").is_dir() and (out / "tokenizer.json").is_file()
    assert not (out / "README.md").exists()  # the parent's card describes another model


def test_merged_folder_loads_in_embedder_and_sentence_transformers(berts, tmp_path):
    from sentence_transformers import SentenceTransformer

    from diffembed import Embedder

    out = tmp_path / "merged"
    merge_folders(berts[:2], out, t=0.3, progress=False)
    ours = Embedder(model=str(out), device="cpu", dtype="float32", show_progress=False).encode(TEXTS)
    theirs = SentenceTransformer(str(out), device="cpu").encode(TEXTS, convert_to_numpy=True)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    parent = Embedder(model=str(berts[0]), device="cpu", dtype="float32", show_progress=False).encode(TEXTS)
    assert np.abs(ours - parent).max() > 1e-3  # really a different model


def _tied_llama(folder: Path, seed: int) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    build_tiny(folder, "llama", seed=seed)  # the tokenizer; the model is replaced by a tied one
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=json.loads((folder / "config.json").read_text())["vocab_size"], hidden_size=32,
                      intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


def test_tied_weights_stay_tied(tmp_path):
    from transformers import LlamaForCausalLM

    inputs = [_tied_llama(tmp_path / f"llama{s}", s) for s in (0, 1)]
    out = tmp_path / "merged"
    merge_folders(inputs, out, t=0.5, progress=False)
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    with safe_open(str(inputs[0] / "model.safetensors"), framework="pt") as f:
        assert keys == set(f.keys())
    assert "lm_head.weight" not in keys and "model.embed_tokens.weight" in keys

    model = LlamaForCausalLM.from_pretrained(out)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    emb = [_tensors(p)["model.embed_tokens.weight"] for p in inputs]
    assert torch.equal(model.lm_head.weight.detach(), slerp(emb[0], emb[1], 0.5)[0])


def test_sharded_inputs_keep_their_layout(tmp_path):
    from transformers import BertModel

    inputs = []
    for seed in (0, 1):
        folder = build_tiny(tmp_path / f"bert{seed}", "bert", seed=seed)
        model = BertModel.from_pretrained(folder)
        (folder / "model.safetensors").unlink()
        model.save_pretrained(folder, max_shard_size="20KB")
        inputs.append(folder)
    index = json.loads((inputs[0] / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    out = tmp_path / "merged"
    result = merge_folders(inputs, out, t=0.5, progress=False)
    assert sorted(result.files) == sorted(set(index["weight_map"].values()))
    assert json.loads((out / "model.safetensors.index.json").read_text())["weight_map"] == index["weight_map"]
    merged = BertModel.from_pretrained(out).state_dict()
    a, b = (BertModel.from_pretrained(p).state_dict() for p in inputs)
    name = "encoder.layer.1.attention.self.query.weight"
    assert torch.equal(merged[name], slerp(a[name], b[name], 0.5)[0])


# --- CLI ---------------------------------------------------------------------------------------------


def test_cli_linear_mean_of_three_with_json(berts, tmp_path, monkeypatch, capsys):
    out = tmp_path / "mean"
    code, stdout, err = run_cli(["merge", *berts, "--linear", "--weights", "1,2,1", "-o", out, "--json"],
                                monkeypatch, capsys)
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["method"] == "linear" and summary["weights"] == [1.0, 2.0, 1.0] and summary["t"] is None
    got, parts = _tensors(out), [_tensors(p) for p in berts]
    assert summary["tensors"] == len(got)
    for name in got:
        want = (parts[0][name] + 2 * parts[1][name] + parts[2][name]) / 4
        torch.testing.assert_close(got[name], want, rtol=1e-6, atol=1e-6)


def test_cli_slerp_prints_the_folder(berts, tmp_path, monkeypatch, capsys):
    out = tmp_path / "c"
    code, stdout, err = run_cli(["merge", berts[0], berts[1], "--t", "0.25", "-o", out], monkeypatch, capsys)
    assert code == 0, err
    assert stdout.strip() == str(out) and "SLERP t=0.25" in err
    assert json.loads((out / PROVENANCE_FILE).read_text())["t"] == 0.25


def _other_shape(tmp_path: Path, berts: list[Path]) -> Path:
    """Same config as berts[1], but one tensor has another shape."""
    import shutil

    folder = tmp_path / "reshaped"
    shutil.copytree(berts[1], folder)
    tensors = _tensors(folder)
    name = "pooler.dense.bias"
    tensors[name] = torch.zeros(tensors[name].numel() + 1)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


@pytest.mark.parametrize("case", ["hidden_size", "tensor_shape", "missing", "three_for_slerp", "t_range",
                                  "weights_count", "weights_without_linear", "not_safetensors"])
def test_cli_bad_inputs_give_one_error_line(case, berts, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    if case == "hidden_size":
        wide = build_tiny(tmp_path / "wide", "bert")
        cfg = json.loads((wide / "config.json").read_text())
        from transformers import BertConfig, BertModel

        cfg.update(hidden_size=64, intermediate_size=128)
        BertModel(BertConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "transformers_version")})
                  ).save_pretrained(wide)
        _st_files(wide, 32)
        args, needles = [berts[0], wide], ["config.json differs", "'hidden_size' is 32 vs 64"]
    elif case == "tensor_shape":
        args, needles = [berts[0], _other_shape(tmp_path, berts)], ["'pooler.dense.bias' has shape (32,)", "(33,)"]
    elif case == "missing":
        args, needles = [berts[0], tmp_path / "nope"], ["does not exist", "nope"]
    elif case == "three_for_slerp":
        args, needles = [*berts], ["exactly two models", "--linear"]
    elif case == "t_range":
        args, needles = [berts[0], berts[1], "--t", "1.5"], ["--t must be between 0 and 1"]
    elif case == "weights_count":
        args, needles = [berts[0], berts[1], "--linear", "--weights", "1,2,3"], ["3 values for 2 models"]
    elif case == "weights_without_linear":
        args, needles = [berts[0], berts[1], "--weights", "1,2"], ["--weights needs --linear"]
    else:
        import shutil

        pickled = tmp_path / "pickled"
        shutil.copytree(berts[1], pickled)
        (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
        args, needles = [berts[0], pickled], ["has no safetensors weights"]
    code, _, err = run_cli(["merge", *args, "-o", out], monkeypatch, capsys)
    assert_clean_error(code, err, *needles)
    assert not out.exists() and not list(tmp_path.glob(".out.*"))  # nothing half-written
