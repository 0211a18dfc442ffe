"""Which file is which document (stable ids, pruning) and searching an index nobody may write."""

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from diffembed import Embedder
from diffembed.errors import InputError
from diffembed.index import IndexStore, Searcher, add_paths, open_for_adding

TEXTS = {
    "a.txt": "the city has a river . the river is old . it was a capital .",
    "b.txt": "the king and the queen had a book . the book has a story of war and peace .",
    "sub/c.md": "red green blue . the cat sat on the mat . the dog sat in the tree .",
}


@pytest.fixture(scope="module")
def qwen(tiny_dir):
    return Embedder(str(tiny_dir("qwen3")), show_progress=False)


def write(folder: Path, texts=TEXTS) -> Path:
    for name, text in texts.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def ids(store) -> list[str]:
    return [d for d, _ in store.sources()]


def add(ix, qwen, paths, **kw):
    store, settings, emb = open_for_adding(ix, embedder=qwen, chunk_tokens=8)
    return store, add_paths(store, settings, emb, paths, show_progress=False, **kw)


def test_one_file_is_one_document_however_it_is_named(tmp_path, qwen, monkeypatch):
    corpus = write(tmp_path / "corp")
    store, report = add(tmp_path / "ix", qwen, [corpus])
    assert ids(store) == ["corp/a.txt", "corp/b.txt", "corp/sub/c.md"] and report.added == 3
    monkeypatch.chdir(corpus / "sub")
    for paths in (["../a.txt"], [corpus / "a.txt"], [Path("..")], [corpus, corpus / "b.txt", "../a.txt"]):
        _, again = add(tmp_path / "ix", qwen, paths)
        assert (again.added, again.updated) == (0, 0), paths
    assert ids(store) == ["corp/a.txt", "corp/b.txt", "corp/sub/c.md"]
    # the first add fixes the root: a file first given alone names its folder's later files alike
    store2, _ = add(tmp_path / "ix2", qwen, [corpus / "a.txt"])
    add(tmp_path / "ix2", qwen, [corpus])
    assert ids(store2) == ["a.txt", "b.txt", "sub/c.md"]
    # files outside the root are named by their absolute paths, so two files never share an id
    other = write(tmp_path / "elsewhere" / "corp", {"a.txt": "another file of the same name ."})
    add(tmp_path / "ix2", qwen, [other / "a.txt"])
    assert ids(store2) == sorted([(other / "a.txt").as_posix(), "a.txt", "b.txt", "sub/c.md"])
    sources = dict(store.sources())
    assert sources["corp/a.txt"] == (corpus / "a.txt").as_posix()


def test_prune_removes_documents_of_deleted_files(tmp_path, qwen):
    corpus = write(tmp_path / "corp")
    (corpus / "recs.jsonl").write_text("".join(json.dumps({"_id": f"r{i}", "text": f"record {i} of the river"}) + "\n"
                                               for i in range(3)))
    elsewhere = write(tmp_path / "other", {"z.txt": "the tree is green ."})
    store, _ = add(tmp_path / "ix", qwen, [corpus, elsewhere])
    assert len(ids(store)) == 7
    (corpus / "sub" / "c.md").unlink()
    (corpus / "recs.jsonl").write_text(json.dumps({"_id": "r0", "text": "record 0 of the river"}) + "\n")
    (corpus / "a.txt").write_text("   ")  # emptied: its old text must not stay searchable
    _, kept = add(tmp_path / "ix", qwen, [corpus])
    assert kept.removed == 1 and "corp/a.txt" not in ids(store)
    assert {"corp/sub/c.md", "r1", "r2"} <= set(ids(store))  # without prune, deleted files stay
    _, pruned = add(tmp_path / "ix", qwen, [corpus], prune=True)
    assert pruned.removed == 3 and ids(store) == ["corp/b.txt", "other/z.txt", "r0"]
    searcher = Searcher(tmp_path / "ix", qwen)
    assert {h.doc_id for h in searcher.search("cat mat dog", k=50, mode="dense")} == {"corp/b.txt", "other/z.txt", "r0"}
    with pytest.raises(InputError, match="prune needs a folder"):
        add(tmp_path / "ix", qwen, [corpus / "b.txt"], prune=True)


