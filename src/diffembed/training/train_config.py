"""The recipe for `diffembed train`: contrastive stages declared in YAML, run in order.

Each stage names its data, loss, batch, optimizer, schedule, steps and starting point: the previous
stage (the default), a named earlier stage (so two stages can branch from one parent, as pplx-embed's
contextual and triplet stages do), `base` (the recipe's model), or a model folder. A `merge` stage
trains nothing: it merges earlier stages (or folders) with `diffembed merge`'s code, SLERP of two or
the mean of N. An optional `evaluate` section scores every stage's output on dev datasets as it
finishes. A `pretrain` stage (stage 0) continues pretraining a decoder with `diffembed pretrain`'s
settings and code (masked diffusion or MNTP), so one recipe runs from a causal LM to a merged embedder.
Unknown fields are errors, reported by their dotted name before any model loads.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, Discriminator, Field, Tag, field_validator, model_serializer, model_validator

from diffembed.training.pretrain_config import (DataSection, EvalSection, LoraConfig, ModelSection, ObjectiveSection,
                                                PretrainTrainSection, check_pretrain_sections)
from diffembed.training.sections import CheckpointSection, OptimSection, ScheduleSection, Section, TrainSection

QUANTIZATION = ("float", "int8", "binary", "mixed")
# the fields only training stages use, and those only merge stages use (each kind refuses the other's)
TRAINING_FIELDS = ("start_from", "data", "loss", "batch", "optim", "schedule", "train", "checkpoint", "eval")
MERGE_FIELDS = ("inputs", "method", "t", "weights")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _valid_name(v: str) -> str:
    if not _NAME.match(v) or v in ("base", "previous"):
        raise ValueError(f"stage name {v!r} must be letters, digits, '.', '_' or '-' and not base/previous")
    return v


StageName = Annotated[str, AfterValidator(_valid_name)]


class BaseModelSection(Section):
    path: str = Field("default", min_length=1,
                      description="model folder, hub id, packaged alias, or 'default' (the packaged MiniLM)")
    max_length: int | None = Field(None, gt=0)  # tokens per text; None keeps the model's own
    # every stage recomputes activations in the backward pass (bounded memory for long documents)
    gradient_checkpointing: bool = False
    # a decoder backbone's attention in every stage and the export: bidirectional (config.is_causal =
    # False, the runtime's pooling), or causal with last-token pooling on an EOS appended to every text
    # (the export's config.json records is_causal: true). An encoder takes bidirectional only.
    attention: Literal["bidirectional", "causal"] = "bidirectional"


class StageData(Section):
    # pairs/triplets: jsonl of query, positive, optional negatives; contextual: `diffembed data
    # contextual` documents (id, chunks, queries [{query, chunk}])
    train: list[str] = Field(..., min_length=1)
    # scored after each evaluation interval (nDCG@10): a BEIR folder, or for a contextual stage a
    # contextual dataset (scored naive and late)
    dev: str | None = None
    dev_max_queries: int | None = Field(500, gt=0)
    negatives: int = Field(0, ge=0)  # hard negatives per pair (triplet stages); rows with fewer are skipped


class LossSection(Section):
    temperature: float = Field(0.05, gt=0.0, le=1.0)  # InfoNCE: cosine / temperature
    symmetric: bool = False  # add the document -> query term
    # GradCache: embed the batch in mini-batches of this size, so a large batch fits in memory.
    mini_batch_size: int | None = Field(None, gt=0)
    quantization: Literal["float", "int8", "binary", "mixed"] = "float"
    # mixed: the loss summed over these views of one forward pass
    mixed_weights: dict[str, float] = Field(default_factory=lambda: {"float": 1.0, "int8": 1.0, "binary": 1.0})
    matryoshka_dims: list[int] = Field(default_factory=list)  # prefix sizes besides the full dimension
    # False-negative filtering (GISTEmbed): a candidate the guide scores at or above the positive
    # minus the margin is masked. guide: 'self' (a frozen copy of the stage's starting model) or a folder.
    false_negative_margin: float | None = None
    margin_strategy: Literal["absolute", "relative"] = "absolute"
    guide: str = "self"
    # contextual stages (InSeNT): lambda * L_in_sequence + (1 - lambda) * L_in_batch
    in_sequence_weight: float = Field(0.5, ge=0.0, le=1.0)

    @field_validator("mixed_weights")
    @classmethod
    def _views(cls, v):
        bad = [k for k in v if k not in ("float", "int8", "binary")]
        if bad or not v:
            raise ValueError(f"views must be among float, int8, binary (got {sorted(v)})")
        return v

    @field_validator("matryoshka_dims")
    @classmethod
    def _dims(cls, v):
        if any(d <= 0 for d in v):
            raise ValueError("dimensions must be positive")
        return sorted(set(v), reverse=True)


class BatchSection(Section):
    size: int = Field(64, gt=1)  # pairs per optimizer step (across all processes)
    no_duplicates: bool = True  # no text twice in one batch (a duplicate would be a false in-batch negative)
    clusters: int = Field(0, ge=0)  # >0: each batch drawn from one k-means cluster of the queries (CDE)
    # contextual stages: size counts documents; a longer document is cropped to a run of at most
    # max_chunks consecutive chunks (still late-chunked whole, in the runtime's windows), and at
    # most queries_per_document of its queries are asked per step
    max_chunks: int = Field(16, gt=1)
    queries_per_document: int = Field(4, gt=0)


class StageEval(Section):
    every: int = Field(100, gt=0)


class StageConfig(Section):
    name: StageName
    kind: Literal["pairs", "triplets", "contextual", "merge"] = "pairs"
    start_from: str = "previous"  # previous | base | <earlier stage name> | a model folder
    data: StageData | None = None  # required by training stages; a merge stage has none
    loss: LossSection = Field(default_factory=LossSection)
    batch: BatchSection = Field(default_factory=BatchSection)
    optim: OptimSection = Field(default_factory=lambda: OptimSection(lr=2e-5, weight_decay=0.01))
    schedule: ScheduleSection = Field(default_factory=lambda: ScheduleSection(kind="linear", warmup_ratio=0.1))
    train: TrainSection | None = None  # required by training stages; a merge stage has none
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)
    eval: StageEval = Field(default_factory=StageEval)
    # kind: merge only. inputs: earlier stage names or model folders. slerp: exactly two, t = 0 gives
    # the first and 1 the second (default 0.5); average: the (weighted) mean of two or more.
    inputs: list[str] = Field(default_factory=list)
    method: Literal["slerp", "average"] | None = None
    t: float | None = Field(None, ge=0.0, le=1.0)
    weights: list[float] | None = None
    output_dir: str = ""  # set by the runner: <recipe output_dir>/<name>

    @model_validator(mode="before")
    @classmethod
    def _merge_defaults(cls, data):
        if isinstance(data, dict) and data.get("kind") == "merge":
            data = dict(data)
            if data.get("method") is None:
                data["method"] = "slerp"
            if data["method"] == "slerp" and data.get("t") is None:
                data["t"] = 0.5
        return data

    @model_validator(mode="after")
    def _cross_checks(self):
        if self.kind == "merge":
            return self._merge_checks()
        missing = [k for k in ("data", "train") if getattr(self, k) is None]
        if missing:
            what = "data and train sections" if len(missing) == 2 else f"a {missing[0]} section"
            raise ValueError(f"a {self.kind} stage needs {what} (data.train: files, train.steps: a number)")
        merge_only = [k for k in MERGE_FIELDS if getattr(self, k) not in (None, [])]
        if merge_only:
            raise ValueError(f"{', '.join(merge_only)} belong{'s' if len(merge_only) == 1 else ''} to merge stages "
                             f"(kind: merge), not to a {self.kind} stage")
        self.schedule.resolve_warmup(self.train.steps)
        if self.kind == "triplets" and self.data.negatives == 0:
            raise ValueError("a triplets stage needs data.negatives >= 1")
        if self.kind == "contextual":
            unsupported = {"data.negatives": self.data.negatives != 0, "loss.symmetric": self.loss.symmetric,
                           "loss.mini_batch_size": self.loss.mini_batch_size is not None,
                           "loss.false_negative_margin": self.loss.false_negative_margin is not None,
                           "batch.clusters": self.batch.clusters != 0}
            bad = [k for k, on in unsupported.items() if on]
            if bad:
                raise ValueError(f"a contextual stage does not use {', '.join(bad)} (its negatives are the other "
                                 "chunks of each document and of the batch; memory is bounded by "
                                 "model.gradient_checkpointing and batch.max_chunks)")
        elif self.loss.mini_batch_size and self.loss.mini_batch_size > self.batch.size:
            raise ValueError(f"loss.mini_batch_size ({self.loss.mini_batch_size}) exceeds batch.size ({self.batch.size})")
        return self

    def _merge_checks(self):
        given = [k for k in TRAINING_FIELDS if k in self.model_fields_set and getattr(self, k) is not None]
        if given:
            raise ValueError(f"a merge stage trains nothing, so it takes no {', '.join(given)} (it merges its "
                             "inputs, e.g. inputs: [contextual, triplets], method: slerp, t: 0.5)")
        n = len(self.inputs)
        if len(set(self.inputs)) != n:
            raise ValueError(f"merge inputs repeat a model: {self.inputs}")
        if self.method == "slerp":
            if n != 2:
                raise ValueError(f"method: slerp merges exactly two inputs, got {n} "
                                 f"({', '.join(self.inputs) or 'none'}); method: average takes two or more")
            if self.weights is not None:
                raise ValueError("weights are for method: average; slerp takes t")
        else:
            if n < 2:
                raise ValueError(f"method: average needs at least two inputs, got {n} ({', '.join(self.inputs) or 'none'})")
            if self.t is not None:
                raise ValueError("t is for method: slerp; average takes weights (one per input, default equal)")
            if self.weights is not None and (len(self.weights) != n or any(w < 0 for w in self.weights)
                                             or sum(self.weights) <= 0):
                raise ValueError(f"weights must be {n} non-negative numbers (one per input) with a positive sum")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        """Each kind's own fields only, so a dumped recipe (train --dry-run) loads again."""
        data = handler(self)
        drop = TRAINING_FIELDS if self.kind == "merge" else MERGE_FIELDS
        return {k: v for k, v in data.items() if k not in drop}

    @property
    def out(self) -> Path:
        return Path(self.output_dir)


