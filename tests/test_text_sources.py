"""The shared text sources: which files, what kind, what text, which id."""

from __future__ import annotations

import gzip

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from diffembed import sources
from diffembed.errors import DataFileError
from diffembed.sources import (CORPUS_FILES, INDEX_FILES, RECORD_FILES, file_texts, folder_files, html_to_text,
                               list_files, parquet_rows, record_format, record_id, text_lines)


def test_kinds_by_ending():
    assert [INDEX_FILES.kind(n) for n in ("a.TXT", "b.markdown", "c.htm", "d.jsonl", "e.txt.gz", "f.parquet")] == \
        ["text", "text", "html", "jsonl", None, None]
    assert [CORPUS_FILES.kind(n) for n in ("e.txt.gz", "f.parquet", "g.HTML.GZ", "h.jsonl.gz", "i.gz", "j.pdf")] == \
        ["text", "parquet", "html", "jsonl", None, None]
    assert [RECORD_FILES.kind(n) for n in ("a.ndjson", "b.pq", "c.text", "d.md")] == ["jsonl", "parquet", "txt", None]


def test_list_files_hides_dot_names_in_folders_and_lists_each_file_once(tmp_path):
    root = tmp_path / "corpus"
    (root / ".git").mkdir(parents=True)
    (root / "sub").mkdir()
    for name in ("b.txt", "sub/a.md", ".hidden.txt", ".git/x.txt", "_notes.txt", "skip.pdf"):
        (root / name).write_text("x")
    (tmp_path / "link").symlink_to(root, target_is_directory=True)
    files = list_files([root / "b.txt", tmp_path / "link", root, root / ".hidden.txt"], INDEX_FILES)
    assert files == [root / "b.txt", tmp_path / "link" / "_notes.txt", tmp_path / "link" / "sub" / "a.md",
                     root / ".hidden.txt"]  # a hidden file named directly is read
    assert folder_files(root, INDEX_FILES, hidden=(".", "_")) == [root / "b.txt", root / "sub" / "a.md"]
    assert folder_files(root, None) == [root / "_notes.txt", root / "b.txt", root / "skip.pdf", root / "sub" / "a.md"]
    with pytest.raises(DataFileError, match=r"skip\.pdf: unsupported file type \(use \.txt, \.md, .*\.jsonl\)"):
        list_files([root / "skip.pdf"], INDEX_FILES)
    with pytest.raises(DataFileError, match=r"missing: no such file or folder"):
        list_files([root, tmp_path / "missing"], INDEX_FILES)
    with pytest.raises(DataFileError, match="at least one file or folder"):
        list_files([], INDEX_FILES)


def test_record_format(tmp_path):
    assert [record_format(n) for n in ("a.JSONL", "b.pq", "c.text", "README", "s3://bucket/x.parquet")] == \
        ["jsonl", "parquet", "txt", "txt", "parquet"]
    assert record_format("a.csv", "txt") == "txt"
    with pytest.raises(DataFileError, match=r"cannot tell the format of s3://b/a\.csv from its extension"):
        record_format("s3://b/a.csv")
    with pytest.raises(DataFileError, match="unknown input format 'csv'; choose one of auto, txt, jsonl, parquet"):
        record_format("a.txt", "csv")


def test_record_id_takes_the_first_non_null_id_field():
    assert record_id({"_id": 0, "id": "b"}) == 0  # 0 is an id, not a missing one
    assert record_id({"_id": None, "id": "b"}) == "b"
    assert record_id({"text": "x"}) is None


def test_file_texts_of_every_document_kind(tmp_path):
    (tmp_path / "a.txt").write_bytes("\ufeffplain".encode())  # the byte-order mark is not text
    (tmp_path / "b.html.gz").write_bytes(gzip.compress(b"<p>visible</p><script>var x;</script>"))
    (tmp_path / "c.jsonl.gz").write_bytes(gzip.compress(b'{"body": "one"}\n\n{"body": "two"}\n'))
    pq.write_table(pa.table({"body": ["p0", None, "p2"]}), tmp_path / "d.parquet", row_group_size=1)
    (tmp_path / "e.txt").write_bytes(b"caf\xe9")
    skipped: list[str] = []
    got = [list(file_texts(tmp_path / n, "body", skipped)) for n in ("a.txt", "b.html.gz", "c.jsonl.gz", "d.parquet",
                                                                     "e.txt")]
    assert got == [[(None, "plain")], [(None, "visible")], [(0, "one"), (1, "two")], [(0, "p0"), (1, ""), (2, "p2")],
                   []]
    assert skipped == [f"{tmp_path / 'e.txt'} (not UTF-8)"]


@pytest.mark.parametrize("name,data,message", [
    ("p.jsonl", b'{"text": "ok"}\n\n{"title": "no text"}\n', r"p\.jsonl:3: record has no 'text'"),
    ("z.jsonl.gz", gzip.compress(b'{"text": "ok"}\n{"title": "x"}\n'), r"z\.jsonl\.gz:2: record has no 'text'"),
    ("t.jsonl.gz", gzip.compress(b'{"text": 5}'), r"t\.jsonl\.gz:1: 'text' is int, not a string"),
    ("b.jsonl.gz", gzip.compress(b"{oops\n"), r"b\.jsonl\.gz:1: malformed JSON"),
    ("cut.txt.gz", gzip.compress(b"some text")[:-6], r"cannot read .*cut\.txt\.gz"),
    ("x.parquet", b"not parquet", r"cannot read .*x\.parquet as parquet"),
])
def test_broken_document_files_name_file_and_line(tmp_path, name, data, message):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(DataFileError, match=message):
        list(file_texts(tmp_path / name))


def test_parquet_column_errors_and_row_numbers(tmp_path, monkeypatch):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"body": ["x", "y", "z"], "n": [1, 2, 3]}), path)
    with pytest.raises(DataFileError, match=r"a\.parquet: no column 'text' \(columns: body, n\)"):
        list(file_texts(path))
    with pytest.raises(DataFileError, match=r"a\.parquet: column 'n' is int64, not a string"):
        list(file_texts(path, "n"))
    monkeypatch.setattr(sources, "PARQUET_BATCH_ROWS", 2)  # rows numbered across batches
    assert list(parquet_rows(path, ["n"])) == [(1, {"n": 1}), (2, {"n": 2}), (3, {"n": 3})]


def test_text_lines_split_on_newline_only():
    data = "alpha\u2028beta\r\ngamma\x0cdelta\r\nlast".encode()
    assert text_lines(data, "f.txt") == ["alpha\u2028beta", "gamma\x0cdelta", "last"]
    assert text_lines(b"one\n", "f.txt") == ["one"] and text_lines(b"", "f.txt") == []
    with pytest.raises(DataFileError, match=r"f\.txt:2: empty line; a txt input holds one non-empty text per line"):
        text_lines(b"one\n \ntwo\n", "f.txt")
    with pytest.raises(DataFileError, match=r"f\.txt is not valid UTF-8 text \(invalid start byte at byte 3\)"):
        text_lines(b"caf\xff", "f.txt")


def test_html_to_text_keeps_visible_text_only():
    page = ("<html><head><title>T</title><style>p{color:red}</style></head><body>"
            "<h1>Head &amp; more</h1><p>First  <b>para</b>\ngraph.</p><script>var x = 1;</script><p>Second</p></body></html>")
    assert html_to_text(page) == "T\n\nHead & more\n\nFirst para graph.\n\nSecond"
    assert html_to_text("<p>a\nb</p><pre>x = 1\ny = 2</pre>") == "a b\n\nx = 1\ny = 2"  # <pre> keeps its lines

