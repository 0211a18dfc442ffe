"""Run diffembed models under mteb 2.x, and turn a local BEIR folder into an mteb retrieval task.

Why an adapter: ``mteb.evaluate`` accepts any object that follows its ``EncoderProtocol`` (an
``encode(DataLoader, *, task_metadata, hf_split, hf_subset, prompt_type)`` method, ``similarity``
functions and a ``mteb_model_meta``). Subclassing ``AbsEncoder`` gives us mteb's own cosine
similarity, so scores are computed exactly as for every other model on the leaderboard.

Why a local task: mteb tasks normally download their data from the Hugging Face hub. Overriding
``load_data`` to fill ``self.dataset`` from disk lets private or offline collections be scored with
mteb's own evaluator (pytrec_eval underneath). Usage::

    model = DiffembedMTEBEncoder("path/to/model")
    task = local_retrieval_task("data/my-beir-folder")
    res = mteb.evaluate(model, task, cache=None, co2_tracker=False)  # cache=None: nothing written
    res.task_results[0].get_score()                                 # nDCG@10

mteb itself is an optional dependency (``diffembed[mteb]``); it is imported only here.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from diffembed.errors import InputError
from diffembed.extras import require
from diffembed.inference.quantize import check_dimensions

require("mteb", "mteb", "the MTEB adapter")
from mteb.abstasks.retrieval import AbsTaskRetrieval  # noqa: E402
from mteb.abstasks.task_metadata import TaskMetadata  # noqa: E402
from mteb.models.abs_encoder import AbsEncoder  # noqa: E402
from mteb.models.model_meta import ModelMeta  # noqa: E402
from mteb.types import PromptType  # noqa: E402

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from diffembed import Embedder

# Precisions whose vectors can be compared by cosine once cast to float32. "ubinary" packs 8 signs per
# byte, so a cosine over its bytes would be meaningless: use "binary" (the same signs, unpacked).
MTEB_PRECISIONS = ("float32", "int8", "binary")


def _display_name(name: str) -> str:
    """A loaded model's display name -> the part after ``diffembed/`` in the mteb model name."""
    if Path(name).expanduser().is_dir():  # a local folder: its full path says nothing useful
        name = Path(name).expanduser().resolve().name
    return re.sub(r"[^\w.\-/]+", "-", name).strip("-/") or "model"


class DiffembedMTEBEncoder(AbsEncoder):
    """An mteb encoder backed by a diffembed ``Embedder``.

    ``model`` is an ``Embedder`` (reused as is) or a model folder / hub id / ``None`` (the packaged
    MiniLM) to load. Queries get the model's ``query`` prompt when it defines one, documents are
    encoded plainly, mirroring ``Embedder.encode_query`` / ``Embedder.encode``. ``precision`` and
    ``dimensions`` are passed to ``Embedder.encode``; quantized vectors come back cast to float32 so
    mteb's cosine similarity ranks them (cosine over int8 or +/-1 vectors is the intended metric).
    """

    def __init__(self, model: Embedder | str | Path | None = None, revision: str | None = None, *,
                 device: str | None = None, precision: str | None = None, dimensions: int | None = None,
                 **embedder_kwargs: Any):
        from diffembed import Embedder

        self.model = self.embedder = (
            model if isinstance(model, Embedder)
            else Embedder(None if model is None else str(model), device=device, **embedder_kwargs)
        )
        self.precision = self._check_precision(precision or self.embedder.default_precision)
        self.dimensions = check_dimensions(dimensions, self.embedder.dim)
        self.mteb_model_meta = self._model_meta(revision)

    @staticmethod
    def _check_precision(precision: str) -> str:
        if precision not in MTEB_PRECISIONS:
            raise InputError(f"precision '{precision}' cannot be scored by mteb; choose one of "
                             f"{', '.join(MTEB_PRECISIONS)}")
        return precision

    def _model_meta(self, revision: str | None) -> ModelMeta:
        """Metadata mteb stores next to the results; unknown facts are None, as mteb allows."""
        e = self.embedder
        # Non-default settings go into experiment_kwargs so mteb's result cache keeps them apart.
        experiment = {k: v for k, v in (("output_dtypes", self.precision if self.precision != "float32" else None),
                                        ("dimensions", self.dimensions)) if v is not None}
        return ModelMeta(
            loader=None, name=f"diffembed/{_display_name(e.loaded.name)}",
            # mteb's own folder name for an unknown revision; None would make its cache warn and guess.
            revision=revision or "no_revision_available",
            release_date=None, languages=None, n_parameters=sum(p.numel() for p in e.model.parameters()),
            memory_usage_mb=None, max_tokens=e.max_length, embed_dim=self.dimensions or e.dim,
            license=None, open_weights=None, public_training_code=None, public_training_data=None,
            framework=["PyTorch"], similarity_fn_name="cosine", use_instructions=bool(e.prompts),
            training_datasets=None, experiment_kwargs=experiment or None,
        )

    def encode(self, inputs: DataLoader, *, task_metadata: TaskMetadata, hf_split: str, hf_subset: str,
               prompt_type: PromptType | None = None, **kwargs: Any) -> np.ndarray:
        """Embed every text of mteb's DataLoader in one ``Embedder.encode`` call.

        One call instead of one per mteb batch lets diffembed batch by its token budget over
        length-sorted texts; ``batch_size`` from mteb is therefore ignored.
        """
        texts = [text for batch in inputs for text in batch["text"]]
        precision = self._check_precision(kwargs.get("precision") or self.precision)
        prompt_name = "query" if prompt_type == PromptType.query and "query" in self.embedder.prompts else None
        out = self.embedder.encode(texts, prompt_name=prompt_name, precision=precision,
                                   dimensions=self.dimensions, show_progress=kwargs.get("show_progress_bar"))
        return np.asarray(out, dtype=np.float32)