class PretrainModelOptions(Section):
    """`diffembed pretrain`'s model section without `path` (the stage's start is its model)."""

    dtype: Literal["float32", "bfloat16"] = ModelSection.model_fields["dtype"].default
    attn_implementation: Literal["sdpa", "eager"] = ModelSection.model_fields["attn_implementation"].default
    # None: the recipe's model.gradient_checkpointing
    gradient_checkpointing: bool | None = None
    lora: LoraConfig | None = None


class PretrainStageConfig(Section):
    """Stage 0 (`kind: pretrain`): `diffembed pretrain`'s sections (objective, data, optim, schedule,
    train, checkpoint, eval and the model options), run by its code from the stage's start."""

    name: StageName
    kind: Literal["pretrain"]
    start_from: str = "previous"  # previous (the recipe's model when first) | base | <earlier stage> | a folder
    model: PretrainModelOptions = Field(default_factory=PretrainModelOptions)
    objective: ObjectiveSection = Field(default_factory=ObjectiveSection)
    data: DataSection
    optim: OptimSection = Field(default_factory=OptimSection)
    schedule: ScheduleSection = Field(default_factory=ScheduleSection)
    train: PretrainTrainSection
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    output_dir: str = ""  # set by the runner: <recipe output_dir>/<name>

    @model_validator(mode="before")
    @classmethod
    def _foreign_fields(cls, data):
        if isinstance(data, dict):
            other = [k for k in ("loss", "batch", *MERGE_FIELDS) if k in data]
            if other:
                raise ValueError(f"a pretrain stage takes no {', '.join(other)} (those belong to pairs/triplets/"
                                 "contextual or merge stages); it takes diffembed pretrain's sections: objective, "
                                 "data, optim, schedule, train, checkpoint, eval and model options")
        return data

    @model_validator(mode="after")
    def _cross_checks(self):
        check_pretrain_sections(self)
        return self

    @property
    def out(self) -> Path:
        return Path(self.output_dir)


