"""The training loop every diffembed training kind shares.

It owns what does not depend on the objective: the accelerator (one CPU, one GPU, or N processes
under `torchrun` / `accelerate launch`, DDP or FSDP), AdamW and the LR schedule, gradient
accumulation and clipping, crash-safe checkpoints and resume, the cadence of logging, evaluation and
checkpoints, the time budget, the progress bar, and the export at the end. A training kind (stage-0
pretraining, the contrastive stages) is a `TrainingTask`: it builds its model, hands the loop each
step's micro-batches for this process, evaluates, and exports.

Determinism is the task's job and is kept simple by one rule: a step's data depends only on the
rows consumed before it (`TrainerState.rows_consumed`), never on an iterator's saved state, so a
resumed run replays exactly what the uninterrupted one would have done.
"""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from diffembed.errors import DiffembedError
from diffembed.extras import require
from diffembed.training.checkpoint import TrainerState, read_state, resolve_resume, save_checkpoint
from diffembed.training.run_log import JsonlLog, peak_flops


class LoopConfig(Protocol):
    """The config sections the loop reads; every training recipe has them."""

    output_dir: str
    train: Any  # steps, grad_accum, precision, seed, distributed, log_every, peak_tflops, threads, max_minutes
    optim: Any  # lr, weight_decay, betas, adam_eps, max_grad_norm
    schedule: Any  # kind, warmup_steps
    checkpoint: Any  # every, keep
    eval: Any  # every


@dataclass
class StepData:
    """One optimizer step's input for this process: `grad_accum` micro-batches of model kwargs."""

    micro_batches: list[dict[str, torch.Tensor]]
    rows: int  # rows consumed by the step across all processes (advances TrainerState.rows_consumed)
    tokens: int  # tokens in the step across all processes (throughput, MFU)


@dataclass
class StepMetrics:
    """Per-step numbers the model's forward returns besides `loss`, summed over micro-batches and
    processes before the task turns them into logged values."""

    keys: tuple[str, ...] = ()
    derive: Callable[[dict[str, float]], dict[str, float]] = field(default=lambda sums: {})


class TrainingTask(ABC):
    """What a training kind gives the shared loop."""

    name: str = "train"  # the progress bar's label
    metrics: StepMetrics = StepMetrics()
    # DDP must be told when some weights get no gradient (e.g. BERT's pooler under mean pooling).
    find_unused_parameters: bool = False
    # The loss runs backward passes of its own (GradCache re-embeds mini-batches during the outer
    # backward), which DDP's reducer refuses ("mark a variable ready only once"): the loop then runs
    # the step without DDP's sync and averages the gradients across processes itself.
    manual_gradient_sync: bool = False

    @abstractmethod
    def build_model(self) -> nn.Module:
        """The module to train. Its forward takes a micro-batch's kwargs and returns a dict with a
        scalar `loss` (and the keys of `metrics`), computed inside forward so DDP/FSDP wrap it all."""

    @abstractmethod
    def fingerprint(self) -> str:
        """A hash of the settings a resumed run must share (model, objective, data, seed)."""

    @abstractmethod
    def start(self, state: TrainerState, accelerator) -> None:
        """Open the data for a run that has already consumed `state.rows_consumed` rows."""

    @abstractmethod
    def next_step(self, state: TrainerState, accelerator) -> StepData:
        """This process's micro-batches for the step after `state.step`."""

    @abstractmethod
    def evaluate(self, model: nn.Module, accelerator) -> list[dict[str, Any]]:
        """Evaluation records (without `step` and `kind`, which the loop adds). Called on every
        process, since evaluation may use collectives."""

    @abstractmethod
    def export(self, model: nn.Module, state: TrainerState, *, stopped_early: bool, world_size: int) -> Path:
        """Write the trained model (called on the main process only) and return its folder."""

    def flops_per_token(self, model: nn.Module) -> float | None:
        """Training FLOPs per token, for MFU on GPUs of known peak; None to skip MFU."""
        return None

    def step_postfix(self, record: dict[str, Any]) -> dict[str, str]:
        return {"loss": f"{record['loss']:.3f}"}


