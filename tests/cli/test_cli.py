"""End-to-end tests of the `diffembed` command line (encode, info, help, error handling).

Every command runs in-process through ``diffembed.cli.app.main`` (the console-script entry point), so
the ``DiffembedError`` -> ``error: ...`` / exit 2 wrapper is exercised. One test runs the module
entry (``python -m diffembed``) in a subprocess. All tests use the packaged all-MiniLM-L6-v2 on CPU,
offline.
"""

from __future__ import annotations

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cli_helpers import assert_clean_error, run_cli

from diffembed import Embedder

DIM = 384

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Embeddings map text to vectors.",
    "Paris is the capital of France.",
    "A short one",
    "Late chunking pools chunk vectors from a pass over the whole document.",
]


# ---------------------------------------------------------------------------- helpers
def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read_parquet_embeddings(path: Path) -> tuple[pa.Table, np.ndarray]:
    table = pq.read_table(path)
    matrix = np.array(table.column("embedding").to_pylist())
    return table, matrix


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()


@pytest.fixture
def txt_input(tmp_path) -> Path:
    return write_lines(tmp_path / "texts.txt", TEXTS)


# ---------------------------------------------------------------------------- module entry / help
def test_module_entry_help_subprocess():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "diffembed", "--help"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Usage" in proc.stdout
    for command in ("encode", "info", "demo"):
        assert command in proc.stdout


def test_app_help(monkeypatch, capsys):
    code, out, err = run_cli(["--help"], monkeypatch, capsys)
    assert code == 0, err
    assert "Usage" in out
    for command in ("encode", "info", "demo"):
        assert command in out


@pytest.mark.parametrize("command, option", [("encode", "--precision"), ("info", "--json"), ("demo", "--json")])
def test_command_help(command, option, monkeypatch, capsys):
    code, out, err = run_cli([command, "--help"], monkeypatch, capsys)
    assert code == 0, err
    assert "Usage" in out
    assert command in out
    assert option in out


# ---------------------------------------------------------------------------- info
def test_info_json(monkeypatch, capsys):
    code, out, err = run_cli(["info", "--json"], monkeypatch, capsys)
    assert code == 0, err
    details = json.loads(out)
    assert details["dim"] == DIM
    assert details["max_length"] == 256
    assert details["bidirectional"] is True
    assert details["model_type"] == "bert"
    assert details["pooling"] == "mean"


def test_info_table(monkeypatch, capsys):
    code, out, err = run_cli(["info"], monkeypatch, capsys)
    assert code == 0, err
    assert "384" in out
    assert "dim" in out


def test_info_unknown_model(monkeypatch, capsys):
    code, _, err = run_cli(["info", "/nonexistent/model"], monkeypatch, capsys)
    assert_clean_error(code, err, "/nonexistent/model")


# ---------------------------------------------------------------------------- encode round trips
def test_encode_txt_to_npy(txt_input, tmp_path, embedder, monkeypatch, capsys):
    out = tmp_path / "out.npy"
    code, _, err = run_cli(["encode", txt_input, "-o", out], monkeypatch, capsys)
    assert code == 0, err
    got = np.load(out)
    assert got.dtype == np.float32
    assert got.shape == (len(TEXTS), DIM)
    np.testing.assert_allclose(got, embedder.encode(TEXTS), atol=1e-5)
    ids_file = tmp_path / "out.ids.txt"
    assert ids_file.read_text(encoding="utf-8").splitlines() == [str(i) for i in range(len(TEXTS))]
    # no temporary files left behind by the atomic writer
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.ids.txt", "out.npy", "texts.txt"]


def test_encode_jsonl_to_parquet(tmp_path, embedder, monkeypatch, capsys):
    ids = [f"doc-{i}" for i in range(len(TEXTS))]
    src = write_jsonl(tmp_path / "in.jsonl", [{"_id": i, "text": t} for i, t in zip(ids, TEXTS)])
    out = tmp_path / "out.parquet"
    code, _, err = run_cli(["encode", src, "-o", out], monkeypatch, capsys)
    assert code == 0, err
    table, got = read_parquet_embeddings(out)
    assert table.column_names == ["id", "embedding"]
    assert table.column("id").to_pylist() == ids
    assert got.shape == (len(TEXTS), DIM)
    np.testing.assert_allclose(got, embedder.encode(TEXTS), atol=1e-5)


