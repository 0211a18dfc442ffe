"""`diffembed data`: build evaluation datasets (BEIR retrieval, ConTEB-like contextual) from QA files."""

from __future__ import annotations

from pathlib import Path

import typer

from diffembed.cli.common import print_json

data_app = typer.Typer(
    help="Build and check evaluation datasets (SQuAD/KorQuAD -> BEIR retrieval or contextual chunks).",
    no_args_is_help=True,
)

KINDS = ("retrieval", "contextual")


def _load_tokenizer(name: str | None):
    from diffembed.modeling.loader import load_tokenizer, resolve_model_path

    path, display = resolve_model_path(name)
    return load_tokenizer(path), display


def _existing_dataset(source: Path, out: Path | None, kind: str | None, split: str, limits: bool) -> dict:
    """SOURCE is already a dataset folder: read it as it is, with all load_dataset checks."""
    from diffembed.errors import InputError
    from diffembed.eval.datasets import load_dataset

    if limits:
        raise InputError(f"{source} is a dataset folder, read as it is; --max-articles/--max-questions only "
                         "apply when building from a SQuAD/KorQuAD file")
    if out is not None and out.resolve() != source.resolve():
        raise InputError(f"{source} is a dataset folder, read as it is; --out is only for building from a "
                         "SQuAD/KorQuAD file (drop --out, or copy the folder yourself)")
    ds = load_dataset(source, split=split)
    if kind is not None and kind != ds.kind:
        raise InputError(f"{source} holds a {ds.kind} dataset, not {kind}")
    summary = {"kind": ds.kind, "out_dir": str(source), "source": str(source), "built": False,
               "queries": len(ds.queries), "qrels": sum(len(v) for v in ds.qrels.values())}
    if ds.kind == "contextual":
        summary["documents"] = len(ds.documents)
        summary["chunks"] = len(ds.chunk_ids())
    else:
        summary["documents"] = len(ds.corpus)
    return summary


_BUILD_HELP = (
    "Write a retrieval or contextual dataset built from SOURCE, then print its counts.\n\n"
    "retrieval: corpus = paragraphs (ids a{article}-p{paragraph}), queries = questions, qrels = each "
    "question's paragraph. contextual: one document per article (id a{article}) whose chunks are its "
    "paragraphs split to --chunk-tokens tokens; a question's gold chunk holds its answer's first character. "
    "build.json in the output folder records the settings and counts.\n\n"
    "A dataset folder as SOURCE is only checked and counted, as it is."
)


