"""`diffembed data pairs`: sources parsed from small fixture files written here (no apt package needed),
then the shared rules: limits, dedup, dev split, reserved sources refused, atomic output."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from cli_helpers import assert_clean_error, run_cli
from diffembed.errors import DataFileError, InputError
from diffembed.eval.datasets import load_dataset
from diffembed.training.data import build_pairs
from diffembed.training.data.apt_descriptions import long_description, stanzas
from diffembed.training.data.man_pages import man_sections, name_description
from diffembed.training.data.pairs import Limits, RawPair, SourceCounts, is_dev, normalized, select_pairs, truncate
from diffembed.training.data.reserved import reserved_reason
from diffembed.training.data.rst_sections import parse_page, rst_text
from diffembed.training.data.textio import read_text

LONG = ("It reads the configuration once at start-up and keeps every setting in memory, so later "
        "changes need a restart.")

TRANSLATION_MAIN = f"""Package: alpha-tool
Description-md5: 11111111111111111111111111111111
Description-en: command-line tool that counts words in files
 Alpha counts the words, lines and bytes of each file given on its command
 line and prints a total at the end.
 .
 Output formats:
   plain   one line per file
   json    one object per file
 .
 {LONG}

Package: beta-data
Description-md5: 22222222222222222222222222222222
Description-en: transitional package
 This is a transitional package that pulls in the renamed gamma package. It
 can safely be removed once gamma is installed on the system.

Package: delta-data
Description-md5: 33333333333333333333333333333333
Description-en: transitional package
 This empty package depends on the renamed epsilon package and exists only to
 ease upgrades; it can be removed after the upgrade has finished.

Package: tiny
Description-md5: 44444444444444444444444444444444
Description-en: a package whose long description is short
 Too short.

Package: onlysynopsis
Description-md5: 55555555555555555555555555555555
Description-en: a package with no long description at all

Package: zeta-utils
Description-md5: 66666666666666666666666666666666
Description-en: utilities to convert zeta archives to tar files
 Zeta-utils converts zeta archives, an old format used by some backup tools,
 into ordinary tar files that any archiver can open.
"""

# the security archive repeats one description: an exact duplicate
TRANSLATION_SECURITY = """Package: zeta-utils
Description-md5: 66666666666666666666666666666666
Description-en: utilities to convert zeta archives to tar files
 Zeta-utils converts zeta archives, an old format used by some backup tools,
 into ordinary tar files that any archiver can open.
"""

PY_PAGE = """.. _spam-module:

:mod:`spam` --- Canned meat utilities
=====================================

.. module:: spam
   :synopsis: Canned meat utilities.

**Source code:** :source:`Lib/spam.py`

This module opens tins of canned meat with :func:`spam.open` and reports
their ``contents``.  See `the spam site <https://spam.example>`_ for more.

Opening tins
------------

A tin is opened with :func:`~spam.tins.open`, which returns a *Tin* object.
For example::

    >>> import spam
    >>> spam.open("tin")

.. versionadded:: 3.2

