"""Dataset builders from SQuAD-format QA files: reading, ids, chunking, gold chunks, CLI.

A small SQuAD-format fixture is written by the tests themselves; one test also checks the real SQuAD
v1.1 dev set when /work/shared/data holds it (skipped otherwise). Chunking uses the packaged
all-MiniLM-L6-v2 tokenizer (offline).
"""

from __future__ import annotations

import gzip
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import typer  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from diffembed.cli.data import data_app  # noqa: E402
from diffembed.errors import DataFileError, InputError  # noqa: E402
from diffembed.eval.builders import (Answer, build_squad_contextual, build_squad_retrieval,  # noqa: E402
                                     load_squad, locate_chunk)
from diffembed.eval.datasets import ContextualDataset, RetrievalDataset, chunk_id, load_dataset  # noqa: E402
from diffembed.inference.chunking import split_chunks  # noqa: E402
from diffembed.inference.tokens import tokenize_with_offsets  # noqa: E402

# shared/ sits beside the repository (also in CI's fresh clone); /work/shared is the usual checkout.
REAL_SQUAD = next((p for p in (Path(__file__).resolve().parents[3] / "shared/data/squad-v1.1-dev.json.gz",
                               Path("/work/shared/data/squad-v1.1-dev.json.gz")) if p.is_file()),
                  Path("/work/shared/data/squad-v1.1-dev.json.gz"))
BUDGET = 16  # small, so the long paragraph splits into one chunk per sentence

# ---------------------------------------------------------------------------- fixture
P_SHORT = "Berlin is the capital of Germany. It has about 3.7 million people. The city lies on the river Spree."
# Every sentence has 9-16 MiniLM tokens, so with BUDGET two sentences never share a chunk.
P_LONG = (
    "The port of Hamburg is one of the largest ports in Europe. "
    "Its history goes back to a castle built in the ninth century. "
    "Hamburg joined the Hanseatic League during the thirteenth century. "
    "A great fire destroyed much of the old town in the year 1842. "
    "The Elbphilharmonie concert hall opened in January 2017. "
    "Around 1.9 million people lived in the city at the last census."
)
P_SECOND = "Paris is the capital of France. The Seine river flows through the middle of the city. Paris hosts the Louvre."
P_DISTRACTOR = "Lyon is a city in France known for its food. It lies where the Rhone meets the Saone."

# (id, question, paragraph text, answer text, expected substring of the gold chunk)
QUESTIONS = {
    (0, 0): [
        ("q-start", "What is the capital of Germany?", "Berlin", "Berlin is the capital"),
        ("q-pop", "How many people live in Berlin?", "3.7 million", "3.7 million"),
        ("q-river", "Which river runs through Berlin?", "Spree", "river Spree"),
    ],
    (0, 1): [
        ("q-fire", "When did the great fire happen?", "1842", "great fire"),
        ("q-hall", "What opened in 2017?", "The Elbphilharmonie concert hall", "Elbphilharmonie"),
        # answer_start on the space between two chunks: goes to the next chunk
        ("q-gap", "Which league did the city join?", " Hamburg joined the Hanseatic League", "Hanseatic League"),
        ("q-census", "How many people at the last census?", "1.9 million", "last census"),
    ],
    (1, 0): [
        ("q-louvre", "Which museum does Paris host?", "the Louvre", "Louvre"),
    ],
}


def squad_json(articles=None, questions=None) -> dict:
    """The fixture as SQuAD JSON; answer_start offsets are computed from the answer texts."""
    if articles is None:
        articles = [("Test_Article_One", [P_SHORT, P_LONG]), ("Second_Article", [P_SECOND, P_DISTRACTOR])]
        questions = QUESTIONS
    data = []
    for a, (title, contexts) in enumerate(articles):
        paragraphs = []
        for p, context in enumerate(contexts):
            qas = [{"id": qid, "question": question,
                    "answers": [{"text": answer, "answer_start": context.index(answer)}]}
                   for qid, question, answer, _ in (questions or {}).get((a, p), [])]
            paragraphs.append({"context": context, "qas": qas})
        data.append({"title": title, "paragraphs": paragraphs})
    return {"version": "1.1", "data": data}


def write_squad(path: Path, content: dict | str, gz: bool | None = None) -> Path:
    text = content if isinstance(content, str) else json.dumps(content)
    if gz if gz is not None else path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode("utf-8")))
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from diffembed.modeling.loader import resolve_model_path

    return AutoTokenizer.from_pretrained(resolve_model_path(None)[0])


