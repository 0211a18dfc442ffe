"""Training pairs from several sources: clean, length-limit, deduplicate, hash-split, write.

Every source yields ``RawPair`` rows in a deterministic order; ``build_pairs`` turns them into
``train.jsonl`` and ``dev.jsonl`` (``id``, ``source``, ``query``, ``positive``, optional
``negatives``, ``origin``) plus ``dev-beir/``, the dev pairs as a BEIR retrieval dataset that
``diffembed eval`` scores, and ``build.json`` (settings and counts). The folder is published in one
rename, so a crash leaves the previous build or the new one, never a mix.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from diffembed.errors import InputError

FORMAT_VERSION = 1


@dataclass
class RawPair:
    """One candidate pair as a source found it. ``doc_key`` decides the dev split: pairs sharing it
    (sections of one page, descriptions sharing a first paragraph) land on the same side, so no dev
    text is trained on as a near-copy or as a negative."""

    query: str
    positive: str
    doc_key: str
    origin: str
    negatives: list[str] = field(default_factory=list)


@dataclass
class Limits:
    """Character limits. A positive over ``max_positive_chars`` is cut at a sentence end (counted as
    truncated); anything else outside the limits is dropped and counted."""

    min_query_chars: int = 8
    max_query_chars: int = 300
    min_positive_chars: int = 80
    max_positive_chars: int = 2000

    def check(self) -> None:
        for name in ("min_query_chars", "max_query_chars", "min_positive_chars", "max_positive_chars"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1")
        if self.min_query_chars > self.max_query_chars:
            raise InputError("--min-query-chars is above --max-query-chars")
        if self.min_positive_chars > self.max_positive_chars:
            raise InputError("--min-positive-chars is above --max-positive-chars")


@dataclass
class Pair:
    id: str
    source: str
    query: str
    positive: str
    origin: str
    doc_key: str
    negatives: list[str] = field(default_factory=list)

    def row(self) -> dict:
        row = {"id": self.id, "source": self.source, "query": self.query, "positive": self.positive}
        if self.negatives:
            row["negatives"] = self.negatives
        row["origin"] = self.origin
        return row


# ------------------------------------------------------------------------------------------ text helpers
_SPACE = re.compile(r"[ \t\r\f\v\u00a0]+")
_NON_WORD = re.compile(r"[\W_]+")


def clean_space(text: str) -> str:
    """Collapse runs of spaces within lines and blank lines between them; strip the ends."""
    lines = [_SPACE.sub(" ", line).strip() for line in text.split("\n")]
    return "\n".join(line for line in lines if line)


def normalized(text: str) -> str:
    """The dedup key: NFKC, case-folded, every run of punctuation and space made one space."""
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def digest(text: str, size: int = 8) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=size).digest()


def is_dev(doc_key: str, fraction: float) -> bool:
    """The dev split: blake2b of the document key below ``fraction``, the same on every machine."""
    from diffembed.training.text_stream import is_heldout

    return is_heldout(doc_key, fraction)


_SENTENCE_END = re.compile(r"[.!?:;][\"')\]]*(?=\s)|\n")


def truncate(text: str, limit: int, floor: int) -> str:
    """``text`` cut to at most ``limit`` characters at the last sentence end or line break past
    ``floor``, else at the last space (never inside a word unless one word is the whole budget)."""
    if len(text) <= limit:
        return text
    head = text[: limit + 1]
    cut = None
    for m in _SENTENCE_END.finditer(head):
        if floor <= m.end() <= limit:
            cut = m.end()
    if cut is None:
        space = head.rfind(" ", 0, limit + 1)
        cut = space if space >= max(1, floor // 2) else limit
    return text[:cut].rstrip()


# ------------------------------------------------------------------------------------------ counting
DROP_REASONS = (
    "query_too_short", "query_too_long", "positive_too_short", "query_equals_positive",
    "duplicate_exact", "duplicate_normalized", "duplicate_positive", "ambiguous_query", "over_max_per_source",
)


@dataclass
class SourceCounts:
    """What happened to each candidate of one source. ``skipped`` counts what the source itself
    passed over before a pair existed (reserved files, man page aliases, missing descriptions ...)."""

    candidates: int = 0
    kept: int = 0
    train: int = 0
    dev: int = 0
    truncated: int = 0  # of the pairs past the per-pair rules (a later sample may drop some)
    dropped: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict:
        return {"candidates": self.candidates, "kept": self.kept, "train": self.train, "dev": self.dev,
                "truncated": self.truncated, "dropped": {k: self.dropped[k] for k in DROP_REASONS if self.dropped[k]},
                "skipped": dict(sorted(self.skipped.items()))}


# A source: name -> function(counts) yielding RawPair (it records its own skips in counts.skipped).
SourceFn = Callable[[SourceCounts], Iterable[RawPair]]


@dataclass
class BuildResult:
    out_dir: Path
    train: int
    dev: int
    sources: dict[str, SourceCounts]
    settings: dict

    def to_dict(self) -> dict:
        return {"out_dir": str(self.out_dir), "train": self.train, "dev": self.dev,
                "dev_beir": str(self.out_dir / "dev-beir") if self.dev else None,
                "sources": {name: c.to_dict() for name, c in self.sources.items()}, "settings": self.settings}


def _pair_id(source: str, positive_key: str) -> str:
    return f"{source}-{digest(positive_key).hex()}"


def select_pairs(sources: dict[str, SourceFn], limits: Limits, *, dev_fraction: float,
                 max_per_source: int | None = None) -> tuple[list[Pair], dict[str, SourceCounts]]:
    """Run the sources in the given order and keep the pairs that pass every rule.

    Rules, in order: length limits (long positives truncated); query equal to positive (normalized);
    exact duplicate pair; duplicate after normalization; a positive already used by an earlier pair
    (any source: one text, one query, so the BEIR dev set has one relevant document per query);
    then a query shared by pairs with different positives is ambiguous and all its pairs go;
    ``max_per_source`` keeps the pairs with the smallest id hash (a fixed uniform sample).
    """
    limits.check()
    if not 0.0 <= dev_fraction < 1.0:
        raise InputError("--dev-fraction must be in [0, 1)")
    if max_per_source is not None and max_per_source < 1:
        raise InputError("--max-per-source must be at least 1")
    counts = {name: SourceCounts() for name in sources}
    seen_exact: set[tuple[str, str]] = set()
    seen_norm: set[tuple[str, str]] = set()
    seen_positive: set[str] = set()
    kept: list[Pair] = []
    for name, source in sources.items():
        c = counts[name]
        for raw in source(c):
            c.candidates += 1
            query = " ".join(raw.query.split())
            positive = clean_space(raw.positive)
            if len(query) < limits.min_query_chars:
                c.dropped["query_too_short"] += 1
                continue
            if len(query) > limits.max_query_chars:
                c.dropped["query_too_long"] += 1
                continue
            cut = len(positive) > limits.max_positive_chars
            if cut:
                positive = truncate(positive, limits.max_positive_chars, limits.min_positive_chars)
            if len(positive) < limits.min_positive_chars:
                c.dropped["positive_too_short"] += 1
                continue
            q_key, p_key = normalized(query), normalized(positive)
            if q_key == p_key:
                c.dropped["query_equals_positive"] += 1
                continue
            if (query, positive) in seen_exact:
                c.dropped["duplicate_exact"] += 1
                continue
            seen_exact.add((query, positive))
            if (q_key, p_key) in seen_norm:
                c.dropped["duplicate_normalized"] += 1
                continue
            seen_norm.add((q_key, p_key))
            if p_key in seen_positive:
                c.dropped["duplicate_positive"] += 1
                continue
            seen_positive.add(p_key)
            negatives = []
            for neg in raw.negatives:
                neg = truncate(clean_space(neg), limits.max_positive_chars, limits.min_positive_chars)
                if len(neg) >= limits.min_positive_chars and normalized(neg) != p_key and neg not in negatives:
                    negatives.append(neg)
            c.truncated += cut  # counted among the pairs that pass the per-pair rules
            kept.append(Pair(_pair_id(name, p_key), name, query, positive, raw.origin, raw.doc_key, negatives))

    by_query: dict[str, list[Pair]] = defaultdict(list)
    for pair in kept:
        by_query[normalized(pair.query)].append(pair)
    ambiguous = {id(p) for group in by_query.values() if len(group) > 1 for p in group}
    final: list[Pair] = []
    for pair in kept:
        if id(pair) in ambiguous:
            counts[pair.source].dropped["ambiguous_query"] += 1
        else:
            final.append(pair)

    final.sort(key=lambda p: p.id)  # ids are hashes: a fixed order, sources in turn, shuffled within
    if max_per_source is not None:
        taken: Counter = Counter()
        sampled = []
        for pair in sorted(final, key=lambda p: digest(p.id)):
            if taken[pair.source] < max_per_source:
                taken[pair.source] += 1
                sampled.append(pair)
            else:
                counts[pair.source].dropped["over_max_per_source"] += 1
        final = sorted(sampled, key=lambda p: p.id)
    for pair in final:
        c = counts[pair.source]
        c.kept += 1
        if is_dev(pair.doc_key, dev_fraction):
            c.dev += 1
        else:
            c.train += 1
    return final, counts


def _jsonl(rows: Iterable[dict]) -> Iterator[str]:
    for row in rows:
        yield json.dumps(row, ensure_ascii=False) + "\n"


def check_out_dir(out: Path, kind: str = "pairs") -> None:
    """--out is replaced whole: refuse a folder that is not an earlier build of this ``kind``."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        marker = out / "build.json"
        try:
            found = json.loads(marker.read_text(encoding="utf-8")).get("kind") if marker.is_file() else None
        except (OSError, ValueError):
            found = None
        if found != kind:
            raise InputError(f"--out {out} is a non-empty folder that is not a {kind} build (no build.json "
                             f"of kind '{kind}'); it would be replaced, so choose a new folder")