def _stage_kind(value: Any) -> str:
    kind = value.get("kind") if isinstance(value, dict) else getattr(value, "kind", None)
    return "kind:pretrain" if kind == "pretrain" else "kind:stage"


# a stage is a pretrain stage when its kind says so, else a pairs/triplets/contextual/merge stage
AnyStage = Annotated[Union[Annotated[StageConfig, Tag("kind:stage")],
                           Annotated[PretrainStageConfig, Tag("kind:pretrain")]], Discriminator(_stage_kind)]


def _looks_like_path(src: str) -> bool:
    return "/" in src or src.startswith((".", "~"))


class EvaluateSection(Section):
    """Score every stage's final folder as it finishes, with `diffembed eval`'s code."""

    # BEIR folders (corpus.jsonl) and/or contextual ones (documents.jsonl, scored per mode)
    datasets: list[str] = Field(..., min_length=1)
    max_queries: int | None = Field(None, gt=0)  # the first N judged queries (by id) of each dataset
    precisions: list[Literal["float32", "int8", "binary"]] = Field(default_factory=lambda: ["float32"], min_length=1)
    modes: list[Literal["naive", "late"]] = Field(default_factory=lambda: ["naive", "late"], min_length=1)
    split: str = "test"  # qrels/<split>.tsv
    device: str | None = None  # the Embedder's device (None: CUDA when available, else CPU)
    # score only these stages (None: all); on CPU a 135M model's dev evaluation can cost as much as a stage
    stages: list[str] | None = None

    def scores(self, stage: str) -> bool:
        return self.stages is None or stage in self.stages

    @field_validator("precisions", "modes")
    @classmethod
    def _unique(cls, v):
        return list(dict.fromkeys(v))


