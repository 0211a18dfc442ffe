"""`diffembed index add|rm|info` and `diffembed search`: the embedded index from the command line."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

from diffembed.cli.common import DeviceOpt, DtypeOpt, err_console, print_json
from diffembed.errors import IndexStoreError
from diffembed.extras import require_extra

index_app = typer.Typer(
    help="Build and maintain an on-disk index of document chunks, embedded alone or late-chunked (SQLite + faiss binary).",
    no_args_is_help=True,
)

IndexOpt = typer.Option(..., "--index", "-i", help="Index folder (created by the first 'index add').")


@contextmanager
def index_errors(index: Path) -> Iterator[None]:
    """SQLite and file-system failures (disk full, read-only, locked) as one-line errors, not tracebacks."""
    try:
        yield
    except sqlite3.Error as exc:
        raise IndexStoreError(f"index {index}: {exc}") from exc
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise IndexStoreError(f"index {index}: {exc.strerror or exc}{where}") from exc


@index_app.command()
def add(
    paths: list[Path] = typer.Argument(..., help="Files or folders: .txt .md .rst .html .jsonl (_id/text per line)."),
    index: Path = IndexOpt,
    model: str = typer.Option(None, "--model", "-m", help="Model for a new index (default: packaged all-MiniLM-L6-v2); "
                              "an existing index uses its own and refuses a different one."),
    mode: str = typer.Option(None, help="naive (each chunk embedded alone, the default) or late (chunks pooled from one "
                             "pass over the whole document). Fixed when the index is created."),
    chunk_tokens: int = typer.Option(None, help="Tokens per chunk for a new index (default: a quarter of the model window, at most 256)."),
    batch_docs: int = typer.Option(16, help="Documents per transaction: a kill loses at most this batch."),
    batch_tokens: int = typer.Option(None, help="Padded-token budget per forward batch."),
    prune: bool = typer.Option(False, "--prune", help="Also remove the documents of files no longer in the given "
                               "folders (deleted since an earlier add), so the index mirrors them."),
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
) -> None:
    """Add or update documents. Unchanged documents (same text hash) are skipped; changed ones are replaced."""
    from diffembed.errors import DataFileError, InputError
    from diffembed.index import add_paths, open_for_adding
    from diffembed.index.ingest import check_add_options
    from diffembed.index.sources import collect_files

    # everything that can fail without the model fails before it loads and before anything is created
    check_add_options(mode=mode, chunk_tokens=chunk_tokens, batch_docs=batch_docs)
    collect_files(paths)
    if prune and not any(Path(p).is_dir() for p in paths):
        raise InputError("--prune needs a folder among the paths: it removes the documents of files deleted from it")
    with index_errors(index):
        store, settings, embedder = open_for_adding(index, model=model, mode=mode, chunk_tokens=chunk_tokens,
                                                    device=device, dtype=dtype, batch_tokens=batch_tokens)
        report = add_paths(store, settings, embedder, paths, batch_docs=batch_docs, prune=prune)
        if not store.exists:  # a new index that would hold nothing is not created
            skipped = f"; skipped {', '.join(report.skipped_files)}" if report.skipped_files else ""
            raise DataFileError(f"no document with text to add ({report.empty} empty{skipped}); "
                                f"{index} was not created")
        docs, chunks = store.counts()
    summary = {**report.to_dict(), "index": str(index), "index_documents": docs, "index_chunks": chunks}
    if as_json:
        print_json(summary)
        return
    rate = f" ({summary['documents_per_second']:.1f} docs/s)" if summary["documents_per_second"] else ""
    err_console.print(
        f"{report.documents} documents in {report.seconds:.1f}s{rate}: {report.added} added, {report.updated} updated, "
        f"{report.unchanged} unchanged, {report.empty} empty, {report.removed} removed; {report.chunks} chunks written. "
        f"Index now holds {docs} documents, {chunks} chunks."
    )
    for skipped in report.skipped_files:
        err_console.print(f"[yellow]skipped[/] {skipped}", highlight=False)


@index_app.command()
def rm(
    doc_ids: list[str] = typer.Argument(..., help="Document ids to remove (as 'diffembed search' prints them), or the "
                                        "paths of the files they were read from."),
    index: Path = IndexOpt,
) -> None:
    """Remove documents and their chunks. All or nothing: an unknown id removes nothing."""
    from diffembed.index import IndexStore
    from diffembed.index.sources import doc_id_for

    with index_errors(index):
        store = IndexStore(index)
        root = store.get_meta("files_root")
        # an argument that is not an id may be a file's path (even of a deleted file): name it as add does
        as_paths = {d: doc_id_for(d, root) for d in doc_ids} if root else {}
        known = store.content_hashes([*doc_ids, *as_paths.values()])
        doc_ids = [as_paths[d] if d not in known and as_paths.get(d) in known else d for d in doc_ids]
        store.remove_documents(list(dict.fromkeys(doc_ids)))
        docs, chunks = store.counts()
    err_console.print(f"Removed {len(doc_ids)} documents. Index now holds {docs} documents, {chunks} chunks.")


@index_app.command()
def info(index: Path = IndexOpt) -> None:
    """Print an index's settings, counts and storage per vector as JSON."""
    from diffembed.index import IndexStore
    from diffembed.index.settings import load_settings

    with index_errors(index):
        store = IndexStore(index)
        settings = load_settings(store)
        docs, chunks = store.counts()
        generation = store.generation
    print_json({
        "index": str(index), "documents": docs, "chunks": chunks, "generation": generation,
        "settings": settings.summary(),
        "bytes_per_vector": {"first_pass_bits_in_memory": settings.n_bytes, "int8_on_disk": settings.dim,
                             "float32_equivalent": 4 * settings.dim},
        "disk_bytes": sum(p.stat().st_size for p in Path(index).rglob("*") if p.is_file()),
    })


