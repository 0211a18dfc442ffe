"""Adding, updating, removing and searching with tiny random models (fast) and the packaged MiniLM."""

import json
from pathlib import Path

import numpy as np
import pytest

from diffembed import Embedder
from diffembed.errors import InputError, ModelMismatchError
from diffembed.index import Searcher, add_paths, open_for_adding
from diffembed.index.search import reciprocal_rank_fusion
from diffembed.index.store import IndexStore

TEXTS = {
    "a.txt": "the city has a river . the river is old . it was a capital . many people sat in the house .",
    "b.txt": "the king and the queen had a book . the book has a story of war and peace .",
    "c.md": "red green blue . the cat sat on the mat . the dog sat in the tree .",
}


@pytest.fixture(scope="module")
def qwen(tiny_dir):
    return Embedder(str(tiny_dir("qwen3")), show_progress=False)


def write_corpus(folder: Path, texts=TEXTS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        (folder / name).write_text(text)
    return folder


def build(tmp_path, embedder, model, **kw):
    corpus = write_corpus(tmp_path / "corpus")
    store, settings, emb = open_for_adding(tmp_path / "ix", model=model, embedder=embedder, chunk_tokens=kw.pop("chunk_tokens", 8), **kw)
    report = add_paths(store, settings, emb, [corpus], show_progress=False)
    return corpus, store, settings, report


def test_add_is_idempotent_and_updates_replace(tmp_path, qwen, tiny_dir):
    corpus, store, settings, report = build(tmp_path, qwen, str(tiny_dir("qwen3")))
    assert (report.added, report.unchanged) == (3, 0) and report.chunks == store.counts()[1] > 3
    gen = store.generation
    again = add_paths(store, settings, qwen, [corpus], show_progress=False)
    assert (again.added, again.updated, again.unchanged, again.chunks) == (0, 0, 3, 0)
    assert store.generation == gen  # nothing written, caches stay valid
    (corpus / "a.txt").write_text("one two three .")
    changed = add_paths(store, settings, qwen, [corpus], show_progress=False)
    assert (changed.updated, changed.unchanged) == (1, 2)
    rows = store.db.execute("SELECT chunk_index, text FROM chunks WHERE doc_id = 'corpus/a.txt' ORDER BY chunk_index").fetchall()
    assert rows == [(0, "one two three .")]
    dupes = store.db.execute("SELECT doc_id, chunk_index, COUNT(*) FROM chunks GROUP BY 1, 2 HAVING COUNT(*) > 1").fetchall()
    assert dupes == []


def test_stored_vectors_are_the_late_chunked_embeddings(tmp_path, qwen, tiny_dir):
    corpus, store, settings, _ = build(tmp_path, qwen, str(tiny_dir("qwen3")), mode="late")
    text = TEXTS["b.txt"]
    expected = qwen.encode_documents([text], chunk_tokens=8, precision="int8")[0]
    bits = qwen.encode_documents([text], chunk_tokens=8, precision="ubinary")[0]
    rows = store.db.execute("SELECT start, end, int8, bits FROM chunks WHERE doc_id = 'corpus/b.txt' ORDER BY chunk_index").fetchall()
    assert [(a, b) for a, b, _, _ in rows] == expected.spans
    assert np.array_equal(np.stack([np.frombuffer(r[2], np.int8) for r in rows]), expected.embeddings)
    assert np.array_equal(np.stack([np.frombuffer(r[3], np.uint8) for r in rows]), bits.embeddings)


def test_naive_mode_is_the_default_and_stores_independent_chunk_embeddings(tmp_path, qwen, tiny_dir):
    corpus, store, settings, _ = build(tmp_path, qwen, str(tiny_dir("qwen3")))
    assert settings.mode == "naive" and store.settings["mode"] == "naive"
    rows = store.db.execute("SELECT text, int8 FROM chunks WHERE doc_id = 'corpus/b.txt' ORDER BY chunk_index").fetchall()
    expected = qwen.encode([t for t, _ in rows], precision="int8")
    assert np.array_equal(np.stack([np.frombuffer(r[1], np.int8) for r in rows]), expected)


def test_settings_conflicts_and_model_mismatch(tmp_path, qwen, tiny_dir):
    corpus, store, settings, _ = build(tmp_path, qwen, str(tiny_dir("qwen3")), mode="late")
    store.close()
    with pytest.raises(InputError, match="mode=late.*mode=naive"):
        open_for_adding(tmp_path / "ix", embedder=qwen, mode="naive")
    with pytest.raises(InputError, match="chunk_tokens=8"):
        open_for_adding(tmp_path / "ix", embedder=qwen, chunk_tokens=16)
    other = Embedder(str(tiny_dir("bert")), show_progress=False)  # same width (32), different model
    with pytest.raises(ModelMismatchError, match="probe cosine"):
        open_for_adding(tmp_path / "ix", embedder=other)
    with pytest.raises(ModelMismatchError, match="probe cosine"):
        Searcher(tmp_path / "ix", other)
    minilm = Embedder(show_progress=False)
    with pytest.raises(ModelMismatchError, match="384-dimensional"):
        Searcher(tmp_path / "ix", minilm)
    # with no model given, the searcher loads the one recorded in the index
    assert Searcher(tmp_path / "ix").embedder.loaded.spec.path == qwen.loaded.spec.path


def test_search_modes_remove_and_cache_rebuild(tmp_path, qwen, tiny_dir):
    corpus, store, settings, _ = build(tmp_path, qwen, str(tiny_dir("qwen3")))
    searcher = Searcher(tmp_path / "ix", qwen)
    n_chunks = store.counts()[1]
    hits = searcher.search("the book has a story", k=n_chunks, mode="dense")
    assert len(hits) == n_chunks and hits == sorted(hits, key=lambda h: -h.score)
    bm25 = searcher.search("queen book", k=3, mode="bm25")
    assert bm25 and all(h.doc_id == "corpus/b.txt" for h in bm25)
    assert searcher.search("zzzz", k=3, mode="bm25") == []
    hybrid = searcher.search("queen book", k=5, mode="hybrid")
    assert hybrid[0].doc_id == "corpus/b.txt"
    cache = json.loads((tmp_path / "ix" / "bits.json").read_text())
    assert cache["generation"] == store.generation and cache["rows"] == n_chunks
    # another process removes a document: the next search sees it (generation moved on)
    IndexStore(tmp_path / "ix").remove_documents(["corpus/b.txt"])
    assert all(h.doc_id != "corpus/b.txt" for h in searcher.search("the book", k=50, mode="dense"))
    assert searcher.search("queen book", k=3, mode="bm25") == []
    # a corrupt cache is ignored and rebuilt
    (tmp_path / "ix" / "bits.npy").write_bytes(b"garbage")
    fresh = Searcher(tmp_path / "ix", qwen)
    assert len(fresh.search("the river", k=50)) == store.counts()[1]


def test_search_input_errors(tmp_path, qwen, tiny_dir):
    build(tmp_path, qwen, str(tiny_dir("qwen3")))
    searcher = Searcher(tmp_path / "ix", qwen)
    for kwargs, message in (({"query": " "}, "empty"), ({"query": "x", "k": 0}, "k must be"),
                            ({"query": "x", "mode": "fuzzy"}, "unknown search mode")):
        with pytest.raises(InputError, match=message):
            searcher.search(**kwargs)


def test_reciprocal_rank_fusion():
    fused = reciprocal_rank_fusion([[(1, 9.0), (2, 8.0), (3, 1.0)], [(3, 5.0), (1, 4.0)]], k=3, rrf_k=60)
    assert [r for r, _ in fused] == [1, 3, 2]
    assert fused[0][1] == pytest.approx(1 / 61 + 1 / 62)


@pytest.mark.integration
def test_own_sentence_ranks_its_passage_first(tmp_path, minilm):
    """Search quality smoke on real text (the packaged SQuAD articles): a passage's own sentence finds it."""
    from importlib.resources import files

    sample = Path(str(files("diffembed") / "data" / "squad_sample.jsonl"))
    store, settings, emb = open_for_adding(tmp_path / "ix", embedder=minilm)
    add_paths(store, settings, emb, [sample], show_progress=False)
    searcher = Searcher(tmp_path / "ix", minilm)
    rows = store.db.execute("SELECT doc_id, chunk_index, text FROM chunks ORDER BY id").fetchall()
    probes = [(d, c, max(t.split(". "), key=len)) for d, c, t in rows[:: max(1, len(rows) // 40)]]
    top1 = [searcher.search(sentence, k=1)[0] for _, _, sentence in probes]
    chunk_hits = sum((h.doc_id, h.chunk_index) == (d, c) for h, (d, c, _) in zip(top1, probes))
    assert all(h.doc_id == d for h, (d, _, _) in zip(top1, probes))
    assert chunk_hits >= 0.9 * len(probes), f"{chunk_hits}/{len(probes)} sentences found their own chunk first"
