"""The recipe for `diffembed pretrain`: one typed, validated config with a section per concern.

Unknown fields are errors (a misspelt `optim.lrr` must not silently train with the default), and
cross-field rules (e.g. LoRA needs targets, checkpoints need a positive interval) are checked here,
before a model is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from diffembed.training.sections import CheckpointSection, OptimSection, ScheduleSection, Section, TrainSection


class LoraConfig(Section):
    r: int = Field(16, gt=0)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1,
    )


class ModelSection(Section):
    path: str = Field(..., min_length=1, description="decoder folder, hub id, or packaged alias (smollm2-135m)")
    dtype: Literal["float32", "bfloat16"] = "float32"  # master weights; bf16 compute comes from train.precision
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    gradient_checkpointing: bool = False
    lora: LoraConfig | None = None


class ObjectiveSection(Section):
    kind: Literal["diffusion", "mntp"] = "diffusion"
    eps: float = Field(1e-3, gt=0.0, lt=1.0)  # diffusion: t ~ U(eps, 1)
    mask_rate: float = Field(0.2, gt=0.0, le=1.0)  # mntp: fixed rate
    # "auto": the tokenizer's mask token, else Qwen3's reserved <|MASK|>, else add <|mask|> (resize).
    # Any other string must be a token of the vocabulary unless add_mask_token is true.
    mask_token: str = "auto"
    add_mask_token: bool = False


class DataSection(Section):
    train: list[str] = Field(..., min_length=1)
    eval: list[str] = Field(default_factory=list)  # separate eval sources (the "eval" set)
    heldout_fraction: float = Field(0.02, ge=0.0, lt=1.0)  # documents of train kept out (the "heldout" set)
    seq_len: int = Field(512, ge=8)
    text_field: str = "text"
    shuffle_files: bool = True


class PretrainTrainSection(TrainSection):
    micro_batch_size: int = Field(8, gt=0)
    grad_accum: int = Field(1, gt=0)


class EvalSection(Section):
    every: int = Field(100, gt=0)
    rows: int = Field(64, gt=0)
    batch_size: int = Field(8, gt=0)
    seed: int = 1234  # fixed masks: every evaluation (and every model) sees the same corruption


def check_pretrain_sections(cfg) -> None:
    """The cross-field rules of stage 0, shared by `diffembed pretrain` and a recipe's pretrain stage."""
    cfg.schedule.resolve_warmup(cfg.train.steps)
    if not cfg.data.eval and cfg.data.heldout_fraction == 0.0:
        raise ValueError("no held-out data: set data.eval sources or data.heldout_fraction > 0")


class PretrainConfig(Section):
    output_dir: str = Field(..., min_length=1)
    model: ModelSection
    objective: ObjectiveSection = Field(default_factory=ObjectiveSection)
    data: DataSection
    optim: OptimSection = Field(default_factory=OptimSection)
    schedule: ScheduleSection = Field(default_factory=ScheduleSection)
    train: PretrainTrainSection
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)
    eval: EvalSection = Field(default_factory=EvalSection)

    @model_validator(mode="after")
    def _cross_checks(self):
        check_pretrain_sections(self)
        return self

    @property
    def out(self) -> Path:
        return Path(self.output_dir)