def test_prune_finds_documents_stored_by_older_versions(tmp_path, qwen):
    """Before files roots, sources were the paths as given (relative): prune still finds those files."""
    corpus = write(tmp_path / "corp")
    store, _ = add(tmp_path / "ix", qwen, [corpus])
    store.db.execute("DELETE FROM meta WHERE key = 'files_root'")
    store.db.executemany("UPDATE documents SET source = ? WHERE doc_id = ?",
                         [(f"corp/{d[5:]}", d) for d in ids(store)])
    (corpus / "b.txt").unlink()
    _, pruned = add(tmp_path / "ix", qwen, [corpus], prune=True)
    assert pruned.removed == 1 and ids(store) == ["corp/a.txt", "corp/sub/c.md"]
    assert dict(store.sources())["corp/a.txt"] == (corpus / "a.txt").as_posix()  # sources updated in place


def test_a_new_index_is_created_by_its_first_stored_batch(tmp_path, qwen):
    blank = write(tmp_path / "blank", {"e.txt": " "})
    store, report = add(tmp_path / "ix", qwen, [blank])
    assert report.empty == 1 and not store.exists and not (tmp_path / "ix").exists()
    store, report = add(tmp_path / "ix", qwen, [write(tmp_path / "corp")])
    assert store.exists and store.counts()[0] == 3 and store.settings["chunk_tokens"] == 8


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    return {p.relative_to(folder).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_searchers_open_the_database_read_only(tmp_path, qwen):
    store, _ = add(tmp_path / "ix", qwen, [write(tmp_path / "corp")])
    store.close()
    db = tmp_path / "ix" / "index.sqlite"
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    searcher = Searcher(tmp_path / "ix", qwen)
    assert searcher.store.read_only
    assert searcher.search("queen book", k=1, mode="hybrid")[0].doc_id == "corp/b.txt"
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        searcher.store.db.execute("DELETE FROM chunks")
    searcher.close()
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    # the same store object still writes when asked to (index rm): it reopens read-write
    writer = IndexStore(tmp_path / "ix")
    writer.remove_documents(["corp/a.txt"])
    assert not writer.read_only and writer.counts()[0] == 2


def run_read_only(folder: Path, cmd: list[str]) -> subprocess.CompletedProcess:
    """Run ``cmd`` while ``folder`` cannot be written. Permission bits do not stop root, so as root the
    folder is bind-mounted read-only in a private mount namespace (skipped where that is not allowed)."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")]}
        for p in modes:
            p.chmod(0o555 if p.is_dir() else 0o444)
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        finally:
            for p, mode in modes.items():
                p.chmod(mode)
    if shutil.which("unshare") is None:
        pytest.skip("no unshare to make a read-only mount for root")
    mount = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && ! touch "$1/.probe" 2>/dev/null'
    probe = subprocess.run(["unshare", "-m", "sh", "-c", mount, "sh", str(folder)], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a read-only mount here: {probe.stderr.strip()[:200]}")
    script = mount + ' && shift && exec "$@"'
    return subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", str(folder), *cmd],
                          capture_output=True, text=True, timeout=300)


def test_search_and_info_on_a_folder_nobody_may_write(tmp_path, qwen, tiny_dir):
    corpus = write(tmp_path / "corp")
    store, _ = add(tmp_path / "ix", qwen, [corpus])
    searcher = Searcher(tmp_path / "ix", qwen)
    searcher.search("river", k=1, mode="hybrid")  # caches written for this generation
    searcher.close()
    (corpus / "d.txt").write_text("the violin and the piano play music in the hall .")
    again, _ = add(tmp_path / "ix", qwen, [corpus])  # ... and now stale: they must be rebuilt in memory
    again.close()
    store.close()
    before = snapshot(tmp_path / "ix")
    assert not (tmp_path / "ix" / "index.sqlite-wal").exists()  # as a copy of a closed index looks
    app = [sys.executable, "-m", "diffembed.cli.app"]
    for mode in ("dense", "hybrid", "bm25"):
        proc = run_read_only(tmp_path / "ix", [*app, "search", "violin piano music", "--index", str(tmp_path / "ix"),
                                               "--mode", mode, "-k", "1", "--json", "--model", str(tiny_dir("qwen3"))])
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert json.loads(proc.stdout)["hits"][0]["doc_id"] == "corp/d.txt", mode
    proc = run_read_only(tmp_path / "ix", [*app, "index", "info", "--index", str(tmp_path / "ix")])
    assert proc.returncode == 0 and json.loads(proc.stdout)["documents"] == 4, proc.stderr[-2000:]
    proc = run_read_only(tmp_path / "ix", [*app, "index", "rm", "corp/a.txt", "--index", str(tmp_path / "ix")])
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "cannot be written" in proc.stderr, proc.stderr
    assert snapshot(tmp_path / "ix") == before