@pytest.fixture
def squad_file(tmp_path) -> Path:
    return write_squad(tmp_path / "mini.json.gz", squad_json())


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------- reading
def test_load_squad_plain_and_gzip_agree(tmp_path):
    plain = load_squad(write_squad(tmp_path / "a.json", squad_json()))
    gz = load_squad(write_squad(tmp_path / "b.json.gz", squad_json()))
    assert plain.articles == gz.articles
    assert (len(plain.articles), plain.n_paragraphs, plain.n_questions) == (2, 4, 8)
    assert plain.articles[0].display_title == "Test Article One"
    q = plain.articles[0].paragraphs[0].questions[0]
    assert (q.id, q.answers[0]) == ("q-start", Answer("Berlin", 0))


def test_load_squad_missing_file(tmp_path):
    with pytest.raises(DataFileError, match="missing file .*nope.json"):
        load_squad(tmp_path / "nope.json")


def test_load_squad_malformed_json(tmp_path):
    with pytest.raises(DataFileError, match=r"bad\.json: malformed JSON .*line 1 column"):
        load_squad(write_squad(tmp_path / "bad.json", '{"data": [ '))
    with pytest.raises(DataFileError, match=r"bad\.json\.gz: malformed JSON"):
        load_squad(write_squad(tmp_path / "bad.json.gz", '{"data": oops}'))
    truncated = tmp_path / "cut.json.gz"
    truncated.write_bytes(gzip.compress(json.dumps(squad_json()).encode())[:60])
    with pytest.raises(DataFileError, match="cut.json.gz"):
        load_squad(truncated)


def _broken(mutate):
    doc = squad_json()
    mutate(doc)
    return doc


@pytest.mark.parametrize("content, needle", [
    ([1, 2], "top level: must be a JSON object"),
    ({"version": "1.1"}, "top level: missing 'data'"),
    (_broken(lambda d: d["data"][1].pop("paragraphs")), "data[1]: missing 'paragraphs'"),
    (_broken(lambda d: d["data"][0]["paragraphs"][1].pop("context")), "data[0].paragraphs[1]: missing 'context'"),
    (_broken(lambda d: d["data"][0]["paragraphs"][0].update(context="  ")), "data[0].paragraphs[0]: 'context' is empty"),
    (_broken(lambda d: d["data"][0]["paragraphs"][0].update(qas={})), "data[0].paragraphs[0]: 'qas' must be a list"),
    (_broken(lambda d: d["data"][0]["paragraphs"][0]["qas"][0].pop("question")),
     "data[0].paragraphs[0].qas[0]: missing 'question'"),
    (_broken(lambda d: d["data"][0]["paragraphs"][0]["qas"][1]["answers"][0].update(answer_start="5")),
     "data[0].paragraphs[0].qas[1].answers[0]: 'answer_start' must be an integer"),
    (_broken(lambda d: d["data"][0]["paragraphs"][0]["qas"][1]["answers"][0].update(answer_start=999)),
     "answer_start 999 is outside its context"),
    (_broken(lambda d: d["data"][1]["paragraphs"][0]["qas"][0].update(id="q-start")), "duplicate question id 'q-start'"),
])
def test_load_squad_wrong_structure(tmp_path, content, needle):
    with pytest.raises(DataFileError) as info:
        load_squad(write_squad(tmp_path / "wrong.json", content))
    message = str(info.value)
    assert needle in message and "wrong.json" in message and "SQuAD layout" in message


# ---------------------------------------------------------------------------- retrieval
def test_retrieval_build(tmp_path, squad_file):
    summary = build_squad_retrieval(squad_file, tmp_path / "ret")
    ds = load_dataset(tmp_path / "ret")
    assert isinstance(ds, RetrievalDataset)
    assert list(ds.corpus) == ["a000-p000", "a000-p001", "a001-p000", "a001-p001"]  # distractor kept
    assert ds.corpus["a000-p001"] == {"title": "Test Article One", "text": P_LONG}
    assert ds.corpus["a001-p001"]["text"] == P_DISTRACTOR
    assert ds.queries["q-start"] == "What is the capital of Germany?"
    expected = {qid: {f"a{a:03d}-p{p:03d}": 1} for (a, p), qs in QUESTIONS.items() for qid, *_ in qs}
    assert ds.qrels == expected
    assert (summary.documents, summary.queries, summary.qrels) == (4, 8, 8)
    assert summary.stats["paragraphs_without_questions"] == 1
    assert json.loads((tmp_path / "ret" / "build.json").read_text())["kind"] == "retrieval"


