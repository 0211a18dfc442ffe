"""SIGKILL in the middle of `diffembed index add`: the index stays readable and a re-run completes it."""

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from diffembed.index import IndexStore, Searcher

WORDS = "the city river capital people king queen book story war peace red green blue cat dog house tree water".split()


def count_docs(db_path) -> int:
    try:
        con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("SELECT COUNT(*) FROM documents").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def run_add(corpus, index, model):
    cmd = [sys.executable, "-m", "diffembed.cli.app", "index", "add", str(corpus), "--index", str(index),
           "--model", str(model), "--mode", "naive", "--chunk-tokens", "8", "--batch-docs", "1"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_sigkill_mid_add_then_rerun(tmp_path, tiny_dir):
    rng = random.Random(0)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    n_docs = 600
    for i in range(n_docs):
        sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) + " ." for _ in range(rng.randint(2, 6))]
        (corpus / f"doc{i:05d}.txt").write_text(f"{WORDS[i % len(WORDS)]} number {i} . " + " ".join(sentences))
    index = tmp_path / "ix"
    model = tiny_dir("qwen3")
    proc = run_add(corpus, index, model)
    deadline = time.monotonic() + 120
    committed = 0
    while time.monotonic() < deadline and proc.poll() is None:
        committed = count_docs(index / "index.sqlite")
        if committed >= 10:
            break
        time.sleep(0.01)
    if proc.poll() is not None:
        pytest.fail(f"index add ended before it could be killed: {proc.stderr.read().decode()[-2000:]}")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    store = IndexStore(index)
    assert store.db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    docs, chunks = store.counts()
    assert 10 <= docs < n_docs
    # every committed document is whole: its chunk rows match the count recorded with it
    partial = store.db.execute(
        "SELECT d.doc_id FROM documents d LEFT JOIN chunks c ON c.doc_id = d.doc_id "
        "GROUP BY d.doc_id HAVING COUNT(c.id) != MAX(d.n_chunks)").fetchall()
    assert partial == []
    searcher = Searcher(index)
    searcher.dense.refresh()
    assert len(searcher.dense) == chunks  # all committed chunks are in the search structure
    first = store.db.execute("SELECT doc_id, text FROM chunks ORDER BY id LIMIT 1").fetchone()
    assert first[0] in {h.doc_id for h in searcher.search(first[1], k=10)}
    store.close()

    rerun = run_add(corpus, index, model)
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err.decode()[-2000:]
    store = IndexStore(index)
    assert store.counts()[0] == n_docs
    dupes = store.db.execute("SELECT doc_id, chunk_index FROM chunks GROUP BY 1, 2 HAVING COUNT(*) > 1").fetchall()
    assert dupes == []
    summary = err.decode()
    assert f"{docs} unchanged" in summary or f"{docs} unchanged".replace(" ", "") in summary.replace(" ", "")
