"""`diffembed mine`: append mined hard negatives to a pairs file for the triplet stage."""

from __future__ import annotations

from pathlib import Path

import typer

from diffembed.cli.common import DeviceOpt, DtypeOpt, ModelOpt, err_console, print_json

_HELP = (
    "Mine hard negatives for every query of PAIRS (jsonl with query, positive, optional negatives) and "
    "write OUT: the same rows, in order, with the mined texts appended to 'negatives'.\n\n"
    "Candidates are the pairs' positives plus any --corpus texts, embedded by diffembed's runtime and "
    "searched exactly with faiss. A query's own positives are removed, then every candidate scoring above "
    "the margin line (absolute: score + margin > positive; relative: score > positive - |positive| * margin). "
    "Of the candidates left, ranks [--range-min, --range-max) are eligible and the first --count become "
    "negatives, as sentence-transformers' mine_hard_negatives does. Embeddings are cached per model and "
    "corpus in --cache-dir, so a second run (or a killed one) does not embed the corpus again."
)


def mine(
    pairs: Path = typer.Argument(..., help="Pairs jsonl (query, positive, optional negatives)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output jsonl (written atomically; may be PAIRS itself)."),
    corpus: list[Path] = typer.Option(None, "--corpus", help="Extra candidate texts: jsonl ('text', optional "
                                                             "'title') or txt (one per line); repeatable."),
    model: str = ModelOpt,
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    range_min: int = typer.Option(10, "--range-min", help="Skip this many best remaining candidates."),
    range_max: int = typer.Option(100, "--range-max", help="Look no further than this rank of remaining candidates."),
    margin: float = typer.Option(0.05, "--margin", help="False-negative margin below the positive's score."),
    margin_kind: str = typer.Option("relative", "--margin-kind", help="relative (of |positive score|), absolute, "
                                                                     "or none (no margin filtering)."),
    count: int = typer.Option(4, "--count", "-n", help="Negatives to mine per row."),
    batch_tokens: int = typer.Option(None, "--batch-tokens", help="Padded-token budget per forward batch "
                                                                  "(default: 2048 on CPU, 16384 on CUDA)."),
    max_length: int = typer.Option(None, "--max-length", help="Truncate texts to this many tokens (default: the "
                                                              "model's)."),
    cache_dir: Path = typer.Option(None, "--cache-dir", help="Embedding cache (default: .OUT.cache/ beside OUT)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    as_json: bool = typer.Option(False, "--json", help="Also print the summary as JSON on stdout."),
) -> None:
    """Mine hard negatives (help: _HELP); counts go to stderr, and to stdout with --json."""
    from diffembed import Embedder
    from diffembed.errors import DataFileError
    from diffembed.extras import require
    from diffembed.training.mining import MineSettings, RuntimeEncoder, mine_file, read_pair_rows

    settings = MineSettings(range_min=range_min, range_max=range_max, margin=margin, margin_kind=margin_kind,
                            count=count).check()
    for f in [pairs, *(corpus or [])]:
        if not f.is_file():
            raise DataFileError(f"missing file {f}")
    read_pair_rows(pairs)  # a bad pairs file fails before the model loads
    require("faiss", "train", "diffembed mine")
    embedder = Embedder(model, device=device, dtype=dtype, batch_tokens=batch_tokens, max_length=max_length)

    def log(line: str) -> None:
        if not quiet:
            err_console.print(line, highlight=False, soft_wrap=True)

    result = mine_file(pairs, out, RuntimeEncoder(embedder), settings, corpus_files=corpus or (),
                       cache_dir=cache_dir, progress=False if quiet else None, log=log)
    summary = {"model": embedder.loaded.name, **result.to_dict()}
    margin_text = "no margin" if margin_kind == "none" else f"the {margin_kind} margin {margin}"
    c = result.corpus_embedding
    err_console.print(
        f"Wrote {result.rows} rows ({result.queries} unique queries, {result.corpus} corpus texts) to {result.out}: "
        f"{result.full} with {count} negatives, {result.fewer} with fewer ({result.none} with none); "
        f"{result.dropped_margin} candidates dropped by {margin_text}; corpus vectors: {c['embedded']} embedded, "
        f"{c['cached']} from cache", highlight=False, soft_wrap=True)
    if as_json:
        print_json(summary)


mine.__doc__ = _HELP
