"""`diffembed data contextual`: pages -> documents of heading-less section chunks with "Title: Heading"
queries, from small fixture files written here (no apt package needed)."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pytest

from cli_helpers import assert_clean_error, run_cli
from diffembed.eval.datasets import ContextualDataset, load_dataset
from diffembed.training.data.contextual import Limits, build_contextual, split_chunks
from diffembed.training.data.pairs import digest, is_dev

SPAM = """.. _spam-module:

:mod:`spam` --- Canned meat
===========================

This module opens tins of canned meat and reports what each tin holds.

Opening tins
------------

A tin is opened with :func:`spam.open`, which returns a *Tin* object.

Closing tins
------------

Short.

Storing tins
------------

Tins are stored in a cool, dry cupboard away from direct sunlight.

A stored tin keeps for years, but a dented tin should be eaten first.
"""

LONELY = """Lonely page
===========

This page has only its lead section, so no query needs its context.
"""

FAQ = """General Python FAQ
==================

What is Python?
---------------

Python is an interpreted, interactive, object-oriented programming language.

Why is it called Python?
------------------------

It is named after a television comedy series, not after the snake.
"""

KERNEL = """==================
Frobnicator driver
==================

Overview
========

The frobnicator driver exposes each frob as a character device under /dev.

Module parameters
=================

