"""Hard-negative mining for the triplet stage (`diffembed mine`).

Each query's nearest corpus texts, embedded by diffembed's own runtime (the vectors the model
serves) and searched exactly with faiss, become its negatives once the false negatives are gone.
The selection follows sentence-transformers' ``util.mine_hard_negatives`` (6.2, ``use_faiss=True``,
``sampling_strategy="top"``) so the two mine the same texts for the same model and settings:

- The corpus is the extra corpus texts, then the pairs' positives, de-duplicated by exact text
  (so a candidate whose text equals a positive *is* that positive). Queries are de-duplicated
  too; a query's positives are the positives of all its rows.
- The search returns ``range_max + (most positives of one query)`` hits. The query's positives
  are removed, then every candidate above the margin line: ``score + margin > positive`` for the
  absolute margin, ``score > positive - |positive| * margin`` for the relative one, where
  ``positive`` is the query's lowest-scoring positive.
- Ranks count among the candidates that are left: candidates ``[range_min, range_max)`` of that
  list, and the first ``count`` of them are the negatives. Rows with fewer are kept with fewer.

Where diffembed differs: a row's existing negatives stay first and are never mined again (the
row then gains ``count`` new ones, where sentence-transformers knows of no existing negatives);
rows with fewer than ``count`` are kept (its ``n-tuple`` output drops them); prompts are the
model's own ``query`` and ``document``/``passage`` ones, as ``diffembed eval`` uses.

Embeddings are cached in shards under a key of (model files, runtime settings, prompt, texts), so a
second run with the same model and corpus reads the corpus vectors instead of embedding them, and a
run killed part-way resumes from the last finished shard.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from diffembed.atomic import write_files, write_text
from diffembed.errors import DataFileError, InputError
from diffembed.jsonl import read_jsonl

MARGIN_KINDS = ("absolute", "relative", "none")
CACHE_FORMAT = 1
SHARD_TEXTS = 4096  # texts per cache shard: a killed run loses at most one shard of work
SEARCH_BATCH = 1024  # queries per faiss search call (progress granularity)


@dataclass(frozen=True)
class MineSettings:
    range_min: int = 10
    range_max: int = 100
    margin: float = 0.05
    margin_kind: str = "relative"
    count: int = 4

    def check(self) -> MineSettings:
        """Reject settings that cannot mine anything, with sentence-transformers' own conditions."""
        for name in ("range_min", "range_max", "count"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise InputError(f"{name} must be an integer, got {value!r}")
        if self.range_min < 0:
            raise InputError(f"range_min must be 0 or more, got {self.range_min}")
        if self.range_max <= self.range_min:
            raise InputError(f"range_max ({self.range_max}) must be larger than range_min ({self.range_min})")
        if self.count < 1:
            raise InputError(f"count must be at least 1, got {self.count}")
        if self.count > self.range_max - self.range_min:
            raise InputError(f"count {self.count} does not fit in ranks [{self.range_min}, {self.range_max}): "
                             f"only {self.range_max - self.range_min} candidates; lower count or widen the range")
        if self.margin_kind not in MARGIN_KINDS:
            raise InputError(f"unknown margin kind '{self.margin_kind}'; choose absolute, relative or none")
        if not isinstance(self.margin, (int, float)) or not math.isfinite(self.margin) or self.margin < 0:
            raise InputError(f"margin must be a finite number >= 0, got {self.margin!r}")
        return self


# --------------------------------------------------------------------------- selection (pure)
@dataclass
class Selection:
    """Per unique query: corpus ids of ranks [range_min, range_max) among the surviving candidates."""

    windows: list[list[int]]
    dropped_margin: int = 0
    dropped_positive: int = 0


def select_candidates(scores: np.ndarray, ids: np.ndarray, positives: Sequence[Sequence[int]],
                      positive_scores: np.ndarray, settings: MineSettings) -> Selection:
    """Filter faiss hits ((q, k) scores and ids, best first, id -1 for none) as described above.

    The margin comparisons are sentence-transformers' float32 expressions, term for term, so a
    candidate on the line is kept or dropped exactly as there.
    """
    scores = np.asarray(scores, dtype=np.float32)
    ids = np.asarray(ids)
    margin = np.float32(settings.margin)
    out = Selection(windows=[])
    for q in range(scores.shape[0]):
        row_s, row_i = scores[q], ids[q]
        keep = row_i >= 0
        is_pos = np.isin(row_i, np.asarray(list(positives[q]), dtype=row_i.dtype)) & keep
        out.dropped_positive += int(is_pos.sum())
        keep &= ~is_pos
        pos = np.float32(positive_scores[q])
        if settings.margin_kind == "absolute":
            over = row_s + margin > pos
        elif settings.margin_kind == "relative":
            over = row_s > pos - np.abs(pos) * margin
        else:
            over = np.zeros_like(keep)
        over &= keep
        out.dropped_margin += int(over.sum())
        keep &= ~over
        survivors = row_i[keep]
        out.windows.append([int(i) for i in survivors[settings.range_min : settings.range_max]])
    return out


def search(corpus: np.ndarray, queries: np.ndarray, k: int, *, progress: bool | None = None):
    """Exact inner-product top-k (faiss IndexFlatIP over normalised float32 vectors)."""
    from diffembed.extras import require

    faiss = require("faiss", "train", "hard-negative mining")
    index = faiss.IndexFlatIP(corpus.shape[1])
    index.add(np.ascontiguousarray(corpus, dtype=np.float32))
    k = min(k, corpus.shape[0])
    scores = np.empty((len(queries), k), dtype=np.float32)
    ids = np.empty((len(queries), k), dtype=np.int64)
    with tqdm(total=len(queries), desc="search", unit="query", disable=_no_bar(progress), leave=False) as bar:
        for start in range(0, len(queries), SEARCH_BATCH):
            chunk = np.ascontiguousarray(queries[start : start + SEARCH_BATCH], dtype=np.float32)
            scores[start : start + len(chunk)], ids[start : start + len(chunk)] = index.search(chunk, k)
            bar.update(len(chunk))
    return scores, ids


def _no_bar(progress: bool | None) -> bool | None:
    return None if progress is None else not progress  # tqdm: None = only on a terminal


# --------------------------------------------------------------------------- embedding + cache
class RuntimeEncoder:
    """Embeds through diffembed's ``Embedder`` (normalised float32), with prompts as ``diffembed eval``
    uses them, and names the model for the cache."""

    def __init__(self, embedder):
        self.embedder = embedder
        prompts = embedder.prompts
        self.prompts = {"query": prompts.get("query"),
                        "corpus": prompts.get("document", prompts.get("passage"))}

    def __call__(self, texts: list[str], kind: str) -> np.ndarray:
        return self.embedder.encode(texts, prompt=self.prompts[kind], precision="float32", normalize=True,
                                    show_progress=False)

    def identity(self) -> dict:
        """What decides the vectors: the model folder's files (name, size, mtime) and the runtime's
        settings. Any rewrite of the weights changes an mtime, so a retrained model never reuses
        the vectors of its previous version."""
        info = self.embedder.info()
        root = Path(self.embedder.loaded.spec.path).resolve()
        files = []
        for f in sorted(root.rglob("*")):
            rel = f.relative_to(root)
            if any(part.startswith(".") for part in rel.parts) or not f.is_file():
                continue
            st = f.stat()
            files.append([rel.as_posix(), st.st_size, st.st_mtime_ns])
        keep = ("layout", "model_type", "dim", "max_length", "bidirectional", "pooling", "dtype")
        return {"path": str(root), "files": files, **{k: info[k] for k in keep}}


def texts_digest(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


@dataclass
class EmbedStats:
    texts: int = 0
    embedded: int = 0
    cached: int = 0
    folder: str = ""


def cached_embed(encoder, texts: list[str], kind: str, cache_dir: Path, *,
                 progress: bool | None = None) -> tuple[np.ndarray, EmbedStats]:
    """Vectors of ``texts`` from ``cache_dir``, embedding (and storing, shard by shard) what is missing."""
    key_src = {"format": CACHE_FORMAT, "shard": SHARD_TEXTS, "kind": kind, "model": encoder.identity(),
               "prompt": encoder.prompts.get(kind), "texts": texts_digest(texts), "n": len(texts)}
    key = hashlib.sha256(json.dumps(key_src, sort_keys=True).encode()).hexdigest()[:24]
    folder = Path(cache_dir) / f"{kind}-{key}"
    meta = folder / "meta.json"
    if not meta.is_file():
        write_text(meta, json.dumps({**key_src, "model": {k: v for k, v in key_src["model"].items() if k != "files"}},
                                    indent=1) + "\n")
    stats = EmbedStats(texts=len(texts), folder=str(folder))
    parts: list[np.ndarray] = []
    dim = None
    with tqdm(total=len(texts), desc=f"embed {kind}", unit="text", disable=_no_bar(progress), leave=False) as bar:
        for n, start in enumerate(range(0, len(texts), SHARD_TEXTS)):
            chunk = texts[start : start + SHARD_TEXTS]
            path = folder / f"shard-{n:05d}.npy"
            arr = _read_shard(path, len(chunk), dim)
            if arr is None:
                arr = np.ascontiguousarray(encoder(chunk, kind), dtype=np.float32)
                if arr.shape[0] != len(chunk) or not np.isfinite(arr).all():
                    raise InputError(f"the model gave {arr.shape[0]} finite vectors for {len(chunk)} {kind} texts")
                write_files({path: lambda tmp, a=arr: _save_npy(tmp, a)})
                stats.embedded += len(chunk)
            else:
                stats.cached += len(chunk)
            dim = arr.shape[1]
            parts.append(arr)
            bar.update(len(chunk))
    return (np.concatenate(parts) if parts else np.empty((0, 0), np.float32)), stats


def _save_npy(tmp: str, arr: np.ndarray) -> None:
    with open(tmp, "wb") as f:
        np.save(f, arr, allow_pickle=False)


def _read_shard(path: Path, rows: int, dim: int | None) -> np.ndarray | None:
    """A finished shard of the right shape, or None (missing or damaged: it is embedded again)."""
    if not path.is_file():
        return None
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    if arr.dtype != np.float32 or arr.ndim != 2 or arr.shape[0] != rows or (dim is not None and arr.shape[1] != dim):
        return None
    return arr


# --------------------------------------------------------------------------- files
def read_pair_rows(path: str | Path) -> list[dict]:
    """Rows of a pairs file as they are (extra fields kept), checked as ``diffembed train`` checks them."""
    rows = []
    for n, rec in read_jsonl(path):
        where = f"{path}:{n}"
        query, positive = rec.get("query"), rec.get("positive")
        if not isinstance(query, str) or not query.strip() or not isinstance(positive, str) or not positive.strip():
            raise DataFileError(f"{where}: 'query' and 'positive' must be non-empty strings")
        negs = rec.get("negatives")
        if negs is not None and (not isinstance(negs, list) or not all(isinstance(x, str) and x.strip() for x in negs)):
            raise DataFileError(f"{where}: 'negatives' must be a list of non-empty strings")
        rows.append(rec)
    if not rows:
        raise DataFileError(f"no pairs in {path}")
    return rows


def read_corpus_file(path: str | Path) -> list[str]:
    """Extra candidate texts: jsonl (``text``, with ``title`` in front as ``diffembed eval`` joins
    BEIR corpora) or plain text, one text per line. Blank texts are skipped."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
        texts = []
        for n, rec in read_jsonl(path):
            text, title = rec.get("text"), rec.get("title") or ""
            if not isinstance(text, str) or not isinstance(title, str):
                raise DataFileError(f"{path}:{n}: 'text' (and 'title', if present) must be strings")
            joined = f"{title} {text}".strip() if title.strip() else text
            if joined.strip():
                texts.append(joined)
        return texts
    if not path.is_file():
        raise DataFileError(f"missing file {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataFileError(f"{path} is not valid UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    return [line for line in lines if line.strip()]


def default_cache_dir(out: str | Path) -> Path:
    out = Path(out)
    return out.parent / f".{out.name}.cache"


# --------------------------------------------------------------------------- the whole run
@dataclass
class MineResult:
    out: str
    rows: int
    queries: int
    corpus: int
    full: int
    fewer: int
    none: int
    mined: int
    dropped_margin: int
    settings: dict
    corpus_embedding: dict = field(default_factory=dict)
    query_embedding: dict = field(default_factory=dict)
    cache_dir: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def mine_file(pairs: str | Path, out: str | Path, encoder, settings: MineSettings, *,
              corpus_files: Sequence[str | Path] = (), cache_dir: str | Path | None = None,
              progress: bool | None = None, log: Callable[[str], None] | None = None) -> MineResult:
    """Read PAIRS, mine negatives with ``encoder`` (a ``RuntimeEncoder`` or any object with the same
    ``__call__``/``identity``/``prompts``), and write OUT atomically: every row, in order, with the
    mined texts appended to its ``negatives``."""
    settings.check()
    rows = read_pair_rows(pairs)
    extra: list[str] = []
    for f in corpus_files:
        extra.extend(read_corpus_file(f))
    corpus = list(dict.fromkeys(extra + [r["positive"] for r in rows]))
    corpus_idx = {t: i for i, t in enumerate(corpus)}
    queries = list(dict.fromkeys(r["query"] for r in rows))
    query_idx = {t: i for i, t in enumerate(queries)}
    positives: list[list[int]] = [[] for _ in queries]
    for r in rows:
        p = corpus_idx[r["positive"]]
        if p not in positives[query_idx[r["query"]]]:
            positives[query_idx[r["query"]]].append(p)

    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir(out)
    if log:
        log(f"{len(rows)} rows, {len(queries)} unique queries, {len(corpus)} corpus texts; cache {cache}")
    corpus_vecs, c_stats = cached_embed(encoder, corpus, "corpus", cache, progress=progress)
    query_vecs, q_stats = cached_embed(encoder, queries, "query", cache, progress=progress)

    # Search depth as sentence-transformers sets it: range_max plus the most rows one query has.
    most = max(Counter(r["query"] for r in rows).values())
    scores, ids = search(corpus_vecs, query_vecs, settings.range_max + most, progress=progress)
    # The positive's score as the line for the margin: the query's lowest-scoring positive.
    pos_scores = np.array([min(float(np.dot(query_vecs[q], corpus_vecs[p])) for p in ps)
                           for q, ps in enumerate(positives)], dtype=np.float32)
    sel = select_candidates(scores, ids, positives, pos_scores, settings)

    out_rows, full, fewer, none, mined = [], 0, 0, 0, 0
    for r in rows:
        existing = list(dict.fromkeys(r.get("negatives") or []))
        have = set(existing)
        new = []
        for i in sel.windows[query_idx[r["query"]]]:
            text = corpus[i]
            if text in have:
                continue
            new.append(text)
            have.add(text)
            if len(new) == settings.count:
                break
        mined += len(new)
        full += len(new) == settings.count
        fewer += len(new) < settings.count
        none += not new
        out_rows.append(json.dumps({**r, "negatives": existing + new}, ensure_ascii=False) + "\n")
    write_text(out, out_rows)
    return MineResult(out=str(out), rows=len(rows), queries=len(queries), corpus=len(corpus), full=full,
                      fewer=fewer, none=none, mined=mined, dropped_margin=sel.dropped_margin,
                      settings=asdict(settings), corpus_embedding=asdict(c_stats), query_embedding=asdict(q_stats),
                      cache_dir=str(cache))
