"""`diffembed index add` failures on a tiny model: a full disk and bad input end in one `error:` line,
exit 2, no traceback, no lost data, and no index folder left behind by a run that stored nothing."""

from __future__ import annotations

import json
import sqlite3

import pytest
from cli_helpers import assert_clean_error, run_cli

from diffembed.index import IndexStore


@pytest.fixture
def corpus(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.txt").write_text("the city has a river . the river is old . it was a capital .")
    (folder / "b.md").write_text("the king and the queen had a book . the book has a story of war and peace .")
    return folder


def add(args, tiny_dir, monkeypatch, capsys, model=None):
    return run_cli(["index", "add", *args, "--model", model or tiny_dir("qwen3")], monkeypatch, capsys)


def test_disk_full_is_one_line_and_keeps_the_index(tmp_path, corpus, tiny_dir, monkeypatch, capsys):
    ix = tmp_path / "ix"
    code, out, err = add([corpus, "--index", ix, "--chunk-tokens", "8", "--json"], tiny_dir, monkeypatch, capsys)
    assert code == 0, err
    before = IndexStore(ix)
    counts, generation = before.counts(), before.generation
    before.close()
    search = ["search", "queen book", "--index", ix, "--json", "-k", "3"]
    code, out, err = run_cli(search, monkeypatch, capsys)
    hits_before = json.loads(out)["hits"]
    assert code == 0 and len(hits_before) == 3
    more = tmp_path / "more"
    more.mkdir()
    for i in range(20):
        (more / f"m{i}.txt").write_text(f"document {i} . " + "the river runs by the old city . " * 40)

    real_connect = sqlite3.connect

    def full_disk(*args, **kwargs):  # the database may not grow by one page: SQLite's own SQLITE_FULL
        con = real_connect(*args, **kwargs)
        con.execute(f"PRAGMA max_page_count = {con.execute('PRAGMA page_count').fetchone()[0]}")
        return con

    monkeypatch.setattr(sqlite3, "connect", full_disk)
    code, out, err = add([more, "--index", ix], tiny_dir, monkeypatch, capsys)
    assert_clean_error(code, err, "database or disk is full", "not stored")
    monkeypatch.setattr(sqlite3, "connect", real_connect)
    after = IndexStore(ix)
    assert after.db.execute("PRAGMA integrity_check").fetchone() == ("ok",) and (after.counts(), after.generation) == (counts, generation)
    code, out, err = run_cli(search, monkeypatch, capsys)
    assert code == 0 and json.loads(out)["hits"] == hits_before  # the index answers exactly as before


def test_failed_add_creates_no_index(tmp_path, corpus, tiny_dir, monkeypatch, capsys):
    dupes = tmp_path / "dupes.jsonl"
    dupes.write_text("".join(json.dumps({"_id": f"d{i % 3}", "text": f"text {i}"}) + "\n" for i in range(4)))
    latin1 = tmp_path / "latin1"
    latin1.mkdir()
    (latin1 / "x.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    empty = tmp_path / "blank"
    empty.mkdir()
    (empty / "e.md").write_text("  \n")
    cases = [
        ([corpus, "--chunk-tokens", "0"], "chunk_tokens must be a positive integer"),
        ([corpus, "--mode", "bogus"], "unknown chunking mode 'bogus'"),
        ([corpus, "--batch-docs", "0"], "batch_docs must be a positive integer"),
        ([dupes], "document id 'd0' appears twice"),
        ([latin1], "x.txt (not UTF-8)"),
        ([empty], "1 empty"),
        ([corpus / "a.txt", "--prune"], "--prune needs a folder"),
        ([corpus, "--model", tmp_path / "no-model"], None),  # a model that does not load
    ]
    for i, (args, needle) in enumerate(cases):
        ix = tmp_path / f"ix{i}"
        model = args[-1] if "--model" in args else None
        args = args[:-2] if model else args
        code, out, err = add([*args, "--index", ix], tiny_dir, monkeypatch, capsys, model=model)
        line = assert_clean_error(code, err, *([needle] if needle else []))
        assert not ix.exists(), f"{args}: {line} left {ix} behind"


def test_invalid_jsonl_fails_before_any_batch_is_written(tmp_path, corpus, tiny_dir, monkeypatch, capsys):
    ix = tmp_path / "ix"
    assert add([corpus, "--index", ix, "--chunk-tokens", "8"], tiny_dir, monkeypatch, capsys)[0] == 0
    records = tmp_path / "records.jsonl"
    lines = [json.dumps({"_id": f"r{i}", "text": f"record {i} about a river"}) for i in range(10)]
    records.write_text("\n".join([*lines, json.dumps({"_id": "r1", "text": "again"})]) + "\n")
    code, out, err = add([records, "--index", ix, "--batch-docs", "1"], tiny_dir, monkeypatch, capsys)
    assert_clean_error(code, err, "'r1' appears twice")
    assert IndexStore(ix).counts()[0] == 2  # the first nine records were not stored one by one


def test_prune_and_rm_by_path(tmp_path, corpus, tiny_dir, monkeypatch, capsys):
    ix = tmp_path / "ix"
    assert add([corpus, "--index", ix, "--chunk-tokens", "8"], tiny_dir, monkeypatch, capsys)[0] == 0
    (corpus / "b.md").unlink()
    code, out, err = add([corpus, "--index", ix, "--json"], tiny_dir, monkeypatch, capsys)
    assert code == 0 and json.loads(out)["index_documents"] == 2  # without --prune a deleted file stays
    code, out, err = add([corpus, "--index", ix, "--prune", "--json"], tiny_dir, monkeypatch, capsys)
    summary = json.loads(out)
    assert code == 0 and (summary["removed"], summary["index_documents"]) == (1, 1)
    monkeypatch.chdir(corpus)  # a file's path names its document too, from anywhere
    code, out, err = run_cli(["index", "rm", "a.txt", "--index", ix], monkeypatch, capsys)
    assert code == 0 and "0 documents" in err