def search(
    query: str = typer.Argument(..., help="What to look for."),
    index: Path = IndexOpt,
    k: int = typer.Option(10, "-k", help="How many chunks to return."),
    mode: str = typer.Option("dense", help="dense (binary first pass + int8 rescoring), bm25, or hybrid (both, fused by reciprocal rank)."),
    model: str = typer.Option(None, "--model", "-m", help="Query model (default: the one the index was built with; another is refused)."),
    rescore: int = typer.Option(40, help="Dense candidates per result taken from the binary pass for int8 rescoring "
                                "(at least 100 in all; 40 x 10 gave recall@10 0.986 vs exact float, BENCHMARKS.md)."),
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    as_json: bool = typer.Option(False, "--json", help="Print hits as JSON (full chunk text)."),
) -> None:
    """Search an index and print ranked chunks with document id, span, score and a snippet."""
    require_extra("index", "diffembed search")
    from diffembed.index import Searcher

    with index_errors(index):
        searcher = Searcher(index, model=model, device=device, dtype=dtype, rescore=rescore)
        hits = searcher.search(query, k=k, mode=mode)
    if as_json:
        print_json({"query": query, "mode": mode, "model": searcher.embedder.loaded.name,
                    "hits": [h.to_dict() for h in hits]})
        return
    if not hits:
        err_console.print("no results")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(show_lines=False, title=f"{mode} search: {query}", title_justify="left")
    for col, kw in (("#", {"justify": "right"}), ("score", {"justify": "right"}), ("document", {}),
                    ("chunk", {"justify": "right"}), ("span", {}), ("snippet", {"overflow": "fold"})):
        table.add_column(col, **kw)
    for i, h in enumerate(hits, 1):
        table.add_row(str(i), f"{h.score:.4f}", h.doc_id, str(h.chunk_index), f"{h.start}-{h.end}", h.snippet())
    Console(width=None if Console().is_terminal else 160).print(table)
