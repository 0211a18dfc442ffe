"""A smaller copy of an evaluation dataset, for evaluations that must fit a CPU budget.

`--max-queries` alone does not make an evaluation cheaper: the whole corpus is still embedded, and on
a 135M decoder on 2 cores that is most of the cost. A subset keeps whole documents (a contextual
document keeps all its chunks, so late chunking sees the same context as in the full set) and only the
queries whose every judged document was kept, so no query loses its answer.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from diffembed.errors import InputError
from diffembed.eval.datasets import (ContextualDataset, RetrievalDataset, chunk_id, load_dataset,
                                     write_contextual_dataset, write_retrieval_dataset)


@dataclass
class SubsetResult:
    kind: str
    out_dir: str
    documents: int
    queries: int
    qrels: int
    source_documents: int
    source_queries: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _pick(ids: list[str], count: int, seed: int | None) -> list[str]:
    """The first `count` ids in file order, or a seeded sample kept in file order."""
    if seed is None:
        return ids[:count]
    chosen = set(random.Random(seed).sample(ids, min(count, len(ids))))
    return [i for i in ids if i in chosen]


def subset_dataset(source: str | Path, out: str | Path, documents: int, seed: int | None = None,
                   split: str = "test") -> SubsetResult:
    """Write the subset of SOURCE holding `documents` of its documents (BEIR corpus rows or contextual
    documents) to OUT, with every query whose judged documents all survive."""
    if documents <= 0:
        raise InputError(f"--documents must be positive, got {documents}")
    source, out = Path(source), Path(out)
    if out.resolve() == source.resolve():
        raise InputError(f"--out {out} is the source dataset itself; write the subset to another folder")
    ds = load_dataset(source, split=split)
    if isinstance(ds, ContextualDataset):
        kept_docs = _pick(list(ds.documents), documents, seed)
        kept_units = {chunk_id(d, i) for d in kept_docs for i in range(len(ds.documents[d]["chunks"]))}
    else:
        assert isinstance(ds, RetrievalDataset)
        kept_docs = _pick(list(ds.corpus), documents, seed)
        kept_units = set(kept_docs)
    qrels = {q: judged for q, judged in ds.qrels.items()
             if q in ds.queries and any(s > 0 for s in judged.values()) and set(judged) <= kept_units}
    if not qrels:
        raise InputError(f"no query of {source} has all its judged documents among the {len(kept_docs)} kept; "
                         "keep more documents")
    queries = {q: t for q, t in ds.queries.items() if q in qrels}
    _check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:  # built aside and swapped in whole, so a crash leaves the old folder or none, never a mix
        if isinstance(ds, ContextualDataset):
            write_contextual_dataset(tmp, {d: ds.documents[d] for d in kept_docs}, queries, qrels, split=split)
            n_source_docs = len(ds.documents)
        else:
            write_retrieval_dataset(tmp, {d: ds.corpus[d] for d in kept_docs}, queries, qrels, split=split)
            n_source_docs = len(ds.corpus)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return SubsetResult(ds.kind, str(out), len(kept_docs), len(queries), sum(len(v) for v in qrels.values()),
                        n_source_docs, len(ds.queries))


def _check_replaceable(out: Path) -> None:
    """Only an empty folder or an earlier dataset folder is replaced; anything else is left alone."""
    if not out.exists():
        return
    if not out.is_dir():
        raise InputError(f"--out {out} is a file, not a folder")
    if any(out.iterdir()) and not (out / "queries.jsonl").exists():
        raise InputError(f"--out {out} is a non-empty folder that holds no dataset; it is not replaced")