def make_accelerator(train, *, find_unused_parameters: bool = False):
    Accelerator = require("accelerate", "train", "training").Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, DistributedType

    use_bf16 = train.precision == "bf16" or (train.precision == "auto" and torch.cuda.is_available())
    # cpu=True is what makes accelerate set up gloo under torchrun when there is no GPU.
    kwargs: dict[str, Any] = {"mixed_precision": "bf16" if use_bf16 else "no", "cpu": not torch.cuda.is_available()}
    if find_unused_parameters:
        kwargs["kwargs_handlers"] = [DistributedDataParallelKwargs(find_unused_parameters=True)]
    if train.distributed == "fsdp":
        from accelerate import FullyShardedDataParallelPlugin

        kwargs["fsdp_plugin"] = FullyShardedDataParallelPlugin(
            fsdp_version=2, auto_wrap_policy="transformer_based_wrap", state_dict_type="SHARDED_STATE_DICT",
            reshard_after_forward=True,
        )
    acc = Accelerator(**kwargs)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if acc.num_processes != launched:
        raise DiffembedError(f"launched as {launched} processes but accelerate set up {acc.num_processes}")
    if train.distributed == "fsdp" and acc.distributed_type != DistributedType.FSDP and acc.num_processes > 1:
        raise DiffembedError("train.distributed is fsdp but accelerate did not set up FSDP (it does so for "
                             f"GPU processes only; this is {acc.distributed_type.name}): use ddp on CPU")
    return acc