def _fingerprint(data: Any) -> str:
    """A short content hash used as the task's dataset revision, so mteb's cache notices edits."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


class LocalRetrievalTask(AbsTaskRetrieval):
    """An mteb retrieval task whose data comes from a diffembed ``RetrievalDataset`` in memory.

    mteb keeps a task's ``metadata`` on its class (instance copies are dropped when data is unloaded),
    so ``for_dataset`` makes one small subclass per collection. ``load_data`` never touches the hub: it
    builds the in-memory ``datasets.Dataset`` objects mteb 2.x expects in ``self.dataset[subset][split]``.
    """

    def __init__(self, dataset, split: str = "test", **kwargs: Any):
        self._source = dataset
        self._split = split
        super().__init__(**kwargs)

    @classmethod
    def for_dataset(cls, dataset, *, name: str | None = None, split: str = "test",
                    languages: list[str] | None = None) -> LocalRetrievalTask:
        metadata = TaskMetadata(
            name=name or f"diffembed-{_display_name(dataset.name)}",
            description=f"Local BEIR-format retrieval collection '{dataset.name}' evaluated through diffembed.",
            dataset={"path": f"local/{dataset.name}",
                     "revision": _fingerprint([dataset.corpus, dataset.queries, dataset.qrels])},
            type="Retrieval", category="t2t", modalities=["text"], eval_splits=[split],
            eval_langs=languages or ["eng-Latn"], main_score="ndcg_at_10",
        )
        task_cls = type(cls.__name__, (cls,), {"metadata": metadata, "__module__": cls.__module__})
        return task_cls(dataset, split)

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        from datasets import Dataset

        if self.data_loaded:
            return
        corpus = Dataset.from_list([{"id": d, "title": doc.get("title") or "", "text": doc["text"]}
                                    for d, doc in self._source.corpus.items()])
        queries = Dataset.from_list([{"id": q, "text": t} for q, t in self._source.queries.items()])
        relevant = {q: dict(docs) for q, docs in self._source.qrels.items()}
        self.dataset = {"default": {self._split: {"corpus": corpus, "queries": queries,
                                                  "relevant_docs": relevant, "top_ranked": None}}}
        self.data_loaded = True


def local_retrieval_task(folder: str | Path, name: str | None = None, *, split: str = "test",
                         languages: list[str] | None = None) -> LocalRetrievalTask:
    """Read a BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv) into an mteb task.

    The folder is read and checked by ``diffembed.eval.datasets.load_dataset``, so malformed files
    fail here with a ``DataFileError`` naming the file and line, not deep inside mteb. The task is
    named ``name`` or ``diffembed-<folder name>``; that name is the results file name in mteb's cache.
    """
    from diffembed.eval.datasets import load_dataset

    data = load_dataset(folder, split=split)
    if data.kind != "retrieval":
        raise InputError(f"{folder} is a {data.kind} dataset; mteb's retrieval task needs corpus.jsonl")
    return LocalRetrievalTask.for_dataset(data, name=name, split=split, languages=languages)