.. note::

   Opening a tin that is already open raises :exc:`TinError` [#]_.

.. code-block:: python

   never = "in the output"

Tiny
----

Short.

.. [#] A footnote that is dropped.
"""

FAQ_PAGE = """General Python FAQ
==================

What is Python?
---------------

Python is an interpreted, interactive, object-oriented programming language held out for evaluation.
"""

KERNEL_PAGE = """.. SPDX-License-Identifier: GPL-2.0

==================
Frobnicator driver
==================

Overview
========

The frobnicator driver exposes each frob as a character device under /dev and
lets user space tune how often the frob is polled through sysfs.

Module parameters
=================

``poll_ms``
    Polling interval in milliseconds; the default of 100 suits most frobs that
    are attached over the slow bus.
"""

MAN_PAGE = r""".\" Copyright fixture
.TH FROB 1 2024-01-01 "fixture" "User Commands"
.SH NAME
frob, frobctl \- adjust the frobnication level of a device
.SH SYNOPSIS
.B frob
.RI [ options ] " device"
.SH DESCRIPTION
.B frob
sets how strongly a device is frobnicated.
With no options it prints the current level of
.IR device " \(em a number from 0 to 10."
.PP
.TP
.BR \-l ", " \-\-level " \fIN\fP"
Set the level to \fIN\fR.
.EX
frob \-l 3 /dev/frob0
.EE
.SH SEE ALSO
.BR frobd (8)
"""


def write_fixtures(root: Path) -> dict[str, Path]:
    lists = root / "lists"
    lists.mkdir()
    (lists / "deb.example_debian_dists_main_i18n_Translation-en").write_text(TRANSLATION_MAIN)
    with gzip.open(lists / "deb.example_debian-security_dists_main_i18n_Translation-en.gz", "wt") as f:
        f.write(TRANSLATION_SECURITY)
    (lists / "deb.example_debian_dists_main_binary-amd64_Packages").write_text("Package: x\nDescription: y\n")

    py = root / "python3.11" / "html" / "_sources"
    (py / "library").mkdir(parents=True)
    (py / "faq").mkdir()
    (py / "library" / "spam.rst.txt").write_text(PY_PAGE)
    (py / "faq" / "general.rst.txt").write_text(FAQ_PAGE)

    kernel = root / "linux-doc-6.1" / "Documentation" / "driver-api"
    kernel.mkdir(parents=True)
    with gzip.open(kernel / "frob.rst.gz", "wt") as f:
        f.write(KERNEL_PAGE)

    man = root / "man"
    (man / "man1").mkdir(parents=True)
    (man / "man3").mkdir()
    with gzip.open(man / "man1" / "frob.1.gz", "wt") as f:
        f.write(MAN_PAGE)
    (man / "man1" / "frobctl.1").write_text(".so man1/frob.1\n")
    return {"lists": lists, "python": py, "linux": root / "linux-doc-6.1" / "Documentation", "man": man}


@pytest.fixture
def fixtures(tmp_path) -> dict[str, Path]:
    return write_fixtures(tmp_path)


def source_args(fx: dict[str, Path]) -> list[str]:
    return ["--apt-lists", fx["lists"], "--python-doc", fx["python"], "--linux-doc", fx["linux"],
            "--man-dir", fx["man"]]


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ---------------------------------------------------------------------------------------------- parsers
def test_apt_long_description_follows_debian_policy():
    stanza = next(stanzas(TRANSLATION_MAIN))
    synopsis, *rest = stanza["Description-en"].split("\n")
    assert synopsis == "command-line tool that counts words in files"
    assert long_description(rest) == [
        "Alpha counts the words, lines and bytes of each file given on its command line and prints a total at the end.",
        "Output formats:", "plain   one line per file", "json    one object per file", LONG]


def test_rst_sections_titles_and_markup():
    page = parse_page(PY_PAGE)
    assert page.title == "spam --- Canned meat utilities"
    assert [(s.title, s.level) for s in page.sections] == [
        ("spam --- Canned meat utilities", 1), ("Opening tins", 2), ("Tiny", 2)]
    assert page.sections[0].body == (
        "Source code: Lib/spam.py\nThis module opens tins of canned meat with spam.open and reports their "
        "contents.  See the spam site for more.")
    assert page.sections[1].body == (
        "A tin is opened with open, which returns a Tin object. For example:\nNew in version 3.2.\n"
        "Opening a tin that is already open raises TinError.")
    assert page.sections[2].body == "Short."  # the footnote definition is dropped


def test_rst_overlined_titles_and_definition_lists():
    page = parse_page(KERNEL_PAGE)
    assert [(s.title, s.level) for s in page.sections] == [
        ("Frobnicator driver", 1), ("Overview", 2), ("Module parameters", 2)]
    assert page.sections[0].body == ""  # the SPDX comment is not text
    assert page.sections[2].body == ("poll_ms Polling interval in milliseconds; the default of 100 suits "
                                     "most frobs that are attached over the slow bus.")
    assert rst_text(["+-----+-----+", "| a   | b   |", "+=====+=====+"]) == "a    b"  # cell borders gone


def test_man_page_name_and_description():
    sections, kind = man_sections(MAN_PAGE)
    assert kind == "man"
    assert name_description(sections["NAME"]) == ("frob, frobctl", "adjust the frobnication level of a device")
    text = " ".join(line for line in sections["DESCRIPTION"] if line.strip())
    assert text == ("frob sets how strongly a device is frobnicated. With no options it prints the current "
                    "level of device \u2014 a number from 0 to 10. -l, --level N Set the level to N.")
    assert man_sections(".so man1/frob.1\n")[1] == "alias"
    assert man_sections(".Dd January 1, 2024\n.Sh NAME\n.Nm x\n")[1] == "mdoc"


def test_truncate_cuts_at_a_sentence_end():
    text = "First sentence here. Second sentence is longer than the rest. Third."
    assert truncate(text, 30, 5) == "First sentence here."
    assert truncate(text, 200, 5) == text
    assert truncate("one two three four", 9, 1) == "one two"


def test_compressed_lists_are_read(tmp_path):
    plain = tmp_path / "x_i18n_Translation-en"
    plain.write_text(TRANSLATION_SECURITY)
    for tool, suffix in (("lz4", ".lz4"), ("xz", ".xz")):
        if shutil.which(tool) is None:
            continue
        subprocess.run([tool, "-k", "-q", str(plain)] + (["-f"] if tool == "xz" else [str(plain) + suffix]),
                       check=True)
        assert read_text(Path(str(plain) + suffix)) == TRANSLATION_SECURITY
    with pytest.raises(DataFileError, match="cannot read"):
        bad = tmp_path / "y.gz"
        bad.write_bytes(b"not gzip")
        read_text(bad)


# ---------------------------------------------------------------------------------------------- reserved
@pytest.mark.parametrize("path", [
    "/usr/share/doc/python3.11/html/_sources/faq/general.rst.txt",
    "/usr/share/doc/python3.11-doc/html/_sources/faq",
    "/usr/lib/libreoffice/help/en-US/text/swriter/main0000.xhp",
    "/usr/share/doc/libreoffice-help-ko/x.html",
    "/work/shared/data/squad-v1.1-dev.json.gz",
    "/data/korquad-v1.0-dev.json.gz",
])
def test_reserved_paths(path):
    assert reserved_reason(path) is not None


@pytest.mark.parametrize("path", ["/usr/share/doc/python3.11/html/_sources/library/os.rst.txt",
                                  "/usr/share/doc/linux-doc-6.1/Documentation/faq/x.rst"])
def test_unreserved_paths(path):
    assert reserved_reason(path) is None  # a faq folder outside the Python docs is ordinary text


def test_python_doc_root_marks_its_faq_folder_wherever_it_lives(tmp_path):
    assert reserved_reason(tmp_path / "docs" / "faq" / "a.rst", python_doc_root=tmp_path / "docs")
    assert reserved_reason(tmp_path / "docs" / "library" / "a.rst", python_doc_root=tmp_path / "docs") is None


@pytest.mark.parametrize("option,sub,needle", [
    ("--python-doc", "python3.11/html/_sources/faq", "faq/ folder is reserved"),
    ("--linux-doc", "libreoffice/help", "LibreOffice help is reserved"),
    ("--man-dir", "libreoffice-help-en", "LibreOffice help is reserved"),
    ("--apt-lists", "squad", "SQuAD and KorQuAD are reserved"),
])
def test_cli_refuses_reserved_sources(tmp_path, monkeypatch, capsys, option, sub, needle):
    folder = tmp_path / sub
    folder.mkdir(parents=True)
    (folder / "a.rst").write_text(FAQ_PAGE)
    source = {"--python-doc": "python-doc", "--linux-doc": "linux-doc", "--man-dir": "man",
              "--apt-lists": "apt"}[option]
    code, _, err = run_cli(["data", "pairs", "--out", tmp_path / "out", "--source", source, option, folder],
                           monkeypatch, capsys)
    assert_clean_error(code, err, needle)
    assert not (tmp_path / "out").exists()


def test_python_doc_faq_is_skipped_and_counted(fixtures, tmp_path):
    result = build_pairs(tmp_path / "out", ["python-doc"], python_doc=fixtures["python"], dev_fraction=0.0,
                         limits=Limits(min_positive_chars=20))
    assert result.sources["python-doc"].skipped["reserved_for_evaluation"] == 1
    text = (tmp_path / "out" / "train.jsonl").read_text()
    assert "interpreted, interactive" not in text and "General Python FAQ" not in text
    assert "Opening tins" in text


# ---------------------------------------------------------------------------------------------- build
def test_cli_build_counts_dedup_and_outputs(fixtures, tmp_path, monkeypatch, capsys):
    out = tmp_path / "pairs"
    code, stdout, err = run_cli(["data", "pairs", "--out", out, *source_args(fixtures), "--min-positive-chars", 40,
                                 "--dev-fraction", 0, "--json"], monkeypatch, capsys)
    assert code == 0, err
    summary = json.loads(stdout)
    apt = summary["sources"]["apt"]
    # 6 stanzas with long descriptions (main 5 + security 1); 'onlysynopsis' has none
    assert apt["candidates"] == 6 and apt["skipped"] == {"no_long_description": 1}
    assert apt["dropped"] == {"positive_too_short": 1, "duplicate_exact": 1, "ambiguous_query": 2}
    assert apt["kept"] == apt["train"] == 2
    assert summary["sources"]["man"]["skipped"] == {"alias": 1}
    rows = read_rows(out / "train.jsonl")
    by_query = {r["query"]: r for r in rows}
    assert set(by_query) == {
        "command-line tool that counts words in files", "utilities to convert zeta archives to tar files",
        "spam --- Canned meat utilities", "spam --- Canned meat utilities: Opening tins",
        "Frobnicator driver: Overview", "Frobnicator driver: Module parameters",
        "adjust the frobnication level of a device"}
    assert by_query["command-line tool that counts words in files"]["positive"].startswith("Alpha counts the words")
    assert by_query["adjust the frobnication level of a device"]["source"] == "man"
    assert by_query["adjust the frobnication level of a device"]["origin"] == "man:man1/frob.1"
    assert len({r["id"] for r in rows}) == len(rows)
    assert all(set(r) == {"id", "source", "query", "positive", "origin"} for r in rows)
    assert "never" not in (out / "train.jsonl").read_text()  # code blocks are not text
    assert read_rows(out / "dev.jsonl") == [] and not (out / "dev-beir").exists()
    assert "kept" in err and "Wrote 7 train and 0 dev pairs" in err
    assert json.loads((out / "build.json").read_text())["sources"] == summary["sources"]


def test_build_is_deterministic_and_split_follows_documents(fixtures, tmp_path):
    kwargs = dict(apt_lists=fixtures["lists"], python_doc=fixtures["python"], linux_doc=fixtures["linux"],
                  man_dirs=[fixtures["man"]], dev_fraction=0.5, limits=Limits(min_positive_chars=40), page_negatives=2)
    a = build_pairs(tmp_path / "a", **kwargs)
    b = build_pairs(tmp_path / "b", ["man", "linux-doc", "python-doc", "apt"], **kwargs)  # order does not matter
    for name in ("train.jsonl", "dev.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert a.train + a.dev == 7 and a.dev > 0 and a.train > 0
    train, dev = read_rows(tmp_path / "a" / "train.jsonl"), read_rows(tmp_path / "a" / "dev.jsonl")
    pages = {}
    for split, rows in (("train", train), ("dev", dev)):
        for r in rows:
            pages.setdefault(r["origin"].split("#")[0], set()).add(split)
    assert all(len(splits) == 1 for splits in pages.values())  # a page never straddles the split
    overview = next(r for r in train + dev if r["query"] == "Frobnicator driver: Overview")
    assert overview["negatives"] == [next(r for r in train + dev
                                          if r["query"] == "Frobnicator driver: Module parameters")["positive"]]


def test_dev_beir_is_an_eval_dataset_of_the_dev_pairs(fixtures, tmp_path):
    build_pairs(tmp_path / "out", apt_lists=fixtures["lists"], python_doc=fixtures["python"],
                linux_doc=fixtures["linux"], man_dirs=[fixtures["man"]], dev_fraction=0.99,
                limits=Limits(min_positive_chars=40))
    dev = read_rows(tmp_path / "out" / "dev.jsonl")
    assert len(dev) == 7
    ds = load_dataset(tmp_path / "out" / "dev-beir")
    assert ds.queries == {r["id"]: r["query"] for r in dev}
    assert {d: c["text"] for d, c in ds.corpus.items()} == {r["id"]: r["positive"] for r in dev}
    assert ds.qrels == {r["id"]: {r["id"]: 1} for r in dev}


def test_rules_on_raw_pairs():
    def source(_counts):
        yield RawPair("same text as positive here", "Same text, as positive here!", "k1", "o1")
        yield RawPair("first query", "A shared positive text that is long enough.", "k2", "o2")
        yield RawPair("first  query", "a shared positive text that is long enough", "k3", "o3")
        yield RawPair("another query", "A shared positive text that is long enough.", "k4", "o4")
        yield RawPair("q", "A positive whose query is far too short to keep.", "k5", "o5")
        yield RawPair("long enough query", "x " * 40, "k6", "o6")
    pairs, counts = select_pairs({"s": source}, Limits(min_query_chars=3, min_positive_chars=10,
                                                       max_positive_chars=30), dev_fraction=0.0)
    c = counts["s"]
    assert c.dropped == {"query_equals_positive": 1, "duplicate_normalized": 1, "duplicate_positive": 1,
                         "query_too_short": 1}
    assert c.truncated == 2 and c.kept == 2
    assert sorted(p.positive for p in pairs) == ["A shared positive text that is", "x x x x x x x x x x x x x x x"]


def test_max_per_source_keeps_a_fixed_sample():
    def source(_counts):
        for i in range(50):
            yield RawPair(f"query number {i}", f"positive text number {i} " * 3, f"k{i}", f"o{i}")
    limits = Limits(min_query_chars=3, min_positive_chars=10)
    first, counts = select_pairs({"s": source}, limits, dev_fraction=0.0, max_per_source=10)
    again, _ = select_pairs({"s": source}, limits, dev_fraction=0.0, max_per_source=10)
    assert [p.id for p in first] == [p.id for p in again] and len(first) == 10
    assert counts["s"].dropped["over_max_per_source"] == 40
    assert sorted(p.query for p in first) != [f"query number {i}" for i in range(10)]  # not just the first ten


def test_dev_split_is_blake2b_of_the_document_key():
    keys = [f"doc-{i}" for i in range(2000)]
    share = sum(is_dev(k, 0.1) for k in keys) / len(keys)
    assert 0.07 < share < 0.13  # 2000 fixed keys: the share is a fixed number, checked once
    assert not any(is_dev(k, 0.0) for k in keys)
    assert normalized("Hello,   WORLD!") == normalized("hello world")


# ---------------------------------------------------------------------------------------------- errors
def test_missing_sources_fail_before_any_parsing(tmp_path, monkeypatch, capsys):
    empty = tmp_path / "lists"
    empty.mkdir()
    code, _, err = run_cli(["data", "pairs", "--out", tmp_path / "o", "--source", "apt", "--apt-lists", empty],
                           monkeypatch, capsys)
    assert_clean_error(code, err, "no Translation-en or Packages lists found", "apt-get")
    code, _, err = run_cli(["data", "pairs", "--out", tmp_path / "o", "--source", "python-doc", "--python-doc",
                            tmp_path / "nope"], monkeypatch, capsys)
    assert_clean_error(code, err, "does not exist", "apt-get install python3.11-doc")
    code, _, err = run_cli(["data", "pairs", "--out", tmp_path / "o", "--source", "nope"], monkeypatch, capsys)
    assert_clean_error(code, err, "unknown source 'nope'")
    assert not (tmp_path / "o").exists()


def test_packages_lists_without_long_descriptions_are_an_error(tmp_path):
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "x_dists_main_binary-amd64_Packages").write_text("Package: a\nDescription: only a synopsis\n")
    with pytest.raises(DataFileError, match="no long descriptions.*Acquire::Languages=en"):
        build_pairs(tmp_path / "o", ["apt"], apt_lists=lists)


def test_packages_lists_with_long_descriptions_are_used(tmp_path):
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "x_dists_main_binary-amd64_Packages").write_text(TRANSLATION_MAIN.replace("Description-en", "Description"))
    result = build_pairs(tmp_path / "o", ["apt"], apt_lists=lists, dev_fraction=0.0)
    assert result.sources["apt"].kept == 2


def test_out_dir_that_is_not_a_build_is_refused_and_a_failed_build_keeps_the_old_one(fixtures, tmp_path, monkeypatch):
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="not a pairs build"):
        build_pairs(other, ["man"], man_dirs=[fixtures["man"]])
    assert (other / "keep.txt").read_text() == "mine"

    out = tmp_path / "out"
    build_pairs(out, ["man"], man_dirs=[fixtures["man"]], dev_fraction=0.0, limits=Limits(min_positive_chars=40))
    before = (out / "train.jsonl").read_bytes()
    import diffembed.eval.datasets as datasets

    def boom(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(datasets, "write_retrieval_dataset", boom)
    with pytest.raises(OSError):
        build_pairs(out, man_dirs=[fixtures["man"]], apt_lists=fixtures["lists"], python_doc=fixtures["python"],
                    linux_doc=fixtures["linux"], dev_fraction=0.99, limits=Limits(min_positive_chars=40))
    assert (out / "train.jsonl").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["lists", "linux-doc-6.1", "man", "other", "out",
                                                                 "python3.11"])  # no staging folder left


def test_source_counts_reach_every_source(fixtures, tmp_path):
    result = build_pairs(tmp_path / "o", apt_lists=fixtures["lists"], python_doc=fixtures["python"],
                         linux_doc=fixtures["linux"], man_dirs=[fixtures["man"]], dev_fraction=0.0)
    assert list(result.sources) == ["apt", "python-doc", "linux-doc", "man"]
    counts: SourceCounts = result.sources["python-doc"]
    assert counts.candidates == counts.kept + sum(counts.dropped.values())