def make_optimizer(model: nn.Module, optim) -> torch.optim.Optimizer:
    """AdamW; biases and norm weights (1-d tensors) get no weight decay."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=optim.lr, betas=optim.betas, eps=optim.adam_eps)


def make_scheduler(optimizer, schedule, steps: int):
    from transformers import get_scheduler

    name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[schedule.kind]
    return get_scheduler(name, optimizer, num_warmup_steps=schedule.warmup_steps, num_training_steps=steps)


def run_training(task: TrainingTask, cfg: LoopConfig, *, resume: str | None = "auto",
                 on_log: Callable[[dict[str, Any]], None] | None = None, progress: bool = True) -> Path:
    """Train `task` under `cfg`, checkpointing and evaluating on cadence; returns the exported folder."""
    train = cfg.train
    if train.threads:
        torch.set_num_threads(train.threads)
    set_seed = require("accelerate.utils", "train", "training").set_seed

    accelerator = make_accelerator(train, find_unused_parameters=task.find_unused_parameters)
    set_seed(train.seed)
    out = Path(cfg.output_dir)
    ckpt_root = out / "checkpoints"
    log = JsonlLog(out / "metrics.jsonl", enabled=accelerator.is_main_process)
    resume_from = resolve_resume(ckpt_root, resume)

    model = task.build_model()
    model.train()
    optimizer = make_optimizer(model, cfg.optim)
    scheduler = make_scheduler(optimizer, cfg.schedule, train.steps)
    # The scheduler is not prepared: accelerate would step it once per process per step (it assumes a
    # dataloader sharded across processes); registered, it is still saved in checkpoints.
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)

    state = TrainerState(fingerprint=task.fingerprint())
    if resume_from is not None:
        saved = read_state(resume_from)
        if saved.fingerprint and saved.fingerprint != state.fingerprint:
            raise DiffembedError(f"{resume_from} was written with other model, objective or data settings; "
                                 "resuming would not continue the same run. Use --resume none or another output_dir")
        accelerator.load_state(str(resume_from))
        state = saved
        log.truncate_after(state.step)
    elif accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.jsonl").unlink(missing_ok=True)
    if accelerator.is_main_process:
        from diffembed.config_io import dump_config

        (out / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")

    task.start(state, accelerator)
    unwrapped = accelerator.unwrap_model(model)
    fpt = task.flops_per_token(unwrapped)
    peak = peak_flops(accelerator.device, train.peak_tflops) if fpt is not None else None
    world = accelerator.num_processes

    def emit(record: dict[str, Any]) -> None:
        log.write(record)
        if on_log is not None and accelerator.is_main_process:
            on_log(record)

    def run_evals() -> None:
        for record in task.evaluate(model, accelerator):
            emit({"step": state.step, "kind": "eval", **record})
        model.train()

    if state.step == 0:  # the starting point, before any training
        run_evals()

    bar = None
    if progress and accelerator.is_main_process:
        from tqdm.auto import tqdm

        bar = tqdm(total=train.steps, initial=state.step, desc=task.name, unit="step", dynamic_ncols=True)

    keys = task.metrics.keys
    start_elapsed, t0 = state.elapsed_s, time.perf_counter()
    window_t, window_tokens = time.perf_counter(), 0
    stopped_early = False
    while state.step < train.steps:
        step = task.next_step(state, accelerator)
        accum = len(step.micro_batches)
        sums = torch.zeros(1 + len(keys), dtype=torch.float64, device=accelerator.device)
        manual = task.manual_gradient_sync and world > 1
        for j, batch in enumerate(step.micro_batches):
            sync = accelerator.no_sync(model) if j < accum - 1 or manual else nullcontext()
            with sync, accelerator.autocast():
                out_j = model(**batch)
                accelerator.backward(out_j["loss"] / accum)
            sums += torch.stack([out_j["loss"].detach().double(),
                                 *(torch.as_tensor(out_j[k], device=accelerator.device).double() for k in keys)])
        if manual:
            average_gradients(model, world)
        grad_norm = None
        if cfg.optim.max_grad_norm is not None:
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.optim.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        state.step += 1
        state.rows_consumed += step.rows
        state.tokens_seen += step.tokens
        window_tokens += step.tokens
        state.elapsed_s = start_elapsed + (time.perf_counter() - t0)
        if bar is not None:
            bar.update(1)

        if state.step % train.log_every == 0 or state.step == train.steps:
            red = accelerator.reduce(sums, reduction="sum")
            now = time.perf_counter()
            tps = window_tokens / max(now - window_t, 1e-9)
            record = {"step": state.step, "kind": "train", "loss": float(red[0] / (accum * world)),
                      **task.metrics.derive({k: float(v) for k, v in zip(keys, red[1:])}),
                      "lr": scheduler.get_last_lr()[0], "grad_norm": None if grad_norm is None else float(grad_norm),
                      "tokens": state.tokens_seen, "tokens_per_s": tps, "elapsed_s": round(state.elapsed_s, 2)}
            if peak is not None:
                record["mfu"] = tps * fpt / (peak * world)
            emit(record)
            if bar is not None:
                bar.set_postfix(**task.step_postfix(record), tok_s=f"{tps:.0f}")
            window_t, window_tokens = now, 0

        over_budget = _over_budget(accelerator, train.max_minutes, state.elapsed_s)
        last = state.step == train.steps or over_budget
        if state.step % cfg.eval.every == 0 or last:
            run_evals()
        if state.step % cfg.checkpoint.every == 0 or last:
            save_checkpoint(accelerator, ckpt_root, state, cfg.checkpoint.keep)
        if over_budget and state.step < train.steps:
            stopped_early = True
            break
    if bar is not None:
        bar.close()

    export_model = unwrapped
    if accelerator.distributed_type.name == "FSDP":  # gather the shards into a plain copy on the main process
        full = accelerator.get_state_dict(model)
        if accelerator.is_main_process:
            export_model = task.build_model()
            export_model.load_state_dict(full)
    final = None
    if accelerator.is_main_process:
        final = task.export(export_model, state, stopped_early=stopped_early, world_size=world)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return final if final is not None else out / "final"


def average_gradients(model: nn.Module, world: int) -> None:
    """What DDP's reducer does, for a step it did not sync: every process ends with the mean gradient.
    A weight that got no gradient on any process keeps none (so AdamW leaves it alone, as under DDP)."""
    import torch.distributed as dist

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        return
    had = torch.tensor([0.0 if p.grad is None else 1.0 for p in params], device=params[0].device)
    dist.all_reduce(had)
    for p, flag in zip(params, had.tolist()):
        if flag > 0:
            grad = p.grad if p.grad is not None else torch.zeros_like(p)
            dist.all_reduce(grad)
            p.grad = grad / world


def _over_budget(accelerator, max_minutes: float | None, elapsed_s: float) -> bool:
    if max_minutes is None:
        return False
    # Every process must agree, or one would wait forever in the next collective.
    flag = torch.tensor([1.0 if elapsed_s >= max_minutes * 60 else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="sum").item() > 0)