def test_retrieval_limits_keep_ids(tmp_path, squad_file):
    build_squad_retrieval(squad_file, tmp_path / "one", max_articles=1, max_questions=4)
    ds = load_dataset(tmp_path / "one")
    assert list(ds.corpus) == ["a000-p000", "a000-p001"]
    assert list(ds.queries) == ["q-start", "q-pop", "q-river", "q-fire"]
    assert ds.qrels["q-fire"] == {"a000-p001": 1}
    with pytest.raises(InputError, match="max_questions must be at least 1"):
        build_squad_retrieval(squad_file, tmp_path / "zero", max_questions=0)
    with pytest.raises(InputError, match="split name"):
        build_squad_retrieval(squad_file, tmp_path / "split", split="../test")
    build_squad_retrieval(squad_file, tmp_path / "dev", split="dev")
    assert (tmp_path / "dev" / "qrels" / "dev.tsv").is_file()
    assert len(load_dataset(tmp_path / "dev", split="dev").qrels) == 8


def test_repeated_paragraph_merged(tmp_path, tokenizer):
    doc = squad_json([("Dup", [P_SHORT, P_SECOND, P_SHORT])])
    doc["data"][0]["paragraphs"][2]["qas"] = [
        {"id": "q-copy", "question": "Capital?", "answers": [{"text": "Germany", "answer_start": P_SHORT.index("Germany")}]}]
    path = write_squad(tmp_path / "dup.json", doc)
    build_squad_retrieval(path, tmp_path / "r")
    ret = load_dataset(tmp_path / "r")
    assert list(ret.corpus) == ["a000-p000", "a000-p001"]
    assert ret.qrels["q-copy"] == {"a000-p000": 1}
    summary = build_squad_contextual(path, tmp_path / "c", tokenizer, chunk_tokens=BUDGET)
    ctx = load_dataset(tmp_path / "c")
    assert {s.paragraph for s in summary.spans["a000"]} == {0, 1}
    (gold,) = ctx.qrels["q-copy"]
    assert "Germany" in ctx.documents["a000"]["chunks"][int(gold.split("_")[1])]
    assert summary.stats["duplicate_paragraphs_merged"] == 1


# ---------------------------------------------------------------------------- contextual
@pytest.fixture
def contextual(tmp_path, squad_file, tokenizer):
    summary = build_squad_contextual(squad_file, tmp_path / "ctx", tokenizer, chunk_tokens=BUDGET)
    return summary, load_dataset(tmp_path / "ctx"), load_squad(squad_file)


def test_contextual_round_trip(contextual):
    summary, ds, squad = contextual
    assert isinstance(ds, ContextualDataset)
    assert list(ds.documents) == ["a000", "a001"]
    assert ds.documents["a000"]["title"] == "Test Article One"
    assert len(ds.queries) == 8 and summary.queries == 8 and summary.qrels == 8
    assert summary.chunks == sum(len(d["chunks"]) for d in ds.documents.values())
    assert all(len(v) == 1 for v in ds.qrels.values())
    # the distractor paragraph is chunked into the second document too
    assert any(P_DISTRACTOR.startswith(c) for c in ds.documents["a001"]["chunks"])


def test_contextual_chunk_boundaries(contextual, tokenizer):
    summary, ds, squad = contextual
    for a, article in enumerate(squad.articles):
        doc = f"a{a:03d}"
        spans, chunks = summary.spans[doc], ds.documents[doc]["chunks"]
        assert len(spans) == len(chunks)
        # in order through the paragraphs, each paragraph's chunks in text order without overlap
        assert [s.paragraph for s in spans] == sorted(s.paragraph for s in spans)
        for s, text in zip(spans, chunks):
            context = article.paragraphs[s.paragraph].context
            assert text == context[s.char_start:s.char_end]  # exact slice: never crosses a paragraph
            assert s.tokens <= BUDGET
            assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= BUDGET
        for p, paragraph in enumerate(article.paragraphs):
            own = [s for s in spans if s.paragraph == p]
            assert all(x.char_end <= y.char_start for x, y in zip(own, own[1:]))
            covered = "".join(paragraph.context[s.char_start:s.char_end] for s in own)
            assert "".join(covered.split()) == "".join(paragraph.context.split())  # only whitespace left out
    long_spans = [s for s in summary.spans["a000"] if s.paragraph == 1]
    assert len(long_spans) == 6  # one sentence per chunk with this budget


