"""Bulk embedding with Ray Data on a local 2-CPU Ray instance, offline.

Every pipeline is checked against ``Embedder`` run directly on the same inputs: the Ray layer must
not change a single vector. Each Ray execution starts fresh actors, and an actor spends most of its
start-up importing torch and transformers, so the tests share executions where they can.
"""

from __future__ import annotations

import json
import os

# Before Ray starts: its workers inherit the environment. No usage reporting, no uv runtime env.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import subprocess  # noqa: E402
import sys  # noqa: E402
from collections import Counter  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402

ray = pytest.importorskip("ray", reason="the Ray extra is not installed (pip install 'diffembed[ray]')")
import ray.data  # noqa: E402

from cli_helpers import run_cli  # noqa: E402
from diffembed import Embedder  # noqa: E402
from diffembed.bulk import embed_dataset, embed_to_parquet  # noqa: E402
from diffembed.bulk import ray_data as bulk  # noqa: E402
from diffembed.errors import DataFileError, DiffembedError, InputError  # noqa: E402

# Ray Data's own DataContext warns about its renamed settings on first use; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")
WORDS = ("the cat sat on the mat", "berlin is the capital of germany", "the river has water",
         "a king and a queen", "music and song", "the old red house", "one two three four five",
         "the dog is blue", "paris is in france", "war and peace")
TEXTS = [f"{WORDS[i % len(WORDS)]} {' '.join(WORDS[(i * 3) % len(WORDS)].split()[: i % 5 + 1])}" for i in range(40)]
DOCS = [
    ["berlin is the capital of germany .", "it has many people .", "the river has water ."],
    ["the cat sat on the mat ."],
    ["a king and a queen .", "the war was old .", "peace , music and song ."],
]
RAW = ["berlin is the capital of germany . it has many people . the river is old . a small tree .",
       "the cat sat on the mat . the dog sat on the cat ."]


@pytest.fixture(scope="module")
def local_ray():
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    folder = tiny_dir("bert")
    return str(folder), Embedder(str(folder), device="cpu", show_progress=False)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def by_id(table) -> dict[str, dict]:
    return {r["id"]: r for r in table.to_pylist()}


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ---------------------------------------------------------------------------- pipelines
def test_text_mode_jsonl_to_parquet_matches_encode(local_ray, tiny, tmp_path):
    model, emb = tiny
    rows = [{"id": 1000 + i, "text": t, "title": f"title {i}"} for i, t in enumerate(TEXTS)]  # integer ids, 'id' field
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "vectors"
    summary = embed_to_parquet(src, out, model=model, concurrency=2, num_cpus_per_actor=0.5, batch_size=5,
                               keep_columns=["title"], actor_info=True)
    assert summary["rows"] == len(TEXTS) and summary["output"] == str(out)
    assert (summary["dim"], summary["dtype"]) == (emb.dim, "float32")
    assert leftovers(tmp_path) == []  # the temporary folder was renamed, nothing else left beside it

    table = pq.read_table(out)
    assert table.column_names == ["id", "text", "title", "actor_pid", "actor_model_loads", "embedding"]
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), emb.dim)  # fixed-size list
    got = by_id(table)
    assert sorted(got) == sorted(str(r["id"]) for r in rows)  # every id once, as a string
    expected = emb.encode(TEXTS)
    for i, r in enumerate(rows):
        row = got[str(r["id"])]
        assert (row["text"], row["title"]) == (r["text"], r["title"])
        np.testing.assert_allclose(np.asarray(row["embedding"], dtype=np.float32), expected[i], atol=1e-5)

    # One model load per actor process, although each actor embedded several 5-row batches.
    per_pid = Counter(table.column("actor_pid").to_pylist())
    assert set(table.column("actor_model_loads").to_pylist()) == {1}
    assert 1 <= len(per_pid) <= 2
    assert max(per_pid.values()) > 5