@data_app.command(help=_BUILD_HELP)
def build(
    source: Path = typer.Argument(..., help="A SQuAD v1.1 / KorQuAD v1.0 .json or .json.gz file, or an existing "
                                           "BEIR/contextual dataset folder (checked and counted as it is)."),
    out: Path = typer.Option(None, "--out", "-o", help="Output dataset folder (required for a QA file)."),
    kind: str = typer.Option(None, "--kind", help="retrieval (question -> paragraph, BEIR) or contextual "
                                                 "(question -> chunk of its article)."),
    chunk_tokens: int = typer.Option(64, "--chunk-tokens", help="Contextual: chunk budget in tokenizer tokens."),
    tokenizer: str = typer.Option(None, "--model", "--tokenizer",
                                  help="Contextual: the model (folder, hub id or packaged name such as "
                                       "multilingual-e5-small) whose tokenizer counts chunk tokens; use the model "
                                       "you will evaluate (default: packaged all-MiniLM-L6-v2)."),
    max_articles: int = typer.Option(None, "--max-articles", help="Keep only the first N articles."),
    max_questions: int = typer.Option(None, "--max-questions", help="Keep only the first N questions."),
    gold: str = typer.Option("first", "--gold", help="Contextual: gold chunk from the 'first' reference answer, "
                                                     "or 'all' chunks that hold a reference answer's start."),
    split: str = typer.Option("test", "--split", help="qrels split name (qrels/SPLIT.tsv)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Build a dataset from a SQuAD/KorQuAD file, or check an existing dataset folder (help: _BUILD_HELP)."""
    from diffembed.errors import DataFileError, InputError

    if kind is not None and kind not in KINDS:
        raise InputError(f"unknown --kind '{kind}'; choose retrieval or contextual")
    if source.is_dir():
        summary = _existing_dataset(source, out, kind, split, max_articles is not None or max_questions is not None)
    else:
        from diffembed.eval.builders import build_squad_contextual, build_squad_retrieval, load_squad

        if not source.exists():
            raise DataFileError(f"missing file {source}")
        if out is None:
            raise InputError("--out is required to build from a QA file")
        if kind is None:
            raise InputError("--kind is required to build from a QA file: retrieval or contextual")
        squad = load_squad(source)  # fail on a bad file before loading a tokenizer
        if kind == "retrieval":
            result = build_squad_retrieval(squad, out, max_articles=max_articles, max_questions=max_questions,
                                           split=split)
        else:
            tok, tok_name = _load_tokenizer(tokenizer)
            result = build_squad_contextual(squad, out, tok, chunk_tokens=chunk_tokens, max_articles=max_articles,
                                            max_questions=max_questions, gold=gold, split=split,
                                            tokenizer_name=tok_name)
        summary = {"built": True, **result.to_dict(), "source": str(source)}

    if as_json:
        print_json(summary)
        return
    counts = f"{summary['documents']} documents"
    if "chunks" in summary:
        counts += f", {summary['chunks']} chunks"
    counts += f", {summary['queries']} queries, {summary['qrels']} qrels"
    verb = "Built" if summary["built"] else "Read (as it is)"
    typer.echo(f"{verb} {summary['kind']} dataset {summary['out_dir']}: {counts}")
    for key, value in summary.get("stats", {}).items():
        typer.echo(f"  {key}: {value}")


# Source folders and output shared by `data pairs` and `data contextual` (one definition each).
_PYTHON_DOC = typer.Option(None, "--python-doc", help="Python reST sources (default "
                                                      "/usr/share/doc/python3.11/html/_sources).")
_LINUX_DOC = typer.Option(None, "--linux-doc", help="Kernel reST sources (default "
                                                    "/usr/share/doc/linux-doc-6.1/Documentation).")
_MAN_DIR = typer.Option(None, "--man-dir", help="Read man pages from DIR/man*/ instead of the manpages and "
                                                "manpages-dev packages; repeatable.")
_SUMMARY_JSON = typer.Option(False, "--json", help="Also print the summary as JSON on stdout.")


_PAIRS_HELP = (
    "Build training pairs (query -> positive) from real text on this machine, deduplicated, with a "
    "hash-split dev set.\n\n"
    "Sources: apt (Debian package synopsis -> long description, from apt's Translation-en lists), "
    "python-doc (python3.11-doc: 'Page: Heading' -> section text), linux-doc (linux-doc-6.1, the same), "
    "man (NAME description -> DESCRIPTION, from the manpages and manpages-dev packages).\n\n"
    "OUT gets train.jsonl and dev.jsonl (id, source, query, positive, optional negatives, origin), "
    "dev-beir/ (the dev pairs as a BEIR dataset for `diffembed eval`) and build.json (settings, counts). "
    "Reserved for evaluation and refused: SQuAD/KorQuAD, python3.11-doc's faq/, LibreOffice help."
)


def _counts_table(summary: dict) -> list[str]:
    lines = [f"{'source':<11} {'candidates':>10} {'kept':>7} {'train':>7} {'dev':>6} {'truncated':>9}  dropped / skipped"]
    for name, c in summary["sources"].items():
        notes = ", ".join(f"{k} {v}" for k, v in {**c["dropped"], **c["skipped"]}.items()) or "-"
        lines.append(f"{name:<11} {c['candidates']:>10} {c['kept']:>7} {c['train']:>7} {c['dev']:>6} "
                     f"{c['truncated']:>9}  {notes}")
    return lines


@data_app.command(help=_PAIRS_HELP)
def pairs(
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (replaced whole; only an earlier pairs build "
                                                     "or an empty folder is accepted)."),
    source: list[str] = typer.Option(None, "--source", "-s", help="apt, python-doc, linux-doc or man; repeat for "
                                                                  "several (default: all four)."),
    dev_fraction: float = typer.Option(0.02, "--dev-fraction", help="Share of documents (pages, description "
                                                                   "families, man pages) held out as dev, by blake2b hash."),
    max_per_source: int = typer.Option(None, "--max-per-source", help="Keep at most N pairs per source (a fixed "
                                                                      "hash-ordered sample)."),
    page_negatives: int = typer.Option(0, "--page-negatives", help="python-doc/linux-doc: up to N other sections of "
                                                                   "the same page as each pair's negatives."),
    min_query_chars: int = typer.Option(8, "--min-query-chars"),
    max_query_chars: int = typer.Option(300, "--max-query-chars"),
    min_positive_chars: int = typer.Option(80, "--min-positive-chars"),
    max_positive_chars: int = typer.Option(2000, "--max-positive-chars", help="Longer positives are cut at a "
                                                                              "sentence end."),
    apt_lists: Path = typer.Option(None, "--apt-lists", help="apt lists folder (default /var/lib/apt/lists)."),
    python_doc: Path = _PYTHON_DOC,
    linux_doc: Path = _LINUX_DOC,
    man_dir: list[Path] = _MAN_DIR,
    as_json: bool = _SUMMARY_JSON,
) -> None:
    """Build training pairs (help: _PAIRS_HELP); counts go to stderr, and to stdout with --json."""
    from diffembed.cli.common import err_console
    from diffembed.training.data import SOURCES, build_pairs
    from diffembed.training.data.pairs import Limits

    limits = Limits(min_query_chars, max_query_chars, min_positive_chars, max_positive_chars)
    result = build_pairs(out, source or SOURCES, limits=limits, dev_fraction=dev_fraction,
                         max_per_source=max_per_source, page_negatives=page_negatives, apt_lists=apt_lists,
                         python_doc=python_doc, linux_doc=linux_doc, man_dirs=man_dir or None)
    summary = result.to_dict()
    for line in _counts_table(summary):
        err_console.print(line, highlight=False, soft_wrap=True)
    err_console.print(f"Wrote {summary['train']} train and {summary['dev']} dev pairs to {summary['out_dir']}"
                      + (f" (BEIR dev set: {summary['dev_beir']})" if summary["dev_beir"] else ""),
                      highlight=False, soft_wrap=True)
    if as_json:
        print_json(summary)


_CONTEXTUAL_HELP = (
    "Build contextual training documents from real multi-section pages on this machine: each page's "
    "sections (headings removed, in order) are its chunks, and each section's query is 'Page title: "
    "Heading' (man: 'name(section): HEADING'), which only the document's context ties to its chunk.\n\n"
    "Sources: python-doc (python3.11-doc, faq/ excluded), linux-doc (linux-doc-6.1), man (manpages, "
    "manpages-dev). A section over --max-chunk-chars is cut at paragraph boundaries into several chunks "
    "and its query points at the first; pages with fewer than 2 usable sections are dropped.\n\n"
    "OUT gets train.jsonl and dev.jsonl (id, source, title, chunks, queries [{query, chunk}]), "
    "dev-contextual/ (the dev documents as a contextual dataset for `diffembed eval --mode both`) and "
    "build.json. Reserved for evaluation and refused: SQuAD/KorQuAD, python3.11-doc's faq/, LibreOffice help."
)


@data_app.command(help=_CONTEXTUAL_HELP)
def contextual(
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (replaced whole; only an earlier contextual "
                                                     "build or an empty folder is accepted)."),
    source: list[str] = typer.Option(None, "--source", "-s", help="python-doc, linux-doc or man; repeat for "
                                                                  "several (default: all three)."),
    dev_fraction: float = typer.Option(0.02, "--dev-fraction", help="Share of documents held out as dev, by "
                                                                   "blake2b hash of the page (the same pages as "
                                                                   "`data pairs`)."),
    min_chunk_chars: int = typer.Option(80, "--min-chunk-chars", help="Shorter sections are dropped."),
    max_chunk_chars: int = typer.Option(1500, "--max-chunk-chars", help="Longer sections are cut into several "
                                                                        "chunks at paragraph boundaries."),
    min_query_chars: int = typer.Option(8, "--min-query-chars"),
    max_query_chars: int = typer.Option(300, "--max-query-chars"),
    python_doc: Path = _PYTHON_DOC,
    linux_doc: Path = _LINUX_DOC,
    man_dir: list[Path] = _MAN_DIR,
    as_json: bool = _SUMMARY_JSON,
) -> None:
    """Build contextual training documents (help: _CONTEXTUAL_HELP); counts go to stderr, and to stdout with --json."""
    from diffembed.cli.common import err_console
    from diffembed.training.data.contextual import SOURCES, Limits, build_contextual

    limits = Limits(min_chunk_chars, max_chunk_chars, min_query_chars, max_query_chars)
    result = build_contextual(out, source or SOURCES, limits=limits, dev_fraction=dev_fraction,
                              python_doc=python_doc, linux_doc=linux_doc, man_dirs=man_dir or None)
    summary = result.to_dict()
    err_console.print(f"{'source':<11} {'pages':>6} {'documents':>9} {'train':>6} {'dev':>5} {'chunks':>7} "
                      f"{'queries':>7}  dropped / skipped", highlight=False, soft_wrap=True)
    for name, c in summary["sources"].items():
        notes = ", ".join(f"{k} {v}" for k, v in {**c["dropped"], **c["skipped"]}.items()) or "-"
        err_console.print(f"{name:<11} {c['pages']:>6} {c['documents']:>9} {c['train']:>6} {c['dev']:>5} "
                          f"{c['chunks']:>7} {c['queries']:>7}  {notes}", highlight=False, soft_wrap=True)
    err_console.print(f"Wrote {summary['train']} train and {summary['dev']} dev documents to {summary['out_dir']}"
                      + (f" (contextual dev set: {summary['dev_contextual']})" if summary["dev_contextual"] else ""),
                      highlight=False, soft_wrap=True)
    if as_json:
        print_json(summary)


_SUBSET_HELP = (
    "Write a smaller copy of the dataset folder SOURCE to OUT: --documents of its documents (BEIR corpus rows, "
    "or whole contextual documents with all their chunks) and every query whose judged documents were all "
    "kept. The first N in file order, or a seeded sample with --seed. Use it when embedding the whole corpus "
    "does not fit the time you have: --max-queries alone still embeds every document."
)


@data_app.command(help=_SUBSET_HELP)
def subset(
    source: Path = typer.Argument(..., help="A BEIR (corpus.jsonl) or contextual (documents.jsonl) dataset folder."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (an earlier dataset folder or an empty one "
                                                     "is replaced whole)."),
    documents: int = typer.Option(..., "--documents", "-n", help="How many documents to keep."),
    seed: int = typer.Option(None, "--seed", help="Keep a seeded random sample instead of the first N."),
    split: str = typer.Option("test", "--split", help="qrels split name (qrels/SPLIT.tsv)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Write a subset of an evaluation dataset (help: _SUBSET_HELP)."""
    from diffembed.eval.subset import subset_dataset

    result = subset_dataset(source, out, documents, seed=seed, split=split).to_dict()
    if as_json:
        print_json(result)
        return
    typer.echo(f"Wrote {result['kind']} subset {result['out_dir']}: {result['documents']} of "
               f"{result['source_documents']} documents, {result['queries']} of {result['source_queries']} "
               f"queries, {result['qrels']} qrels")