The poll_ms parameter sets the polling interval in milliseconds for every frob.
"""

MAN = r""".TH FROB 3 2024-01-01 "fixture" "Library Functions"
.SH NAME
frob \- adjust the frobnication level of a device
.SH SYNOPSIS
.B int frob(int level);
.SH DESCRIPTION
.BR frob ()
sets how strongly the calling process frobnicates its device.
.SH RETURN VALUE
On success, zero is returned; on error, \-1 is returned and errno is set.
.SH ERRORS
.TP
.B EINVAL
The level is not a number from 0 to 10 inclusive.
"""

LIMITS = Limits(min_chunk_chars=40, max_chunk_chars=80)


def write_fixtures(root: Path) -> dict[str, Path]:
    py = root / "python3.11" / "html" / "_sources"
    (py / "library").mkdir(parents=True)
    (py / "faq").mkdir()
    (py / "library" / "spam.rst.txt").write_text(SPAM)
    (py / "library" / "lonely.rst.txt").write_text(LONELY)
    (py / "faq" / "general.rst.txt").write_text(FAQ)
    kernel = root / "linux-doc-6.1" / "Documentation"
    (kernel / "driver-api").mkdir(parents=True)
    with gzip.open(kernel / "driver-api" / "frob.rst.gz", "wt") as f:
        f.write(KERNEL)
    man = root / "man"
    (man / "man3").mkdir(parents=True)
    (man / "man3" / "frob.3").write_text(MAN)
    (man / "man3" / "frobctl.3").write_text(".so man3/frob.3\n")
    return {"python": py, "linux": kernel, "man": man}


@pytest.fixture
def fixtures(tmp_path) -> dict[str, Path]:
    return write_fixtures(tmp_path)


def build(fx: dict[str, Path], out: Path, **kwargs):
    kwargs.setdefault("limits", LIMITS)
    return build_contextual(out, python_doc=fx["python"], linux_doc=fx["linux"], man_dirs=[fx["man"]], **kwargs)


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def doc_id(key: str) -> str:
    return f"{key.split(':')[0]}-{digest(key).hex()}"


def test_exact_documents_headings_removed_and_queries_point_at_their_chunks(fixtures, tmp_path):
    result = build(fixtures, tmp_path / "out", dev_fraction=0.0)
    rows = {r["title"]: r for r in read_rows(tmp_path / "out" / "train.jsonl")}
    assert rows["spam --- Canned meat"] == {
        "id": doc_id("python-doc:library/spam.rst.txt"), "source": "python-doc", "title": "spam --- Canned meat",
        "chunks": ["This module opens tins of canned meat and reports what each tin holds.",
                   "A tin is opened with spam.open, which returns a Tin object.",
                   # 'Storing tins' is over 80 characters: two chunks, cut between its paragraphs
                   "Tins are stored in a cool, dry cupboard away from direct sunlight.",
                   "A stored tin keeps for years, but a dented tin should be eaten first."],
        "queries": [{"query": "spam --- Canned meat", "chunk": 0},
                    {"query": "spam --- Canned meat: Opening tins", "chunk": 1},
                    # its first chunk; both pieces are the section's
                    {"query": "spam --- Canned meat: Storing tins", "chunk": 2, "section_end": 4}],
    }
    assert rows["Frobnicator driver"]["chunks"] == [
        "The frobnicator driver exposes each frob as a character device under /dev.",
        "The poll_ms parameter sets the polling interval in milliseconds for every frob."]
    assert [q["query"] for q in rows["Frobnicator driver"]["queries"]] == [
        "Frobnicator driver: Overview", "Frobnicator driver: Module parameters"]
    # man: NAME and SYNOPSIS are no chunks; the queries name the page and the section
    assert rows["frob(3)"]["queries"] == [{"query": "frob(3): DESCRIPTION", "chunk": 0},
                                          {"query": "frob(3): RETURN VALUE", "chunk": 1},
                                          {"query": "frob(3): ERRORS", "chunk": 2}]
    assert rows["frob(3)"]["chunks"][2] == "EINVAL The level is not a number from 0 to 10 inclusive."
    assert set(rows) == {"spam --- Canned meat", "Frobnicator driver", "frob(3)"}
    for row in rows.values():  # no chunk holds its page title or a heading
        for q in row["queries"]:
            heading = q["query"].split(": ")[-1]
            assert all(heading not in chunk for chunk in row["chunks"]), (heading, row["chunks"])
    counts = result.to_dict()["sources"]
    assert counts["python-doc"] == {
        "pages": 2, "documents": 1, "train": 1, "dev": 0, "chunks": 4, "queries": 3, "split_sections": 1,
        "dropped": {"section_too_short": 1, "too_few_sections": 1}, "skipped": {"reserved_for_evaluation": 1}}
    assert counts["man"]["skipped"] == {"alias": 1}
    text = (tmp_path / "out" / "train.jsonl").read_text()
    assert "interpreted, interactive" not in text and "General Python FAQ" not in text  # faq/ never read


def test_split_chunks_packs_paragraphs_and_cuts_long_ones_at_sentences():
    assert split_chunks("one two.\nthree four.\nfive", 30) == ["one two.\nthree four.\nfive"]
    assert split_chunks("aaaa bbbb.\ncccc dddd.", 12) == ["aaaa bbbb.", "cccc dddd."]
    assert split_chunks("First sentence here. Second sentence here.", 25) == ["First sentence here.",
                                                                                 "Second sentence here."]


@pytest.mark.parametrize("option,sub,source,needle", [
    ("--python-doc", "python3.11/html/_sources/faq", "python-doc", "faq/ folder is reserved"),
    ("--python-doc", "docs/faq", "python-doc", "faq/ folder is reserved"),
    ("--linux-doc", "libreoffice/help", "linux-doc", "LibreOffice help is reserved"),
    ("--man-dir", "squad-man", "man", "SQuAD and KorQuAD are reserved"),
])
def test_cli_refuses_reserved_sources(tmp_path, monkeypatch, capsys, option, sub, source, needle):
    folder = tmp_path / sub
    folder.mkdir(parents=True)
    (folder / "a.rst").write_text(FAQ)
    code, _, err = run_cli(["data", "contextual", "--out", tmp_path / "out", "--source", source, option, folder],
                           monkeypatch, capsys)
    assert_clean_error(code, err, needle)
    assert not (tmp_path / "out").exists()


def test_deterministic_and_dev_split_by_document(fixtures, tmp_path):
    build(fixtures, tmp_path / "a", dev_fraction=0.2)
    build_contextual(tmp_path / "b", ["man", "linux-doc", "python-doc"], python_doc=fixtures["python"],
                     linux_doc=fixtures["linux"], man_dirs=[fixtures["man"]], dev_fraction=0.2, limits=LIMITS)
    for name in ("train.jsonl", "dev.jsonl", "dev-contextual/documents.jsonl", "dev-contextual/qrels/test.tsv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    train, dev = read_rows(tmp_path / "a" / "train.jsonl"), read_rows(tmp_path / "a" / "dev.jsonl")
    keys = {doc_id(k): k for k in ("python-doc:library/spam.rst.txt", "linux-doc:driver-api/frob.rst.gz",
                                   "man:frob.3")}
    assert sorted(r["id"] for r in train + dev) == sorted(keys)
    assert train and dev  # both sides used at 0.2 with these three pages
    assert all(is_dev(keys[r["id"]], 0.2) for r in dev) and not any(is_dev(keys[r["id"]], 0.2) for r in train)


def test_dev_folder_is_a_contextual_dataset_that_eval_scores(fixtures, tmp_path, monkeypatch, capsys, tiny_dir):
    out = tmp_path / "out"
    code, stdout, err = run_cli(["data", "contextual", "--out", out, "--python-doc", fixtures["python"],
                                 "--linux-doc", fixtures["linux"], "--man-dir", fixtures["man"],
                                 "--min-chunk-chars", 40, "--max-chunk-chars", 80, "--dev-fraction", 0.99,
                                 "--json"], monkeypatch, capsys)
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["train"] == 0 and summary["dev"] == 3 and "Wrote 0 train and 3 dev documents" in err
    assert json.loads((out / "build.json").read_text())["sources"] == summary["sources"]
    dev = read_rows(out / "dev.jsonl")
    ds = load_dataset(summary["dev_contextual"])
    assert isinstance(ds, ContextualDataset)
    assert ds.documents == {r["id"]: {"title": r["title"], "chunks": r["chunks"]} for r in dev}
    assert ds.queries == {f"{r['id']}-q{n}": q["query"] for r in dev for n, q in enumerate(r["queries"])}
    assert ds.qrels == {f"{r['id']}-q{n}": {f"{r['id']}_{q['chunk']}": 1} for r in dev
                        for n, q in enumerate(r["queries"])}

    # a second build may replace the first; a folder that is not a contextual build is refused
    code, _, err = run_cli(["data", "contextual", "--out", out, "--source", "man", "--man-dir", fixtures["man"],
                            "--min-chunk-chars", 40], monkeypatch, capsys)
    assert code == 0, err
    assert {r["source"] for r in read_rows(out / "train.jsonl") + read_rows(out / "dev.jsonl")} == {"man"}
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    code, _, err = run_cli(["data", "contextual", "--out", other, "--source", "man", "--man-dir", fixtures["man"]],
                           monkeypatch, capsys)
    assert_clean_error(code, err, "not a contextual build")
    assert (other / "keep.txt").read_text() == "mine"

    build(fixtures, tmp_path / "full", dev_fraction=0.99)
    report = tmp_path / "eval.json"
    monkeypatch.setattr(sys, "argv", ["diffembed", "eval", str(tmp_path / "full" / "dev-contextual"),
                                      "--model", str(tiny_dir("bert")), "--device", "cpu", "--mode", "both",
                                      "--json", str(report)])
    from diffembed.cli.app import main

    try:
        main()
    except SystemExit as exc:
        assert exc.code in (0, None)
    rows = json.loads(report.read_text())["rows"]
    assert sorted(r["mode"] for r in rows) == ["late", "naive"]