def test_contextual_gold_chunks(contextual):
    summary, ds, squad = contextual
    first_of = {}
    for doc, spans in summary.spans.items():
        for i, s in enumerate(spans):
            first_of.setdefault((doc, s.paragraph), i)
    for (a, p), qs in QUESTIONS.items():
        doc = f"a{a:03d}"
        for qid, _, answer, expected in qs:
            (gold,) = ds.qrels[qid]
            index = int(gold.rsplit("_", 1)[1])
            assert gold == chunk_id(doc, index)
            assert summary.spans[doc][index].paragraph == p, qid
            text = ds.documents[doc]["chunks"][index]
            assert expected in text, (qid, text)
            assert answer.strip() in text, (qid, text)
    spans = summary.spans["a000"]
    index = lambda qid: int(next(iter(ds.qrels[qid])).rsplit("_", 1)[1])  # noqa: E731
    assert index("q-start") == 0 and spans[0].char_start == 0  # answer at the very start of a paragraph
    # answers in later sentences of the long paragraph land in later chunks of it
    assert index("q-fire") > first_of[("a000", 1)]
    assert index("q-census") == first_of[("a000", 1)] + 5
    # the gap answer starts on a space that no chunk holds; it belongs to the chunk after it
    gap = P_LONG.index(" Hamburg joined")
    chunk = spans[index("q-gap")]
    assert chunk.char_start == gap + 1 and not any(s.char_start <= gap < s.char_end for s in spans if s.paragraph == 1)


def test_locate_chunk_rules():
    context = "Alpha beta.  Gamma delta.   "
    spans = [(0, 11), (13, 25)]
    assert locate_chunk(spans, context, Answer("Alpha", 0)) == 0
    assert locate_chunk(spans, context, Answer("beta.", 6)) == 0
    assert locate_chunk(spans, context, Answer("  Gamma", 11)) == 1  # leading whitespace of the answer skipped
    assert locate_chunk(spans, context, Answer(" ", 12)) == 1  # a pure gap goes to the next chunk
    assert locate_chunk(spans, context, Answer("delta", 19)) == 1
    assert locate_chunk(spans, context, Answer(" ", 26)) == 1  # after the last chunk: the last chunk


def test_gold_all_marks_every_reference(tmp_path, tokenizer):
    doc = squad_json([("Refs", [P_LONG])])
    doc["data"][0]["paragraphs"][0]["qas"] = [{"id": "q-multi", "question": "A number?", "answers": [
        {"text": "1842", "answer_start": P_LONG.index("1842")},
        {"text": "2017", "answer_start": P_LONG.index("2017")},
        {"text": "1842", "answer_start": P_LONG.index("1842")}]}]
    path = write_squad(tmp_path / "refs.json", doc)
    first = build_squad_contextual(path, tmp_path / "first", tokenizer, chunk_tokens=BUDGET)
    every = build_squad_contextual(path, tmp_path / "all", tokenizer, chunk_tokens=BUDGET, gold="all")
    assert load_dataset(tmp_path / "first").qrels["q-multi"] == {"a000_3": 1}
    assert load_dataset(tmp_path / "all").qrels["q-multi"] == {"a000_3": 1, "a000_4": 1}
    assert first.stats["questions_with_references_in_several_chunks"] == 1 == every.qrels - 1
    with pytest.raises(InputError, match="gold must be one of"):
        build_squad_contextual(path, tmp_path / "x", tokenizer, gold="any")


def test_builds_are_byte_stable(tmp_path, squad_file, tokenizer):
    for name in ("one", "two"):
        build_squad_retrieval(squad_file, tmp_path / name / "ret")
        build_squad_contextual(squad_file, tmp_path / name / "ctx", tokenizer, chunk_tokens=BUDGET)
    for kind in ("ret", "ctx"):
        first, second = all_files(tmp_path / "one" / kind), all_files(tmp_path / "two" / kind)
        assert first == second and "build.json" in first and "qrels/test.tsv" in first
    # rebuilding into the same folder overwrites it with the same bytes
    before = all_files(tmp_path / "one" / "ctx")
    build_squad_contextual(squad_file, tmp_path / "one" / "ctx", tokenizer, chunk_tokens=BUDGET)
    assert all_files(tmp_path / "one" / "ctx") == before


def test_output_folder_of_other_kind_refused(tmp_path, squad_file, tokenizer):
    build_squad_retrieval(squad_file, tmp_path / "ds")
    with pytest.raises(InputError, match="already holds a retrieval dataset"):
        build_squad_contextual(squad_file, tmp_path / "ds", tokenizer)


