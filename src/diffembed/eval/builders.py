"""Build evaluation datasets (the formats of README.md, Evaluation) from SQuAD-style QA files.

SQuAD v1.1 and KorQuAD v1.0 say which paragraph answers each question and where in it the answer
starts, so they give labelled retrieval sets with no extra annotation:

``retrieval`` (BEIR, question -> paragraph)
    corpus = every paragraph, ``_id`` ``a{article:03d}-p{paragraph:03d}`` (indices in the source file,
    0-based; more than 999 widens the number, ids stay unique), title = article title with ``_`` -> space,
    text = the paragraph's context. queries = every answerable question (``_id`` = the source question
    id, text stripped), qrels = question -> its paragraph, score 1. Paragraphs without questions stay in
    the corpus as distractors.

``contextual`` (ConTEB-like chunk retrieval)
    one document per article, ``_id`` ``a{article:03d}``, title as above. Each paragraph is tokenised and
    split on its own with :func:`diffembed.inference.chunking.split_chunks` (sentence-aware
    token-budget packing whose hard cuts split no character and, where they can, no word), so no
    chunk crosses a paragraph boundary; the chunks follow each other through the article's paragraphs and are indexed
    0, 1, 2 ... across the whole article. Chunk text is exactly ``context[char_start:char_end]``. The
    gold chunk of a question is the chunk that holds its answer's first character (see
    :func:`locate_chunk`); qrels corpus-id = ``chunk_id(doc_id, index)``, score 1.

Rules shared by both kinds, all deterministic so a rebuild gives identical bytes:

* Repeated paragraphs: a paragraph whose context equals an earlier paragraph of the same article is
  dropped (its id is not used) and its questions point at the first copy. KorQuAD dev has two such
  repeats; keeping them would leave identical "wrong" candidates next to the gold one.
* Questions without answers (SQuAD 2.0's unanswerable ones) are skipped.
* ``max_articles`` keeps the first N articles, ``max_questions`` the first N questions in file order;
  ids do not change with either.
* ``gold="first"`` (default) uses the first reference answer only (one relevant chunk per question);
  ``gold="all"`` marks every chunk that holds the start of any reference answer (SQuAD dev has 3-6
  references per question, and they sometimes start in different chunks).

Every build also writes ``build.json`` (what was built, from what, and counts) next to the dataset
files; it holds no time stamps or absolute paths.
"""

from __future__ import annotations

import bisect
import gzip
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from diffembed.errors import DataFileError, InputError
from diffembed.atomic import write_text
from diffembed.eval.datasets import chunk_id, write_contextual_dataset, write_retrieval_dataset
from diffembed.inference.chunking import split_chunks

GOLD_MODES = ("first", "all")


# ---------------------------------------------------------------------------- reading SQuAD
@dataclass(frozen=True)
class Answer:
    text: str
    start: int


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    answers: tuple[Answer, ...]


@dataclass(frozen=True)
class Paragraph:
    context: str
    questions: tuple[Question, ...]


@dataclass(frozen=True)
class Article:
    title: str
    paragraphs: tuple[Paragraph, ...]

    @property
    def display_title(self) -> str:
        return self.title.replace("_", " ").strip()


@dataclass(frozen=True)
class SquadData:
    """A parsed SQuAD-format file. ``name`` is the file name, ``version`` the file's own version field."""

    name: str
    version: str
    articles: tuple[Article, ...]

    @property
    def n_paragraphs(self) -> int:
        return sum(len(a.paragraphs) for a in self.articles)

    @property
    def n_questions(self) -> int:
        return sum(len(p.questions) for a in self.articles for p in a.paragraphs)