@pytest.fixture(scope="module")
def small_pipelines(local_ray, tiny):
    """Chunks and document mode run at the same time: each execution spends ~10 s starting an actor
    (mostly importing torch), and two actors at 0.5 CPU fit the 2-CPU instance side by side."""
    model, _ = tiny
    chunks = ray.data.from_items([{"_id": f"doc{i}", "chunks": c, "lang": "en"} for i, c in enumerate(DOCS)])
    raw = ray.data.from_items([{"_id": f"raw{i}", "text": t} for i, t in enumerate(RAW)])
    jobs = {
        "chunks": embed_dataset(chunks, model=model, mode="chunks", batch_size=2, keep_columns=["lang"],
                                num_cpus_per_actor=0.5),
        "document": embed_dataset(raw, model=model, mode="document", chunk_tokens=6, precision="ubinary",
                                  dimensions=16, num_cpus_per_actor=0.5),
    }
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = {name: pool.submit(collect, ds) for name, ds in jobs.items()}
        return {name: f.result(timeout=300) for name, f in futures.items()}


def collect(ds) -> pa.Table:
    """All output rows as one Arrow table, so column types are checked as written (take_all gives lists)."""
    return pa.concat_tables(ray.get(ds.to_arrow_refs()))


def test_chunks_mode_matches_encode_contextual(small_pipelines, tiny):
    _, emb = tiny
    table = small_pipelines["chunks"]
    expected = emb.encode_contextual(DOCS)
    assert table.num_rows == sum(len(d) for d in DOCS)
    assert table.column_names == ["id", "doc_id", "chunk_index", "text", "lang", "embedding"]
    got = by_id(table)
    for d, doc in enumerate(DOCS):
        for c, chunk in enumerate(doc):
            row = got[f"doc{d}_{c}"]
            assert (row["doc_id"], row["chunk_index"], row["text"], row["lang"]) == (f"doc{d}", c, chunk, "en")
            np.testing.assert_allclose(np.asarray(row["embedding"]), expected[d][c], atol=1e-5)


def test_document_mode_binary_matches_encode_documents(small_pipelines, tiny):
    _, emb = tiny
    table = small_pipelines["document"]
    expected = emb.encode_documents(RAW, chunk_tokens=6, precision="ubinary", dimensions=16)
    assert table.num_rows == sum(len(d.chunks) for d in expected) > len(RAW)  # really chunked
    assert table.schema.field("embedding").type == pa.list_(pa.uint8(), 2)  # 16 signs packed into 2 bytes
    got = by_id(table)
    for d, (text, doc) in enumerate(zip(RAW, expected)):
        for c, (chunk, span) in enumerate(zip(doc.chunks, doc.spans)):
            row = got[f"raw{d}_{c}"]
            assert (row["text"], row["char_start"], row["char_end"]) == (chunk, *span)
            assert text[row["char_start"] : row["char_end"]] == row["text"]
            np.testing.assert_array_equal(np.asarray(row["embedding"], dtype=np.uint8), doc.embeddings[c])


def test_failed_run_raises_the_actors_error_and_keeps_the_old_output(local_ray, tiny, tmp_path):
    rows = [{"_id": "ok", "text": "the cat"}, {"_id": "blank", "text": "   "}, {"_id": "ok2", "text": "the dog"}]
    src = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist(rows), src)
    out = tmp_path / "vectors"
    out.mkdir()
    (out / "old.parquet").write_bytes(b"previous run")
    # Raised inside the actor: Ray wraps it, embed_to_parquet gives back diffembed's own error.
    with pytest.raises(InputError, match="record 'blank': 'text' must be a non-empty string"):
        embed_to_parquet(src, out, model=tiny[0], overwrite=True)
    assert [p.name for p in out.iterdir()] == ["old.parquet"]
    assert leftovers(tmp_path) == []  # the partly written temporary folder is gone


