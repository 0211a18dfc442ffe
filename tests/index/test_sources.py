import json

import pytest

from diffembed.errors import DataFileError
from diffembed.index.sources import collect_files, read_documents


def test_folder_ids_do_not_depend_on_cwd(tmp_path, monkeypatch):
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / "a.md").write_text("alpha")
    (root / "sub" / "b.rst").write_text("beta")
    (root / "image.png").write_bytes(b"\x89PNG")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "c.txt").write_text("hidden")
    single = tmp_path / "one.txt"
    single.write_text("one")
    monkeypatch.chdir(tmp_path)
    files = collect_files([root, single])
    assert [f.id_base for f in files] == ["docs/a.md", "docs/sub/b.rst", "one.txt"]
    monkeypatch.chdir(root / "sub")
    assert [f.id_base for f in collect_files([root, single])] == ["docs/a.md", "docs/sub/b.rst", "one.txt"]


def test_bad_paths_are_named(tmp_path):
    with pytest.raises(DataFileError, match="no such file"):
        collect_files([tmp_path / "missing"])
    bad = tmp_path / "x.pdf"
    bad.write_bytes(b"%PDF")
    with pytest.raises(DataFileError, match="unsupported file type"):
        collect_files([bad])
    with pytest.raises(DataFileError, match="at least one"):
        collect_files([])


def test_jsonl_records_and_errors(tmp_path):
    good = tmp_path / "c.jsonl"
    good.write_text("\n".join([
        json.dumps({"_id": "d1", "title": "Title", "text": "body one"}),
        "",
        json.dumps({"_id": 7, "text": "Title two starts the text"}),
    ]))
    docs = list(read_documents(collect_files([good])))
    assert [(d.doc_id, d.text) for d in docs] == [("d1", "Title\n\nbody one"), ("7", "Title two starts the text")]
    assert docs[0].source.endswith("c.jsonl:1")
    for line, message in ((b"{not json", "c2.jsonl:1: malformed JSON"), (json.dumps({"text": "x"}).encode(), "no '_id'"),
                          (json.dumps({"_id": "a", "text": 3}).encode(), "c2.jsonl:1: 'text' is int, not a string"),
                          (json.dumps({"_id": "a", "body": "x"}).encode(), "c2.jsonl:1: record has no 'text'")):
        bad = tmp_path / "c2.jsonl"
        bad.write_bytes(line)
        with pytest.raises(DataFileError, match=message):
            list(read_documents(collect_files([bad])))


def test_undecodable_file_is_skipped_and_reported(tmp_path):
    (tmp_path / "ok.txt").write_text("fine")
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\x00bad")
    skipped = []
    docs = list(read_documents(collect_files([tmp_path]), skipped))
    assert [d.text for d in docs] == ["fine"]
    assert len(skipped) == 1 and "bad.txt" in skipped[0]
