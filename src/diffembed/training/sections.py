"""Config sections every training recipe shares (the ones the shared loop reads): optimizer,
LR schedule, run settings, checkpoints. Unknown fields are errors, so a misspelt `optim.lrr` fails
validation instead of silently training with the default."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class OptimSection(Section):
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


class ScheduleSection(Section):
    kind: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    # A fraction of train.steps instead of a count, so a recipe's warmup scales with a shortened run
    # (train.steps=20 on a 400-step recipe). When set, warmup_steps is derived from it.
    warmup_ratio: float | None = Field(None, ge=0.0, lt=1.0)

    def resolve_warmup(self, steps: int) -> None:
        """Derive warmup_steps from warmup_ratio and check it against the run's length."""
        if self.warmup_ratio is not None:
            derived = round(self.warmup_ratio * steps)
            # A given warmup_steps must agree, so a dumped config (which holds both) loads again,
            # while a warmup_steps override of a ratio recipe is not silently ignored.
            if "warmup_steps" in self.model_fields_set and self.warmup_steps != derived:
                raise ValueError(f"schedule.warmup_steps ({self.warmup_steps}) disagrees with schedule.warmup_ratio "
                                 f"({self.warmup_ratio} of {steps} steps = {derived}): set one of them and "
                                 "the ratio to null")
            self.warmup_steps = derived
        if self.warmup_steps >= steps and self.kind != "constant":
            hint = " (use schedule.warmup_ratio to scale warmup with the run)" if self.warmup_ratio is None else ""
            raise ValueError(f"schedule.warmup_steps ({self.warmup_steps}) must be below train.steps ({steps}){hint}")


class TrainSection(Section):
    steps: int = Field(..., gt=0)
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    seed: int = 0
    distributed: Literal["ddp", "fsdp"] = "ddp"  # used only when launched with several processes
    log_every: int = Field(10, gt=0)
    peak_tflops: float | None = Field(None, gt=0.0)  # for MFU on unknown GPUs
    threads: int | None = Field(None, gt=0)  # torch CPU threads per process
    max_minutes: float | None = Field(None, gt=0.0)  # stop early (checkpoint, eval, export) past this budget


class CheckpointSection(Section):
    every: int = Field(500, gt=0)
    keep: int = Field(2, gt=0)