BACKBONES = ("diffusion", "mntp", "bidirectional", "causal")


def _plain(value: Any) -> Any:
    return value.model_dump(mode="json") if isinstance(value, Section) else value


def _original_start(stages: list[dict], i: int) -> str:
    """Stage i's start as written, with `previous` made explicit: the stage before it, else base."""
    src = stages[i].get("start_from", "previous")
    if src == "previous":
        return stages[i - 1].get("name", "") if i else "base"
    return src


def apply_backbone(data: dict[str, Any]) -> dict[str, Any]:
    """The recipe with `backbone` applied (issue 14's ablation arms, everything else equal):
    diffusion / mntp run every pretrain stage with that objective (its other settings kept);
    bidirectional / causal drop the pretrain stages (attention bidirectional / causal), and a stage
    that started from a dropped one (by name, or as `previous`) starts from the dropped stage's own
    start. `{backbone}` in output_dir is replaced by the value. Idempotent, so a printed resolved
    recipe loads to itself. Malformed input is returned unchanged for the field validators to report."""
    backbone = data.get("backbone")
    output_dir = data.get("output_dir")
    if isinstance(output_dir, str) and "{backbone}" in output_dir:
        if backbone is None:
            raise ValueError(f"output_dir {output_dir!r} names {{backbone}} but no backbone is set "
                             f"(backbone: {' | '.join(BACKBONES)})")
        if backbone in BACKBONES:
            data["output_dir"] = output_dir.replace("{backbone}", backbone)
    if backbone not in BACKBONES or not isinstance(data.get("stages"), list):
        return data
    stages = [copy.deepcopy(_plain(s)) for s in data["stages"]]
    if not all(isinstance(s, dict) for s in stages):
        return data
    model = _plain(data.get("model")) or {}
    if not isinstance(model, dict):
        return data
    pretrain = [s.get("name") for s in stages if s.get("kind") == "pretrain"]
    if backbone in ("diffusion", "mntp"):
        if not pretrain:
            raise ValueError(f"backbone: {backbone} runs the recipe's pretrain stage (stage 0) with objective "
                             f"{backbone}, but this recipe has no kind: pretrain stage (its stages: "
                             f"{', '.join(str(s.get('name')) for s in stages)}); use bidirectional or causal, or "
                             "add a pretrain stage")
        for s in stages:
            if s.get("kind") == "pretrain":
                objective = _plain(s.get("objective")) or {}
                if isinstance(objective, dict):
                    s["objective"] = {**objective, "kind": backbone}
        data["stages"] = stages
        data["model"] = {**model, "attention": "bidirectional"}
    else:
        starts: dict[str, str] = {}  # a dropped stage -> where it started (in the kept stages' terms)
        kept = []
        for i, s in enumerate(stages):
            src = _original_start(stages, i)
            src = starts.get(src, src)
            if s.get("kind") == "pretrain":
                starts[str(s.get("name"))] = src
                continue
            if s.get("kind") == "merge":
                inputs = s.get("inputs")
                if isinstance(inputs, list):
                    moved = [starts.get(x, x) for x in inputs]
                    if "base" in moved:
                        raise ValueError(f"backbone: {backbone} drops the pretrain stage(s) {', '.join(pretrain)}, "
                                         f"but merge stage {s.get('name')!r} takes one of them as an input and it "
                                         "started from the base model, which a merge cannot name")
                    s["inputs"] = moved
            elif _original_start(stages, i) in starts:
                s["start_from"] = src
            kept.append(s)
        if not kept:
            raise ValueError(f"backbone: {backbone} drops the pretrain stages, and this recipe has no other stage")
        data["stages"] = kept
        evaluate = _plain(data.get("evaluate"))
        if isinstance(evaluate, dict) and isinstance(evaluate.get("stages"), list):
            # a dropped stage is not scored; the other arms of the ablation still score it
            only = [x for x in evaluate["stages"] if x not in pretrain]
            data["evaluate"] = {**evaluate, "stages": only}
        data["model"] = {**model, "attention": "causal" if backbone == "causal" else "bidirectional"}
    return data


