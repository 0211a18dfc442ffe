"""`diffembed index add|rm|info` and `diffembed search` end to end, on the packaged real model and text."""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

import pytest
from cli_helpers import assert_clean_error, run_cli

SAMPLE = Path(str(files("diffembed") / "data" / "squad_sample.jsonl"))
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """An index of the packaged SQuAD articles plus a small folder of text/markdown/html files."""
    root = tmp_path_factory.mktemp("cli_index")
    docs = root / "notes"
    docs.mkdir()
    (docs / "rivers.md").write_text("# Rivers\n\nThe Danube flows through Vienna and Budapest into the Black Sea.")
    (docs / "page.html").write_text("<p>The Eiffel Tower stands in Paris.</p>")
    return root, docs, root / "ix"


def test_add_search_rm_info(built, monkeypatch, capsys):
    root, docs, ix = built
    code, out, err = run_cli(["index", "add", SAMPLE, docs, "--index", ix, "--json"], monkeypatch, capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["added"] == 8 and summary["index_documents"] == 8 and summary["chunks_written"] > 8

    code, out, err = run_cli(["index", "add", SAMPLE, docs, "--index", ix], monkeypatch, capsys)
    assert code == 0 and "8 unchanged" in err

    code, out, err = run_cli(["search", "Which river flows through Budapest?", "--index", ix, "-k", "3", "--json"], monkeypatch, capsys)
    assert code == 0, err
    hits = json.loads(out)["hits"]
    assert hits[0]["doc_id"] == "notes/rivers.md" and len(hits) == 3
    assert set(hits[0]) == {"doc_id", "chunk_index", "start", "end", "score", "text", "source"}

    code, out, err = run_cli(["search", "Eiffel Tower", "--index", ix, "--mode", "hybrid", "-k", "2"], monkeypatch, capsys)
    assert code == 0 and "notes/page.html" in out and "score" in out

    code, out, err = run_cli(["index", "rm", "notes/page.html", "--index", ix], monkeypatch, capsys)
    assert code == 0 and "7 documents" in err
    code, out, err = run_cli(["search", "Eiffel Tower", "--index", ix, "-k", "50", "--json"], monkeypatch, capsys)
    assert all(h["doc_id"] != "notes/page.html" for h in json.loads(out)["hits"])

    code, out, err = run_cli(["index", "info", "--index", ix], monkeypatch, capsys)
    info = json.loads(out)
    assert info["documents"] == 7 and info["settings"]["mode"] == "naive"
    assert info["bytes_per_vector"] == {"first_pass_bits_in_memory": 48, "int8_on_disk": 384, "float32_equivalent": 1536}


def test_user_errors_are_one_line_exit_2(built, tmp_path, monkeypatch, capsys):
    root, docs, ix = built
    cases = [
        (["index", "add", tmp_path / "missing", "--index", tmp_path / "new"], "no such file"),
        (["search", "x", "--index", tmp_path / "nowhere"], "not a diffembed index"),
        (["index", "rm", "no-such-doc", "--index", ix], "not in the index"),
        (["search", "x", "--index", ix, "--mode", "fuzzy"], "unknown search mode"),
        (["search", "x", "--index", ix, "-k", "0"], "k must be"),
        (["index", "add", docs, "--index", ix, "--mode", "late"], "mode=naive"),
    ]
    for args, needle in cases:
        code, out, err = run_cli(args, monkeypatch, capsys)
        assert_clean_error(code, err, needle)
    assert not (tmp_path / "new").exists()  # a bad path fails before anything is created