def _read_json(path: Path) -> Any:
    if not path.exists():
        raise DataFileError(f"missing file {path}")
    if not path.is_file():
        raise DataFileError(f"{path} is not a file")
    try:
        with path.open("rb") as f:
            gz = f.read(2) == b"\x1f\x8b"  # gzip magic, whatever the extension says
        opener = gzip.open if gz else open
        with opener(path, "rt", encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise DataFileError(f"{path}: malformed JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from exc
    except UnicodeDecodeError as exc:
        raise DataFileError(f"{path} is not valid UTF-8") from exc
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise DataFileError(f"cannot read {path}: {exc}") from exc


_SQUAD_SHAPE = "{'data': [{'title', 'paragraphs': [{'context', 'qas': [{'id', 'question', 'answers'}]}]}]}"


def _expect(cond: bool, path: Path, where: str, what: str) -> None:
    if not cond:
        raise DataFileError(f"{path}: {where}: {what} (expected the SQuAD layout {_SQUAD_SHAPE})")


def _obj(value: Any, path: Path, where: str) -> dict:
    _expect(isinstance(value, dict), path, where, f"must be a JSON object, not {type(value).__name__}")
    return value


def _list(obj: dict, key: str, path: Path, where: str) -> list:
    _expect(key in obj, path, where, f"missing '{key}'")
    _expect(isinstance(obj[key], list), path, where, f"'{key}' must be a list")
    return obj[key]


def _str(obj: dict, key: str, path: Path, where: str, *, non_empty: bool = True) -> str:
    _expect(key in obj, path, where, f"missing '{key}'")
    value = obj[key]
    _expect(isinstance(value, str), path, where, f"'{key}' must be a string")
    if non_empty:
        _expect(bool(value.strip()), path, where, f"'{key}' is empty")
    return value


def load_squad(path: str | os.PathLike) -> SquadData:
    """Read a SQuAD v1.1 / KorQuAD v1.0 file (plain JSON or gzip) with structure checks.

    Raises :class:`DataFileError` naming the file and the JSON location (``data[3].paragraphs[2]...``)
    for a missing file, malformed JSON, a wrong structure, a duplicate question id or an
    ``answer_start`` outside its context.
    """
    path = Path(path)
    raw = _read_json(path)
    root = _obj(raw, path, "top level")
    data = _list(root, "data", path, "top level")
    seen: set[str] = set()
    articles = []
    for a, art_raw in enumerate(data):
        where_a = f"data[{a}]"
        art = _obj(art_raw, path, where_a)
        title = art.get("title", "")
        _expect(isinstance(title, str), path, where_a, "'title' must be a string")
        paragraphs = []
        for p, par_raw in enumerate(_list(art, "paragraphs", path, where_a)):
            where_p = f"{where_a}.paragraphs[{p}]"
            par = _obj(par_raw, path, where_p)
            context = _str(par, "context", path, where_p)
            questions = []
            for q, qa_raw in enumerate(_list(par, "qas", path, where_p)):
                where_q = f"{where_p}.qas[{q}]"
                qa = _obj(qa_raw, path, where_q)
                qid = qa.get("id")
                _expect(isinstance(qid, (str, int)) and not isinstance(qid, bool) and str(qid).strip() != "",
                        path, where_q, "'id' must be a non-empty string")
                qid = str(qid).strip()
                _expect(not any(c in qid for c in "\t\r\n"), path, where_q, f"'id' {qid!r} holds a tab or newline")
                _expect(qid not in seen, path, where_q, f"duplicate question id '{qid}'")
                seen.add(qid)
                text = _str(qa, "question", path, where_q)
                answers = []
                for n, ans_raw in enumerate(_list(qa, "answers", path, where_q)):
                    where_n = f"{where_q}.answers[{n}]"
                    ans = _obj(ans_raw, path, where_n)
                    atext = _str(ans, "text", path, where_n, non_empty=False)
                    start = ans.get("answer_start")
                    _expect(isinstance(start, int) and not isinstance(start, bool), path, where_n,
                            "'answer_start' must be an integer")
                    _expect(0 <= start < len(context), path, where_n,
                            f"answer_start {start} is outside its context ({len(context)} characters)")
                    answers.append(Answer(atext, start))
                questions.append(Question(qid, text.strip(), tuple(answers)))
            paragraphs.append(Paragraph(context, tuple(questions)))
        articles.append(Article(title, tuple(paragraphs)))
    version = root.get("version", "")
    return SquadData(name=path.name, version=str(version), articles=tuple(articles))


def _as_squad(squad: SquadData | str | os.PathLike) -> SquadData:
    return squad if isinstance(squad, SquadData) else load_squad(squad)


# ---------------------------------------------------------------------------- selection
@dataclass
class _Selected:
    """Articles and questions after max_articles / max_questions / duplicate-paragraph rules."""

    articles: list[tuple[int, Article]]
    # article index -> paragraph indices kept (first copies), and paragraph index -> kept index
    kept: dict[int, list[int]]
    alias: dict[tuple[int, int], int]
    # (article index, kept paragraph index, question), in file order
    questions: list[tuple[int, int, Question]]
    duplicate_paragraphs: int
    unanswerable: int
    without_questions: int  # kept paragraphs that no question (of the selected articles) points at


def _select(squad: SquadData, max_articles: int | None, max_questions: int | None) -> _Selected:
    for name, value in (("max_articles", max_articles), ("max_questions", max_questions)):
        if value is not None and value < 1:
            raise InputError(f"{name} must be at least 1, got {value}")
    articles = list(enumerate(squad.articles))[: max_articles or None]
    kept: dict[int, list[int]] = {}
    alias: dict[tuple[int, int], int] = {}
    questions: list[tuple[int, int, Question]] = []
    duplicates = unanswerable = 0
    for a, art in articles:
        first_copy: dict[str, int] = {}
        kept[a] = []
        for p, par in enumerate(art.paragraphs):
            if par.context in first_copy:
                duplicates += 1
            else:
                first_copy[par.context] = p
                kept[a].append(p)
            alias[(a, p)] = first_copy[par.context]
            for q in par.questions:
                if not q.answers:
                    unanswerable += 1
                    continue
                questions.append((a, alias[(a, p)], q))
    asked = {(a, alias[(a, p)]) for a, art in articles for p, par in enumerate(art.paragraphs) if par.questions}
    without = sum(1 for a in kept for p in kept[a] if (a, p) not in asked)
    if max_questions is not None:
        questions = questions[:max_questions]
    return _Selected(articles, kept, alias, questions, duplicates, unanswerable, without)


def paragraph_id(article_index: int, paragraph_index: int) -> str:
    return f"a{article_index:03d}-p{paragraph_index:03d}"


def article_id(article_index: int) -> str:
    return f"a{article_index:03d}"


# ---------------------------------------------------------------------------- results
@dataclass
class ChunkSpan:
    """Where a contextual chunk came from: paragraph index in the source article and its span."""

    paragraph: int
    char_start: int
    char_end: int
    tokens: int


@dataclass
class BuildSummary:
    kind: str
    out_dir: str
    source: str
    documents: int
    queries: int
    qrels: int
    chunks: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    # contextual only: doc id -> spans of its chunks (not written; for checks and analysis)
    spans: dict[str, list[ChunkSpan]] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("spans")
        if self.chunks is None:
            data.pop("chunks")
        return data


def _prepare_out(out_dir: str | os.PathLike, kind: str, split: str) -> Path:
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*", split):
        raise InputError(f"split name '{split}' must be a plain file name (letters, digits, _ . -)")
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise InputError(f"output {root} exists and is not a folder")
    other = {"retrieval": "documents.jsonl", "contextual": "corpus.jsonl"}[kind]
    if (root / other).exists():
        raise InputError(f"{root} already holds a {'contextual' if kind == 'retrieval' else 'retrieval'} "
                         f"dataset ({other}); choose another output folder or remove it")
    return root


def _write_build_info(root: Path, summary: BuildSummary) -> None:
    info = {k: v for k, v in summary.to_dict().items() if k != "out_dir"}
    write_text(root / "build.json", json.dumps(info, ensure_ascii=False, indent=2) + "\n")


# ---------------------------------------------------------------------------- retrieval
def build_squad_retrieval(squad: SquadData | str | os.PathLike, out_dir: str | os.PathLike, *,
                          max_articles: int | None = None, max_questions: int | None = None,
                          split: str = "test") -> BuildSummary:
    """Question -> paragraph retrieval in BEIR format (see the module docstring for ids and rules)."""
    squad = _as_squad(squad)
    root = _prepare_out(out_dir, "retrieval", split)
    sel = _select(squad, max_articles, max_questions)
    corpus: dict[str, dict[str, str]] = {}
    for a, art in sel.articles:
        for p in sel.kept[a]:
            corpus[paragraph_id(a, p)] = {"title": art.display_title, "text": art.paragraphs[p].context}
    queries = {q.id: q.question for _, _, q in sel.questions}
    qrels = {q.id: {paragraph_id(a, p): 1} for a, p, q in sel.questions}
    write_retrieval_dataset(root, corpus, queries, qrels, split=split)
    summary = BuildSummary(
        kind="retrieval", out_dir=str(root), source=squad.name, documents=len(corpus), queries=len(queries),
        qrels=sum(len(v) for v in qrels.values()),
        settings={"split": split, "max_articles": max_articles, "max_questions": max_questions,
                  "id_scheme": "a{article:03d}-p{paragraph:03d}"},
        stats={"articles": len(sel.articles), "paragraphs": sum(len(a.paragraphs) for _, a in sel.articles),
               "duplicate_paragraphs_merged": sel.duplicate_paragraphs,
               "unanswerable_questions_skipped": sel.unanswerable,
               "paragraphs_without_questions": sel.without_questions},
    )
    _write_build_info(root, summary)
    return summary


# ---------------------------------------------------------------------------- chunking
def locate_chunk(spans: list[tuple[int, int]], context: str, answer: Answer) -> int:
    """Index (into ``spans``, sorted non-overlapping ``(char_start, char_end)``) of the gold chunk.

    The answer's first character is ``answer.start``, moved past leading whitespace of the answer
    text. The gold chunk is the one whose ``[char_start, char_end)`` holds it; a position between two
    chunks (whitespace the chunks leave out) goes to the next chunk, one after the last chunk to the
    last chunk.
    """
    pos = answer.start
    stop = min(len(context), answer.start + max(len(answer.text), 1))
    while pos < stop - 1 and context[pos].isspace():
        pos += 1
    ends = [e for _, e in spans]
    return min(bisect.bisect_right(ends, pos), len(spans) - 1)


def _quiet_length_warning():
    """transformers warns once when a text is longer than the model window; chunking does not care."""
    from transformers.utils import logging as hf_logging

    class _Quiet:
        def __enter__(self):
            self.level = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()

        def __exit__(self, *exc):
            hf_logging.set_verbosity(self.level)

    return _Quiet()


# ---------------------------------------------------------------------------- contextual
def build_squad_contextual(squad: SquadData | str | os.PathLike, out_dir: str | os.PathLike, tokenizer, *,
                           chunk_tokens: int = 64, max_articles: int | None = None,
                           max_questions: int | None = None, gold: str = "first", split: str = "test",
                           tokenizer_name: str | None = None) -> BuildSummary:
    """ConTEB-style chunk retrieval: one document per article, chunks per paragraph (module docstring).

    ``tokenizer`` is a fast (Rust) transformers tokenizer; ``chunk_tokens`` counts its tokens without
    special tokens. ``tokenizer_name`` is only recorded in build.json (default: its name_or_path).
    """
    from diffembed.inference.tokens import tokenize_with_offsets

    if chunk_tokens < 1:
        raise InputError(f"chunk_tokens must be at least 1, got {chunk_tokens}")
    if gold not in GOLD_MODES:
        raise InputError(f"gold must be one of {', '.join(GOLD_MODES)}, got '{gold}'")
    squad = _as_squad(squad)
    root = _prepare_out(out_dir, "contextual", split)
    sel = _select(squad, max_articles, max_questions)

    documents: dict[str, dict] = {}
    spans: dict[str, list[ChunkSpan]] = {}
    # (article, paragraph) -> (index of its first chunk in the document, its chunk spans)
    para_chunks: dict[tuple[int, int], tuple[int, list[tuple[int, int]]]] = {}
    tokens_total = 0
    with _quiet_length_warning():
        for a, art in sel.articles:
            doc = article_id(a)
            chunks: list[str] = []
            doc_spans: list[ChunkSpan] = []
            for p in sel.kept[a]:
                context = art.paragraphs[p].context
                _, offsets = tokenize_with_offsets(tokenizer, context)
                tokens_total += len(offsets)
                pieces = split_chunks(context, offsets, chunk_tokens)
                if not pieces:
                    raise InputError(f"{squad.name}: data[{a}].paragraphs[{p}]: the tokenizer gives no tokens "
                                     "for this paragraph, so it cannot be chunked")
                para_chunks[(a, p)] = (len(chunks), [(c.char_start, c.char_end) for c in pieces])
                for c in pieces:
                    chunks.append(context[c.char_start:c.char_end])
                    doc_spans.append(ChunkSpan(p, c.char_start, c.char_end, c.token_end - c.token_start))
            documents[doc] = {"title": art.display_title, "chunks": chunks}
            spans[doc] = doc_spans

    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    split_refs = crossing = 0
    for a, p, q in sel.questions:
        first, par_spans = para_chunks[(a, p)]
        context = squad.articles[a].paragraphs[p].context
        hits = [locate_chunk(par_spans, context, ans) for ans in q.answers]
        if len(set(hits)) > 1:
            split_refs += 1
        s0, e0 = par_spans[hits[0]]
        if q.answers[0].start + len(q.answers[0].text.rstrip()) > e0:
            crossing += 1
        chosen = hits[:1] if gold == "first" else sorted(set(hits))
        queries[q.id] = q.question
        qrels[q.id] = {chunk_id(article_id(a), first + h): 1 for h in chosen}
    write_contextual_dataset(root, documents, queries, qrels, split=split)

    n_chunks = sum(len(d["chunks"]) for d in documents.values())
    chunk_chars = sorted(s.char_end - s.char_start for ss in spans.values() for s in ss)
    chunk_toks = sorted(s.tokens for ss in spans.values() for s in ss)
    summary = BuildSummary(
        kind="contextual", out_dir=str(root), source=squad.name, documents=len(documents), chunks=n_chunks,
        queries=len(queries), qrels=sum(len(v) for v in qrels.values()),
        settings={"split": split, "chunk_tokens": chunk_tokens, "gold": gold, "max_articles": max_articles,
                  "max_questions": max_questions,
                  "tokenizer": tokenizer_name or getattr(tokenizer, "name_or_path", type(tokenizer).__name__),
                  "id_scheme": "a{article:03d}, chunks a{article:03d}_{index}"},
        stats={"articles": len(sel.articles), "paragraphs": sum(len(a.paragraphs) for _, a in sel.articles),
               "duplicate_paragraphs_merged": sel.duplicate_paragraphs,
               "unanswerable_questions_skipped": sel.unanswerable,
               "paragraph_tokens": tokens_total,
               "chunk_tokens_median": chunk_toks[len(chunk_toks) // 2] if chunk_toks else 0,
               "chunk_chars_median": chunk_chars[len(chunk_chars) // 2] if chunk_chars else 0,
               "chunks_per_document_max": max((len(d["chunks"]) for d in documents.values()), default=0),
               "questions_with_references_in_several_chunks": split_refs,
               "first_answers_running_past_their_chunk": crossing},
        spans=spans,
    )
    _write_build_info(root, summary)
    return summary