class TrainRecipe(Section):
    output_dir: str = Field(..., min_length=1)
    # the backbone arm of pplx-embed's ablation (apply_backbone); None: the recipe as written
    backbone: Literal["diffusion", "mntp", "bidirectional", "causal"] | None = None
    model: BaseModelSection = Field(default_factory=BaseModelSection)
    stages: list[AnyStage] = Field(..., min_length=1)
    evaluate: EvaluateSection | None = None  # off unless given

    @model_validator(mode="before")
    @classmethod
    def _backbone(cls, data):
        return apply_backbone(dict(data)) if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _stage_graph(self):
        pretrain = [s.name for s in self.stages if s.kind == "pretrain"]
        if pretrain and self.model.attention == "causal":
            raise ValueError(f"model.attention: causal keeps the decoder causal with no stage 0, but stage "
                             f"{pretrain[0]!r} is kind: pretrain (bidirectional masked pretraining): drop the "
                             "pretrain stage, or use attention: bidirectional")
        seen: list[str] = []
        for stage in self.stages:
            if stage.name in seen:
                raise ValueError(f"two stages are named {stage.name!r}")
            if stage.kind == "merge":
                for src in stage.inputs:
                    if src not in seen and not _looks_like_path(src):
                        raise ValueError(f"merge stage {stage.name!r} takes {src!r}, which is no earlier stage "
                                         f"(earlier: {', '.join(seen) or 'none'}) or a folder path")
            else:
                src = stage.start_from
                if src not in ("previous", "base") and src not in seen and not _looks_like_path(src):
                    raise ValueError(f"stage {stage.name!r} starts from {src!r}, which is no earlier stage "
                                     f"(earlier: {', '.join(seen) or 'none'}), 'base', 'previous' or a folder path")
            seen.append(stage.name)
            stage.output_dir = str(Path(self.output_dir) / stage.name)
        unknown = [x for x in (self.evaluate.stages or []) if x not in seen] if self.evaluate else []
        if unknown:
            raise ValueError(f"evaluate.stages names {', '.join(map(repr, unknown))}, which is no stage of this "
                             f"recipe (stages: {', '.join(seen)})")
        return self

    @property
    def out(self) -> Path:
        return Path(self.output_dir)


def _looks_like_path(src: str) -> bool:
    return "/" in src or src.startswith((".", "~"))
