"""The recipe for `diffembed pretrain`: one typed, validated config with a section per concern.

Unknown fields are errors (a misspelt `optim.lrr` must not silently train with the default), and
cross-field rules (e.g. LoRA needs targets, checkpoints need a positive interval) are checked here,
before a model is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoraConfig(_Section):
    r: int = Field(16, gt=0)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1,
    )


class ModelSection(_Section):
    path: str = Field(..., min_length=1, description="decoder folder, hub id, or packaged alias (smollm2-135m)")
    dtype: Literal["float32", "bfloat16"] = "float32"  # master weights; bf16 compute comes from train.precision
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    gradient_checkpointing: bool = False
    lora: LoraConfig | None = None


class ObjectiveSection(_Section):
    kind: Literal["diffusion", "mntp"] = "diffusion"
    eps: float = Field(1e-3, gt=0.0, lt=1.0)  # diffusion: t ~ U(eps, 1)
    mask_rate: float = Field(0.2, gt=0.0, le=1.0)  # mntp: fixed rate
    # "auto": the tokenizer's mask token, else Qwen3's reserved <|MASK|>, else add <|mask|> (resize).
    # Any other string must be a token of the vocabulary unless add_mask_token is true.
    mask_token: str = "auto"
    add_mask_token: bool = False


class DataSection(_Section):
    train: list[str] = Field(..., min_length=1)
    eval: list[str] = Field(default_factory=list)  # separate eval sources (the "eval" set)
    heldout_fraction: float = Field(0.02, ge=0.0, lt=1.0)  # documents of train kept out (the "heldout" set)
    seq_len: int = Field(512, ge=8)
    text_field: str = "text"
    shuffle_files: bool = True


class OptimSection(_Section):
    lr: float = Field(1e-4, gt=0.0)
    weight_decay: float = Field(0.01, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.98)
    adam_eps: float = Field(1e-8, gt=0.0)
    max_grad_norm: float | None = Field(1.0, gt=0.0)

    @field_validator("betas")
    @classmethod
    def _betas(cls, v):
        if not all(0.0 <= b < 1.0 for b in v):
            raise ValueError("each beta must be in [0, 1)")
        return v


class ScheduleSection(_Section):
    kind: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    # A fraction of train.steps instead of a count, so a recipe's warmup scales with a shortened run
    # (train.steps=20 on a 400-step recipe). When set, warmup_steps is derived from it.
    warmup_ratio: float | None = Field(None, ge=0.0, lt=1.0)


class TrainSection(_Section):
    steps: int = Field(..., gt=0)
    micro_batch_size: int = Field(8, gt=0)
    grad_accum: int = Field(1, gt=0)
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    seed: int = 0
    distributed: Literal["ddp", "fsdp"] = "ddp"  # used only when launched with several processes
    log_every: int = Field(10, gt=0)
    peak_tflops: float | None = Field(None, gt=0.0)  # for MFU on unknown GPUs
    threads: int | None = Field(None, gt=0)  # torch CPU threads per process
    max_minutes: float | None = Field(None, gt=0.0)  # stop early (checkpoint, eval, export) past this budget


class CheckpointSection(_Section):
    every: int = Field(500, gt=0)
    keep: int = Field(2, gt=0)


class EvalSection(_Section):
    every: int = Field(100, gt=0)
    rows: int = Field(64, gt=0)
    batch_size: int = Field(8, gt=0)
    seed: int = 1234  # fixed masks: every evaluation (and every model) sees the same corruption


class PretrainConfig(_Section):
    output_dir: str = Field(..., min_length=1)
    model: ModelSection
    objective: ObjectiveSection = Field(default_factory=ObjectiveSection)
    data: DataSection
    optim: OptimSection = Field(default_factory=OptimSection)
    schedule: ScheduleSection = Field(default_factory=ScheduleSection)
    train: TrainSection
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)
    eval: EvalSection = Field(default_factory=EvalSection)

    @model_validator(mode="after")
    def _cross_checks(self):
        sched, steps = self.schedule, self.train.steps
        if sched.warmup_ratio is not None:
            derived = round(sched.warmup_ratio * steps)
            # A given warmup_steps must agree, so a dumped config (which holds both) loads again,
            # while a warmup_steps override of a ratio recipe is not silently ignored.
            if "warmup_steps" in sched.model_fields_set and sched.warmup_steps != derived:
                raise ValueError(f"schedule.warmup_steps ({sched.warmup_steps}) disagrees with schedule.warmup_ratio "
                                 f"({sched.warmup_ratio} of {steps} steps = {derived}): set one of them and "
                                 "the ratio to null")
            sched.warmup_steps = derived
        if sched.warmup_steps >= steps and sched.kind != "constant":
            hint = " (use schedule.warmup_ratio to scale warmup with the run)" if sched.warmup_ratio is None else ""
            raise ValueError(f"schedule.warmup_steps ({sched.warmup_steps}) must be below train.steps ({steps}){hint}")
        if not self.data.eval and self.data.heldout_fraction == 0.0:
            raise ValueError("no held-out data: set data.eval sources or data.heldout_fraction > 0")
        return self

    @property
    def out(self) -> Path:
        return Path(self.output_dir)