# ---------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def cli():
    app = typer.Typer()
    app.add_typer(data_app, name="data")
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


def test_cli_build_retrieval_and_contextual(cli, tmp_path, squad_file):
    result = cli("data", "build", squad_file, "--out", tmp_path / "r", "--kind", "retrieval", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["kind"], summary["documents"], summary["queries"], summary["qrels"]) == ("retrieval", 4, 8, 8)
    assert summary["built"] is True

    result = cli("data", "build", squad_file, "-o", tmp_path / "c", "--kind", "contextual", "--chunk-tokens", BUDGET)
    assert result.exit_code == 0, result.output
    assert "Built contextual dataset" in result.stdout and "2 documents" in result.stdout
    assert "8 queries" in result.stdout
    meta = json.loads((tmp_path / "c" / "build.json").read_text())
    assert meta["settings"]["tokenizer"] == "all-MiniLM-L6-v2 (packaged)" and meta["settings"]["chunk_tokens"] == BUDGET
    assert isinstance(load_dataset(tmp_path / "c"), ContextualDataset)


def test_cli_reads_existing_folder_as_it_is(cli, tmp_path, squad_file):
    assert cli("data", "build", squad_file, "--out", tmp_path / "c", "--kind", "contextual").exit_code == 0
    before = all_files(tmp_path / "c")
    result = cli("data", "build", tmp_path / "c", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["built"] is False and summary["kind"] == "contextual"
    assert (summary["documents"], summary["queries"]) == (2, 8) and summary["chunks"] >= 4
    assert all_files(tmp_path / "c") == before
    result = cli("data", "build", tmp_path / "c")
    assert "Read (as it is) contextual dataset" in result.stdout
    assert isinstance(cli("data", "build", tmp_path / "c", "--kind", "retrieval").exception, InputError)
    assert isinstance(cli("data", "build", tmp_path / "c", "--out", tmp_path / "x").exception, InputError)


def test_cli_errors(cli, tmp_path, squad_file):
    result = cli("data", "build", tmp_path / "missing.json", "--out", tmp_path / "o", "--kind", "retrieval")
    assert isinstance(result.exception, DataFileError) and "missing file" in str(result.exception)
    bad = write_squad(tmp_path / "bad.json", "{not json")
    result = cli("data", "build", bad, "--out", tmp_path / "o", "--kind", "retrieval")
    assert isinstance(result.exception, DataFileError) and "malformed JSON" in str(result.exception)
    result = cli("data", "build", squad_file, "--out", tmp_path / "o")
    assert isinstance(result.exception, InputError) and "--kind is required" in str(result.exception)
    result = cli("data", "build", squad_file, "--kind", "retrieval")
    assert isinstance(result.exception, InputError) and "--out is required" in str(result.exception)
    result = cli("data", "build", squad_file, "--out", tmp_path / "o", "--kind", "paragraphs")
    assert isinstance(result.exception, InputError) and "unknown --kind" in str(result.exception)
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------- real data
@pytest.mark.skipif(not REAL_SQUAD.is_file(), reason="SQuAD v1.1 dev not present in ../shared/data")
def test_real_squad_dev_gold_chunks(tmp_path, tokenizer):
    squad = load_squad(REAL_SQUAD)
    assert (len(squad.articles), squad.n_paragraphs, squad.n_questions) == (48, 2067, 10570)
    ret = build_squad_retrieval(squad, tmp_path / "ret")
    assert (ret.documents, ret.queries, ret.qrels) == (2067, 10570, 10570)
    summary = build_squad_contextual(squad, tmp_path / "ctx", tokenizer, chunk_tokens=64)
    ds = load_dataset(tmp_path / "ctx")
    assert len(ds.documents) == 48 and len(ds.queries) == 10570
    checked = 0
    for a, article in enumerate(squad.articles):
        doc = f"a{a:03d}"
        spans = summary.spans[doc]
        for p, paragraph in enumerate(article.paragraphs):
            for q in paragraph.questions:
                (gold,) = ds.qrels[q.id]
                index = int(gold.rsplit("_", 1)[1])
                span = spans[index]
                assert span.paragraph == p and span.tokens <= 64
                text = ds.documents[doc]["chunks"][index]
                assert text == paragraph.context[span.char_start:span.char_end]
                start = q.answers[0].start
                # the chunk covers the answer's first character, or starts right after whitespace holding it
                assert span.char_start <= start < span.char_end or (
                    start < span.char_start and paragraph.context[start:span.char_start].isspace()), q.id
                checked += 1
    assert checked == 10570
