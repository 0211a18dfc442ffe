"""What an index was built with, and the check that a query is embedded the same way.

Comparing model names is not enough (the same folder can be retrained; two paths can hold one
model), so the index also stores the embedding of a fixed probe text. A model whose probe embedding
is not nearly identical (cosine < 0.99; bf16 vs fp32 of one model stays above 0.999) is refused.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field

import numpy as np

from diffembed.errors import InputError, ModelMismatchError

PROBE_TEXT = "diffembed index probe: a short sentence about rivers, cities and music in 1969."
PROBE_MIN_COSINE = 0.99
MODES = ("late", "naive")
# A new index embeds each chunk alone unless told otherwise: on SQuAD dev chunk retrieval naive beat
# late with every model measured, the contextual stage's output included (0.676 vs 0.610 nDCG@10;
# docs/training-results.md). `--mode late` is one flag away for models that gain from it.
DEFAULT_MODE = "naive"


@dataclass
class IndexSettings:
    model: str | None  # what to load at search time: a folder, a hub id, or None (the packaged default)
    model_name: str
    dim: int
    pooling: str
    max_length: int
    chunk_tokens: int
    mode: str  # late: chunks pooled from one pass over the document; naive: each chunk alone
    probe: list[float] = field(repr=False)

    def __post_init__(self):
        if self.mode not in MODES:
            raise InputError(f"unknown chunking mode '{self.mode}'; choose one of {', '.join(MODES)}")

    @property
    def n_bytes(self) -> int:
        return (self.dim + 7) // 8

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> IndexSettings:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})

    def summary(self) -> dict:
        d = self.to_dict()
        d.pop("probe")
        return d


def probe_vector(embedder) -> list[float]:
    return [float(x) for x in embedder.encode(PROBE_TEXT, precision="float32", show_progress=False)]


def settings_for(embedder, model: str | None, *, chunk_tokens: int | None, mode: str) -> IndexSettings:
    loaded = embedder.loaded
    return IndexSettings(
        model=model,
        model_name=loaded.name,
        dim=embedder.dim,
        pooling=loaded.pooling,
        max_length=embedder.max_length,
        chunk_tokens=int(chunk_tokens if chunk_tokens is not None else embedder.default_chunk_tokens),
        mode=mode,
        probe=probe_vector(embedder),
    )


def check_same_model(settings: IndexSettings, embedder) -> None:
    """Raise ModelMismatchError unless ``embedder`` embeds like the index's model."""
    name = embedder.loaded.name
    own = settings.model or "the packaged default model"
    hint = f"use the index's own model ({own}) or build a new index"
    if embedder.dim != settings.dim:
        raise ModelMismatchError(
            f"the index was built with {settings.model_name} ({settings.dim} dimensions); "
            f"{name} makes {embedder.dim}-dimensional embeddings: {hint}"
        )
    if embedder.loaded.pooling != settings.pooling:
        raise ModelMismatchError(
            f"the index was built with {settings.pooling} pooling; this model uses {embedder.loaded.pooling}: {hint}"
        )
    now = np.asarray(probe_vector(embedder), dtype=np.float64)
    then = np.asarray(settings.probe, dtype=np.float64)
    cos = float(now @ then / max(np.linalg.norm(now) * np.linalg.norm(then), 1e-12))
    if cos < PROBE_MIN_COSINE:
        raise ModelMismatchError(
            f"the index was built with {settings.model_name}; {name} embeds differently "
            f"(probe cosine {cos:.3f} < {PROBE_MIN_COSINE}): {hint}"
        )


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def load_settings(store) -> IndexSettings:
    data = store.settings
    if data is None:
        from diffembed.errors import IndexStoreError

        raise IndexStoreError(f"index {store.folder} has no documents yet; add some with 'diffembed index add'")
    return IndexSettings.from_dict(data)


def model_reference(model: str | None) -> str | None:
    """What to record for reloading later: None (the packaged default), an absolute folder, or a hub id."""
    from pathlib import Path

    if model is None:
        return None
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model