def test_encode_parquet_to_npy(tmp_path, embedder, monkeypatch, capsys):
    ids = [f"p{i}" for i in range(len(TEXTS))]
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": ids, "text": TEXTS}), src)
    out = tmp_path / "out.npy"
    code, _, err = run_cli(["encode", src, "-o", out], monkeypatch, capsys)
    assert code == 0, err
    np.testing.assert_allclose(np.load(out), embedder.encode(TEXTS), atol=1e-5)
    assert (tmp_path / "out.ids.txt").read_text(encoding="utf-8").splitlines() == ids


def test_encode_contextual_jsonl_to_parquet(tmp_path, embedder, monkeypatch, capsys):
    docs = {
        "alpha": ["Berlin is the capital of Germany.", "It has about 3.7 million inhabitants.",
                  "The city is known for its museums."],
        "beta": ["Photosynthesis converts light into chemical energy.", "It happens in chloroplasts."],
    }
    src = write_jsonl(tmp_path / "docs.jsonl", [{"_id": d, "chunks": c} for d, c in docs.items()])
    out = tmp_path / "ctx.parquet"
    code, _, err = run_cli(["encode", src, "-o", out], monkeypatch, capsys)
    assert code == 0, err
    table, got = read_parquet_embeddings(out)
    assert table.column_names == ["id", "doc_id", "chunk_index", "embedding"]
    expected_ids = [f"{d}_{i}" for d, chunks in docs.items() for i in range(len(chunks))]
    assert table.column("id").to_pylist() == expected_ids
    assert table.column("doc_id").to_pylist() == [d for d, chunks in docs.items() for _ in chunks]
    assert table.column("chunk_index").to_pylist() == [i for chunks in docs.values() for i in range(len(chunks))]
    expected = np.concatenate(embedder.encode_contextual(list(docs.values())), axis=0)
    assert got.shape == expected.shape == (5, DIM)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # late chunking really differs from encoding the chunks on their own
    naive = embedder.encode([c for chunks in docs.values() for c in chunks])
    assert not np.allclose(got, naive, atol=1e-3)


