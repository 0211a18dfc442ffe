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
    tokenizer: str = typer.Option(None, "--tokenizer", help="Contextual: model folder or hub id whose tokenizer "
                                                           "counts chunk tokens (default: packaged all-MiniLM-L6-v2)."),
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