def write_pairs(out: Path, pairs: list[Pair], counts: dict[str, SourceCounts], settings: dict,
                dev_fraction: float) -> BuildResult:
    """Write the build into a staging folder and publish it as ``out`` in one step."""
    from diffembed.atomic import building_dir
    from diffembed.eval.datasets import write_retrieval_dataset

    out = Path(out)
    check_out_dir(out)
    train = [p for p in pairs if not is_dev(p.doc_key, dev_fraction)]
    dev = [p for p in pairs if is_dev(p.doc_key, dev_fraction)]
    result = BuildResult(out, len(train), len(dev), counts, settings)
    with building_dir(out) as tmp:
        (tmp / "train.jsonl").write_text("".join(_jsonl(p.row() for p in train)), encoding="utf-8")
        (tmp / "dev.jsonl").write_text("".join(_jsonl(p.row() for p in dev)), encoding="utf-8")
        if dev:
            # the dev positives are the corpus; each query's one relevant document is its positive
            corpus = {p.id: {"title": "", "text": p.positive} for p in dev}
            queries = {p.id: p.query for p in dev}
            qrels = {p.id: {p.id: 1} for p in dev}
            write_retrieval_dataset(tmp / "dev-beir", corpus, queries, qrels)
        summary = {"kind": "pairs", "format_version": FORMAT_VERSION, **result.to_dict()}
        summary["out_dir"] = str(out)
        (tmp / "build.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return result