@pytest.mark.parametrize(
    "precision, dtype, width",
    [("int8", np.int8, DIM), ("binary", np.int8, DIM), ("ubinary", np.uint8, DIM // 8)],
)
def test_encode_precisions(precision, dtype, width, txt_input, tmp_path, embedder, monkeypatch, capsys):
    out = tmp_path / f"{precision}.npy"
    code, _, err = run_cli(["encode", txt_input, "-o", out, "--precision", precision], monkeypatch, capsys)
    assert code == 0, err
    got = np.load(out)
    assert got.dtype == dtype
    assert got.shape == (len(TEXTS), width)
    if precision == "binary":
        assert set(np.unique(got).tolist()) <= {-1, 1}
    np.testing.assert_array_equal(got, embedder.encode(TEXTS, precision=precision))


def test_encode_precision_parquet_keeps_dtype(txt_input, tmp_path, monkeypatch, capsys):
    out = tmp_path / "u.parquet"
    code, _, err = run_cli(["encode", txt_input, "-o", out, "--precision", "ubinary"], monkeypatch, capsys)
    assert code == 0, err
    table = pq.read_table(out)
    assert table.schema.field("embedding").type == pa.list_(pa.uint8(), DIM // 8)


def test_encode_dimensions(txt_input, tmp_path, embedder, monkeypatch, capsys):
    out = tmp_path / "d128.npy"
    code, _, err = run_cli(["encode", txt_input, "-o", out, "--dimensions", "128"], monkeypatch, capsys)
    assert code == 0, err
    got = np.load(out)
    assert got.shape == (len(TEXTS), 128)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got, embedder.encode(TEXTS, dimensions=128), atol=1e-5)


def test_encode_no_normalize(txt_input, tmp_path, embedder, monkeypatch, capsys):
    out = tmp_path / "raw.npy"
    code, _, err = run_cli(["encode", txt_input, "-o", out, "--no-normalize"], monkeypatch, capsys)
    assert code == 0, err
    got = np.load(out)
    np.testing.assert_allclose(got, embedder.encode(TEXTS, normalize=False), atol=1e-5)
    assert not np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-3)


def test_encode_prompt(txt_input, tmp_path, embedder, monkeypatch, capsys):
    out = tmp_path / "prompted.npy"
    code, _, err = run_cli(["encode", txt_input, "-o", out, "--prompt", "query: "], monkeypatch, capsys)
    assert code == 0, err
    np.testing.assert_allclose(np.load(out), embedder.encode(TEXTS, prompt="query: "), atol=1e-5)


def test_encode_custom_text_field(tmp_path, embedder, monkeypatch, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": str(i), "body": t} for i, t in enumerate(TEXTS)])
    out = tmp_path / "out.npy"
    code, _, err = run_cli(["encode", src, "-o", out, "--text-field", "body"], monkeypatch, capsys)
    assert code == 0, err
    np.testing.assert_allclose(np.load(out), embedder.encode(TEXTS), atol=1e-5)


def test_encode_json_summary(txt_input, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out.npy"
    code, stdout, err = run_cli(["encode", txt_input, "-o", out, "--json"], monkeypatch, capsys)
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["vectors"] == len(TEXTS)
    assert summary["dim"] == DIM
    assert summary["records"] == len(TEXTS)
    assert summary["contextual"] is False
    assert summary["dtype"] == "float32"
    assert summary["files"] == [str(out), str(tmp_path / "out.ids.txt")]


def test_encode_plain_summary_goes_to_stderr(txt_input, tmp_path, monkeypatch, capsys):
    code, stdout, err = run_cli(["encode", txt_input, "-o", tmp_path / "out.npy"], monkeypatch, capsys)
    assert code == 0, err
    assert stdout == ""
    assert "Encoded 5 texts" in err


# ---------------------------------------------------------------------------- bad input -> clean error
def test_txt_empty_line_names_line(tmp_path, monkeypatch, capsys):
    src = write_lines(tmp_path / "gap.txt", ["first", "second", "", "fourth"])
    code, _, err = run_cli(["encode", src, "-o", tmp_path / "o.npy"], monkeypatch, capsys)
    assert_clean_error(code, err, "gap.txt:3:", "empty line")


def test_jsonl_malformed_line(tmp_path, monkeypatch, capsys):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"text": "ok"}\n{"text": "fine"}\n{"text": "broken"\n{"text": "after"}\n', encoding="utf-8")
    code, _, err = run_cli(["encode", src, "-o", tmp_path / "o.npy"], monkeypatch, capsys)
    assert_clean_error(code, err, ":3:", "malformed JSON")


@pytest.mark.parametrize("rows, out_name, needles", [
    pytest.param([{"text": "ok"}, {"title": "no text here"}], "o.npy", (":2:", "'text'"), id="missing-text"),
    pytest.param([{"chunks": ["a", "b"]}, {"chunks": ["a", 3]}], "o.parquet", (":2:", "'chunks'"), id="bad-chunks"),
    pytest.param([{"text": "a"}, {"chunks": ["b", "c"]}], "o.parquet", (":2:", "do not mix"), id="mixed"),
    pytest.param([{"_id": "a", "text": "x"}, {"_id": "b", "text": "y"}, {"_id": "a", "text": "z"}], "o.npy",
                 ("'a'", "more than once"), id="duplicate-ids"),
])
def test_jsonl_bad_records(rows, out_name, needles, tmp_path, monkeypatch, capsys):
    src = write_jsonl(tmp_path / "bad.jsonl", rows)
    code, _, err = run_cli(["encode", src, "-o", tmp_path / out_name], monkeypatch, capsys)
    assert_clean_error(code, err, *needles)


@pytest.mark.parametrize("value", [5, None, ["a", "b"], "   "])
def test_jsonl_non_string_or_blank_text(value, tmp_path, monkeypatch, capsys):
    src = write_jsonl(tmp_path / "nonstr.jsonl", [{"text": "ok"}, {"text": value}])
    code, _, err = run_cli(["encode", src, "-o", tmp_path / "o.npy"], monkeypatch, capsys)
    assert_clean_error(code, err, ":2:", "'text' must be a non-empty string")


def test_empty_jsonl(tmp_path, monkeypatch, capsys):
    src = tmp_path / "empty.jsonl"
    src.write_text("\n\n", encoding="utf-8")
    code, _, err = run_cli(["encode", src, "-o", tmp_path / "o.npy"], monkeypatch, capsys)
    assert_clean_error(code, err, "no records")


def test_unknown_model_path(txt_input, tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(["encode", txt_input, "-o", tmp_path / "o.npy", "--model", "/nonexistent/model"],
                           monkeypatch, capsys)
    assert_clean_error(code, err, "/nonexistent/model")
    assert not (tmp_path / "o.npy").exists()


@pytest.mark.parametrize("dims", ["999", "0", "-3"])
def test_bad_dimensions(dims, txt_input, tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(["encode", txt_input, "-o", tmp_path / "o.npy", "--dimensions", dims],
                           monkeypatch, capsys)
    assert_clean_error(code, err, f"dimensions={dims}", "384")
    assert not (tmp_path / "o.npy").exists()


def test_unknown_precision(txt_input, tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(["encode", txt_input, "-o", tmp_path / "o.npy", "--precision", "int4"],
                           monkeypatch, capsys)
    assert_clean_error(code, err, "int4", "float32")
    assert not (tmp_path / "o.npy").exists()


def test_unknown_input_format(txt_input, tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(["encode", txt_input, "-o", tmp_path / "o.npy", "--input-format", "csv"],
                           monkeypatch, capsys)
    assert_clean_error(code, err, "csv")


def test_unrecognised_input_extension(tmp_path, monkeypatch, capsys):
    src = write_lines(tmp_path / "texts.csv", TEXTS)
    code, _, err = run_cli(["encode", src, "-o", tmp_path / "o.npy"], monkeypatch, capsys)
    assert_clean_error(code, err, "--input-format")


def test_missing_input_file(tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(["encode", tmp_path / "nope.txt", "-o", tmp_path / "o.npy"], monkeypatch, capsys)
    assert_clean_error(code, err, "nope.txt", "does not exist")


def test_unreadable_input(tmp_path, monkeypatch, capsys):
    if os.geteuid() == 0:
        # root reads a chmod-000 file anyway; a directory given as input must fail just as cleanly
        src = tmp_path / "a_directory.txt"
        src.mkdir()
    else:
        src = write_lines(tmp_path / "secret.txt", TEXTS)
        src.chmod(0)
    try:
        code, _, err = run_cli(["encode", src, "-o", tmp_path / "o.npy"], monkeypatch, capsys)
    finally:
        if src.is_file():
            src.chmod(0o644)
    assert_clean_error(code, err, src.name)


def test_directory_input(tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(["encode", tmp_path, "-o", tmp_path / "o.npy"], monkeypatch, capsys)
    assert_clean_error(code, err, "not a file")


def test_invalid_utf8_txt(tmp_path, monkeypatch, capsys):
    src = tmp_path / "latin1.txt"
    src.write_bytes(b"fine line\ncaf\xe9 au lait\n\xff\xfe\n")
    code, _, err = run_cli(["encode", src, "-o", tmp_path / "o.npy"], monkeypatch, capsys)
    assert_clean_error(code, err, "latin1.txt", "UTF-8")


def test_invalid_utf8_jsonl(tmp_path, monkeypatch, capsys):
    src = tmp_path / "bad.jsonl"
    src.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    code, _, err = run_cli(["encode", src, "-o", tmp_path / "o.npy"], monkeypatch, capsys)
    assert_clean_error(code, err, "bad.jsonl", "UTF-8")


def test_corrupt_parquet(tmp_path, monkeypatch, capsys):
    src = tmp_path / "broken.parquet"
    src.write_bytes(b"this is not a parquet file at all")
    code, _, err = run_cli(["encode", src, "-o", tmp_path / "o.npy"], monkeypatch, capsys)
    assert_clean_error(code, err, "broken.parquet")


@pytest.mark.parametrize("name", ["out.csv", "out", "out.npz"])
def test_unsupported_output_extension(name, txt_input, tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(["encode", txt_input, "-o", tmp_path / name], monkeypatch, capsys)
    assert_clean_error(code, err, ".npy or .parquet")
    assert not (tmp_path / name).exists()


def test_output_path_is_directory(txt_input, tmp_path, monkeypatch, capsys):
    target = tmp_path / "taken.npy"
    target.mkdir()
    code, _, err = run_cli(["encode", txt_input, "-o", target], monkeypatch, capsys)
    assert_clean_error(code, err, "cannot write")
    assert target.is_dir()
    assert list(target.iterdir()) == []
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_no_truncate_rejects_long_text(tmp_path, monkeypatch, capsys):
    src = write_lines(tmp_path / "long.txt", ["short", " ".join(["word"] * 600)])
    code, _, err = run_cli(["encode", src, "-o", tmp_path / "o.npy", "--no-truncate"], monkeypatch, capsys)
    assert_clean_error(code, err, "input[1]", "tokens")
    # the default truncates instead of failing
    code, _, err = run_cli(["encode", src, "-o", tmp_path / "o.npy"], monkeypatch, capsys)
    assert code == 0, err
    assert np.load(tmp_path / "o.npy").shape == (2, DIM)


def test_missing_output_option_is_usage_error(txt_input, monkeypatch, capsys):
    code, _, err = run_cli(["encode", txt_input], monkeypatch, capsys)
    assert code == 2
    assert "Traceback" not in err
    assert "--output" in err


# ---------------------------------------------------------------------------- atomic output
@pytest.mark.parametrize(
    "lines, bad_args",
    [
        pytest.param(["one", "", "three"], [], id="bad-input"),
        pytest.param(TEXTS, ["--precision", "int4"], id="bad-precision"),
        pytest.param(TEXTS, ["--dimensions", "999"], id="bad-dimensions"),
        pytest.param(TEXTS, ["--model", "/nonexistent/model"], id="bad-model"),
    ],
)
def test_failed_encode_leaves_existing_output_untouched(lines, bad_args, tmp_path, monkeypatch, capsys):
    sentinel = b"\x93NUMPY sentinel bytes that must survive"
    ids_sentinel = b"keep\nthese\nids\n"
    out = tmp_path / "keep.npy"
    ids_out = tmp_path / "keep.ids.txt"
    out.write_bytes(sentinel)
    ids_out.write_bytes(ids_sentinel)
    src = write_lines(tmp_path / "in.txt", lines)
    code, _, err = run_cli(["encode", src, "-o", out, *bad_args], monkeypatch, capsys)
    assert_clean_error(code, err)
    assert out.read_bytes() == sentinel
    assert ids_out.read_bytes() == ids_sentinel
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_failed_encode_leaves_existing_parquet_untouched(tmp_path, monkeypatch, capsys):
    out = tmp_path / "keep.parquet"
    out.write_bytes(b"PAR1 sentinel")
    src = write_jsonl(tmp_path / "bad.jsonl", [{"text": "ok"}, {"text": 7}])
    code, _, err = run_cli(["encode", src, "-o", out], monkeypatch, capsys)
    assert_clean_error(code, err, ":2:")
    assert out.read_bytes() == b"PAR1 sentinel"


def test_successful_encode_replaces_existing_output(txt_input, tmp_path, embedder, monkeypatch, capsys):
    out = tmp_path / "replace.npy"
    out.write_bytes(b"old")
    code, _, err = run_cli(["encode", txt_input, "-o", out], monkeypatch, capsys)
    assert code == 0, err
    np.testing.assert_allclose(np.load(out), embedder.encode(TEXTS), atol=1e-5)


# ---------------------------------------------------------------------------- regressions
def test_txt_splits_only_on_newlines(tmp_path, monkeypatch, capsys):
    src = tmp_path / "seps.txt"
    src.write_text("alpha\u2028beta\ngamma\x0cdelta\nlast\n", encoding="utf-8")
    out = tmp_path / "seps.npy"
    code, _, err = run_cli(["encode", src, "-o", out], monkeypatch, capsys)
    assert code == 0, err
    assert np.load(out).shape[0] == 3
    assert (tmp_path / "seps.ids.txt").read_text(encoding="utf-8").splitlines() == ["0", "1", "2"]


def test_failed_ids_write_leaves_existing_npy_untouched(txt_input, tmp_path, monkeypatch, capsys):
    out = tmp_path / "pair.npy"
    out.write_bytes(b"old npy")
    (tmp_path / "pair.ids.txt").mkdir()  # the ids file cannot be written
    code, _, err = run_cli(["encode", txt_input, "-o", out], monkeypatch, capsys)
    assert_clean_error(code, err, "cannot write", "ids.txt")
    assert out.read_bytes() == b"old npy"