def test_actor_in_process_takes_every_batch_format(tiny):
    """The actor is plain Python: called directly, each Ray batch format gives the same Arrow output."""
    import pandas as pd

    model, emb = tiny
    actor = bulk.EmbedActor(model, precision="int8", keep_columns=["n"], include_text=False)
    rows = {"_id": ["a", "b", "c"], "text": TEXTS[:3], "n": [1, 2, 3]}
    arrow = actor(pa.table(rows))
    assert arrow.column_names == ["id", "n", "embedding"]
    assert arrow.schema.field("embedding").type == pa.list_(pa.int8(), emb.dim)
    np.testing.assert_array_equal(np.array(arrow.column("embedding").to_pylist(), dtype=np.int8),
                                  emb.encode(TEXTS[:3], precision="int8"))
    assert actor(pd.DataFrame(rows)).equals(arrow)
    assert actor({k: np.array(v, dtype=object) for k, v in rows.items()}).equals(arrow)
    chunker = bulk.EmbedActor(model, mode="chunks")
    numpy_docs = {"_id": np.array(["d"], dtype=object), "chunks": np.array([np.array(DOCS[0], dtype=object)], dtype=object)}
    np.testing.assert_allclose(np.array(chunker(numpy_docs).column("embedding").to_pylist()),
                               emb.encode_contextual(DOCS[:1])[0], atol=1e-6)
    with pytest.raises(InputError, match="record 'b': 'text' must be a non-empty string"):
        actor(pa.table({"_id": ["a", "b"], "text": ["the cat", ""], "n": [1, 2]}))
    with pytest.raises(InputError, match="records need an id"):
        actor(pa.table({"text": ["the cat"], "n": [1]}))


def test_txt_lines_are_numbered_and_empty_lines_refused():
    batch = pa.table({"bytes": [b"the cat\r\nthe dog\n", b"a\n\nb\n"], "path": ["/d/a.txt", "/e/b.txt"]})
    lines = bulk._txt_lines(batch.slice(0, 1), labels={})
    assert lines.to_pylist() == [{"_id": "0", "text": "the cat"}, {"_id": "1", "text": "the dog"}]
    labels = bulk._labels(["/d/a.txt", "/e/b.txt"])
    assert bulk._txt_lines(batch.slice(0, 1), labels=labels).column("_id").to_pylist() == ["a.txt:0", "a.txt:1"]
    with pytest.raises(DataFileError, match=r"/e/b\.txt:2: empty line"):
        bulk._txt_lines(batch, labels=labels)


# ---------------------------------------------------------------------------- refused before any actor starts
def test_existing_output_is_refused_without_overwrite(local_ray, tiny, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"_id": "a", "text": "the cat"}])
    (tmp_path / "out").mkdir()
    with pytest.raises(DataFileError, match="already exists; pass --overwrite"):
        embed_to_parquet(src, tmp_path / "out", model=tiny[0])


def test_bad_inputs_are_refused_with_clear_errors(local_ray, tiny, tmp_path):
    model = tiny[0]
    with pytest.raises(DataFileError, match="does not exist"):
        embed_to_parquet(tmp_path / "missing.jsonl", tmp_path / "out", model=model)
    body = write_jsonl(tmp_path / "body.jsonl", [{"_id": "a", "body": "the cat", "chunks": ["the cat"]}])
    with pytest.raises(InputError, match="no 'text' column .*use mode 'chunks'"):
        embed_to_parquet(body, tmp_path / "out", model=model)
    no_ids = write_jsonl(tmp_path / "noid.jsonl", [{"text": "the cat"}])
    with pytest.raises(InputError, match="records need an id"):
        embed_to_parquet(no_ids, tmp_path / "out", model=model)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"_id": "a", "text": "the cat"}\n{"_id": "b", "text": \n', encoding="utf-8")
    with pytest.raises(DataFileError, match=r"cannot read .*broken\.jsonl: \w+Error"):
        embed_to_parquet(broken, tmp_path / "out", model=model)
    (tmp_path / "a.txt").write_text("the cat\n")
    with pytest.raises(DataFileError, match="mix formats"):
        embed_to_parquet([body, tmp_path / "a.txt"], tmp_path / "out", model=model)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []

    ds = ray.data.from_items([{"_id": "a", "text": "the cat"}])
    with pytest.raises(InputError, match="less than one CPU for reading and writing"):
        embed_dataset(ds, model=model, concurrency=2, num_cpus_per_actor=1)  # hung on 2 CPUs when tried
    with pytest.raises(InputError, match="less than one CPU for reading and writing"):
        embed_dataset(ds, model=model, concurrency=3, num_cpus_per_actor=0.5)
    with pytest.raises(InputError, match="cannot keep column"):
        embed_dataset(ds, model=model, keep_columns=["text"])
    with pytest.raises(InputError, match="unknown precision"):
        embed_dataset(ds, model=model, precision="int4")
    with pytest.raises(InputError, match="document mode"):
        embed_dataset(ds, model=model, mode="document", prompt="query: ")


def test_missing_ray_gives_an_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(DiffembedError, match=r"bulk embedding needs ray\[data\], which is not installed: pip install 'diffembed\[ray\]'"):
        bulk.require_ray()


def test_diffembed_and_its_cli_import_without_ray():
    code = "import sys, diffembed, diffembed.bulk, diffembed.cli.app; assert 'ray' not in sys.modules, 'ray imported'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------------------- CLI
def test_cli_bulk_embed_txt(local_ray, tiny, tmp_path, monkeypatch, capsys):
    model, emb = tiny
    lines = TEXTS[:12]
    src = tmp_path / "texts.txt"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    args = ["bulk-embed", src, "--output", out, "--model", model, "--precision", "int8", "--dimensions", "16", "--json"]
    code, stdout, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    summary = json.loads(stdout)  # stdout holds only the JSON; Ray's logs go to stderr
    assert (summary["rows"], summary["dim"], summary["dtype"], summary["output"]) == (12, 16, "int8", str(out))
    assert summary["seconds"] > 0 and summary["rows_per_second"] == pytest.approx(12 / summary["seconds"], abs=0.051)  # rounded to 0.1

    table = pq.read_table(out)
    assert table.schema.field("embedding").type == pa.list_(pa.int8(), 16)
    got = by_id(table)
    assert sorted(got, key=int) == [str(i) for i in range(12)]  # line numbers, as `diffembed encode` names them
    matrix = np.array([got[str(i)]["embedding"] for i in range(12)], dtype=np.int8)
    expected = emb.encode(lines, precision="int8", dimensions=16)
    assert np.abs(matrix.astype(int) - expected.astype(int)).max() <= 1  # rounding of float noise at most
    assert (matrix == expected).mean() > 0.95

    code, _, err = run_cli(args, monkeypatch, capsys)
    assert code == 2 and "error:" in err and "already exists" in err


def test_cli_bulk_embed_missing_input(local_ray, tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(["bulk-embed", tmp_path / "nope.jsonl", "-o", tmp_path / "out"], monkeypatch, capsys)
    assert code == 2 and "error:" in err and "does not exist" in err and "Traceback" not in err


# ---------------------------------------------------------------------------- real model
@pytest.mark.integration
def test_packaged_minilm_through_ray_matches_encode(local_ray, minilm):
    texts = ["Berlin is the capital of Germany.", "Embeddings map text to vectors.", "A cat sat on the mat."]
    ds = ray.data.from_items([{"_id": f"t{i}", "text": t} for i, t in enumerate(texts)])
    got = {r["id"]: r["embedding"] for r in embed_dataset(ds).take_all()}
    np.testing.assert_allclose(np.array([got[f"t{i}"] for i in range(3)]), minilm.encode(texts), atol=1e-5)
