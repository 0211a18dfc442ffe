"""Stage 0: masked-diffusion (or MNTP) continued pretraining of a decoder under bidirectional attention.

The same function runs on one CPU, one GPU, or N processes under `torchrun` / `accelerate launch`
(DDP; FSDP with `train.distributed: fsdp`). Determinism is by construction rather than by saved
iterator state: the data stream is a pure function of (sources, tokenizer, seed), each step takes
the next `world x grad_accum x micro_batch_size` rows, and every row is masked with a generator
seeded from its index in the stream. Resuming replays the stream past the rows already consumed, so
the loss curve after a resume equals the uninterrupted one, and N processes see exactly the rows
(and masks) that one process with N times the accumulation would.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import asdict
from itertools import islice
from pathlib import Path
from typing import Any

import torch

from diffembed.config_io import dump_config
from diffembed.errors import DiffembedError
from diffembed.training.checkpoint import TrainerState, read_state, resolve_resume, save_checkpoint
from diffembed.training.denoiser import MaskedDenoiser
from diffembed.training.export import export_backbone
from diffembed.training.objectives import maskable_positions, mask_rows
from diffembed.training.pretrain_config import PretrainConfig
from diffembed.training.run_log import JsonlLog, flops_per_token, peak_flops
from diffembed.training.text_stream import PackedStream, list_files

ROW_SEED_STRIDE = 1 << 40


def row_seed(seed: int, index: int) -> int:
    """The mask generator's seed of a row: unique per (seed, index in the stream or eval set)."""
    return seed * ROW_SEED_STRIDE + index


def _accelerator(cfg: PretrainConfig):
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    use_bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and torch.cuda.is_available())
    # cpu=True is what makes accelerate set up gloo under torchrun when there is no GPU.
    kwargs: dict[str, Any] = {"mixed_precision": "bf16" if use_bf16 else "no", "cpu": not torch.cuda.is_available()}
    if cfg.train.distributed == "fsdp":
        from accelerate import FullyShardedDataParallelPlugin

        kwargs["fsdp_plugin"] = FullyShardedDataParallelPlugin(
            fsdp_version=2, auto_wrap_policy="transformer_based_wrap", state_dict_type="SHARDED_STATE_DICT",
            reshard_after_forward=True,
        )
    acc = Accelerator(**kwargs)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if acc.num_processes != launched:
        raise DiffembedError(f"launched as {launched} processes but accelerate set up {acc.num_processes}")
    if cfg.train.distributed == "fsdp" and acc.distributed_type != DistributedType.FSDP and acc.num_processes > 1:
        raise DiffembedError("train.distributed is fsdp but accelerate did not set up FSDP (it does so for "
                             f"GPU processes only; this is {acc.distributed_type.name}): use ddp on CPU")
    return acc


def _optimizer(model: torch.nn.Module, cfg: PretrainConfig) -> torch.optim.Optimizer:
    """AdamW; biases and norm weights (1-d tensors) get no weight decay."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.optim.lr, betas=cfg.optim.betas,
                             eps=cfg.optim.adam_eps)


def _scheduler(optimizer, cfg: PretrainConfig):
    from transformers import get_scheduler

    name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[cfg.schedule.kind]
    return get_scheduler(name, optimizer, num_warmup_steps=cfg.schedule.warmup_steps,
                         num_training_steps=cfg.train.steps)


class _Batcher:
    """Turns rows of token ids (with their stream indices) into masked tensors on the device."""

    def __init__(self, cfg: PretrainConfig, mask_id: int, special_ids: list[int], device: torch.device):
        self.cfg, self.mask_id, self.special, self.device = cfg, mask_id, special_ids, device

    def __call__(self, rows: list[list[int]], row_seeds: list[int]) -> dict[str, torch.Tensor]:
        ids = torch.tensor(rows, dtype=torch.long)
        attn = torch.ones_like(ids)
        maskable = maskable_positions(ids, attn, self.special)
        ob = self.cfg.objective
        mb = mask_rows(ids, maskable, self.mask_id, row_seeds, objective=ob.kind, eps=ob.eps, rate=ob.mask_rate)
        return {"input_ids": mb.input_ids.to(self.device), "attention_mask": attn.to(self.device),
                "labels": mb.labels.to(self.device), "t": mb.t.to(self.device)}


def _eval_sets(cfg: PretrainConfig, tokenizer, eval_files, train_files) -> dict[str, list[list[int]]]:
    """Fixed held-out rows: `heldout` (documents of the training sources kept out by hash) and/or
    `eval` (the separate data.eval sources), each the first eval.rows rows of one pass."""
    streams = {}
    if cfg.data.heldout_fraction > 0:
        streams["heldout"] = PackedStream(train_files, tokenizer, cfg.data.seq_len, split="heldout",
                                          heldout_fraction=cfg.data.heldout_fraction, loop=False,
                                          text_field=cfg.data.text_field, shuffle_files=False)
    if eval_files:
        streams["eval"] = PackedStream(eval_files, tokenizer, cfg.data.seq_len, split="all", loop=False,
                                       text_field=cfg.data.text_field, shuffle_files=False)
    sets = {name: list(islice(stream.rows(), cfg.eval.rows)) for name, stream in streams.items()}
    for name, rows in sets.items():
        if not rows:
            raise DiffembedError(f"the {name} data is shorter than one row of {cfg.data.seq_len} tokens")
    return sets


@torch.no_grad()
def evaluate(model, accelerator, batcher: _Batcher, rows: list[list[int]], cfg: PretrainConfig) -> dict[str, float]:
    """Held-out objective and masked-token accuracy on fixed rows with fixed masks."""
    model.eval()
    rank, world = accelerator.process_index, accelerator.num_processes
    sums = torch.zeros(4, dtype=torch.float64, device=accelerator.device)
    mine = list(range(rank, len(rows), world))
    bs = cfg.eval.batch_size
    for start in range(0, max(len(mine), 1), bs):
        idx = mine[start : start + bs]
        if not idx:  # this process has no rows left; still join the collective below
            break
        batch = batcher([rows[i] for i in idx], [row_seed(cfg.eval.seed, i) for i in idx])
        with accelerator.autocast():
            out = model(**batch)
        sums += torch.stack([out["loss_sum"].double(), out["loss_count"].double(), out["correct"], out["total"]])
    sums = accelerator.reduce(sums, reduction="sum")
    model.train()
    return {"eval_loss": float(sums[0] / sums[1].clamp(min=1)), "eval_acc": float(sums[2] / sums[3].clamp(min=1)),
            "eval_masked_tokens": int(sums[3])}


def run_pretrain(cfg: PretrainConfig, *, resume: str | None = "auto",
                 on_log: Callable[[dict[str, Any]], None] | None = None, progress: bool = True) -> Path:
    """Train, checkpoint, evaluate and export; returns the exported backbone folder."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    # Sources are checked before the (slow) model load, so a typo fails in a second.
    train_files = list_files(cfg.data.train)
    eval_files = list_files(cfg.data.eval) if cfg.data.eval else []

    from accelerate.utils import set_seed

    from diffembed.training.pretrain_model import load_pretrain_model

    accelerator = _accelerator(cfg)
    set_seed(cfg.train.seed)
    out = cfg.out
    ckpt_root = out / "checkpoints"
    log = JsonlLog(out / "metrics.jsonl", enabled=accelerator.is_main_process)
    resume_from = resolve_resume(ckpt_root, resume)

    pm = load_pretrain_model(cfg.model, cfg.objective)
    denoiser = MaskedDenoiser(pm.lm, cfg.objective.kind)
    denoiser.train()
    optimizer = _optimizer(denoiser, cfg)
    scheduler = _scheduler(optimizer, cfg)
    # The scheduler is not prepared: accelerate would step it once per process per step (it assumes a
    # dataloader sharded across processes); registered, it is still saved in checkpoints.
    denoiser, optimizer = accelerator.prepare(denoiser, optimizer)
    accelerator.register_for_checkpointing(scheduler)

    state = TrainerState(fingerprint=stream_fingerprint(cfg))
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
        (out / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")

    batcher = _Batcher(cfg, pm.mask_id, pm.special_ids, accelerator.device)
    eval_sets = _eval_sets(cfg, pm.tokenizer, eval_files, train_files)
    train_stream = PackedStream(train_files, pm.tokenizer, cfg.data.seq_len,
                                split="train" if cfg.data.heldout_fraction > 0 else "all",
                                heldout_fraction=cfg.data.heldout_fraction,
                                seed=cfg.train.seed, loop=True, text_field=cfg.data.text_field,
                                shuffle_files=cfg.data.shuffle_files)
    rows_it: Iterator[list[int]] = train_stream.rows(skip=state.rows_consumed)

    world, accum, mbs = accelerator.num_processes, cfg.train.grad_accum, cfg.train.micro_batch_size
    rows_per_step = world * accum * mbs
    tokens_per_step = rows_per_step * cfg.data.seq_len
    unwrapped = accelerator.unwrap_model(denoiser)
    causal_cfg = unwrapped.causal_lm.config
    n_params = sum(p.numel() for p in unwrapped.parameters())
    fpt = flops_per_token(n_params, causal_cfg.num_hidden_layers, causal_cfg.hidden_size, cfg.data.seq_len)
    peak = peak_flops(accelerator.device, cfg.train.peak_tflops)

    def emit(record: dict[str, Any]) -> None:
        log.write(record)
        if on_log is not None and accelerator.is_main_process:
            on_log(record)

    def run_evals() -> None:
        for name, rows in eval_sets.items():
            emit({"step": state.step, "kind": "eval", "set": name,
                  **evaluate(denoiser, accelerator, batcher, rows, cfg)})

    if state.step == 0:  # the starting point: the model made bidirectional, before any training
        run_evals()

    bar = None
    if progress and accelerator.is_main_process:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.train.steps, initial=state.step, desc="pretrain", unit="step", dynamic_ncols=True)

    start_elapsed, t0 = state.elapsed_s, time.perf_counter()
    window_t, window_tokens = time.perf_counter(), 0
    rank = accelerator.process_index
    stopped_early = False
    while state.step < cfg.train.steps:
        step_rows = list(islice(rows_it, rows_per_step))
        if len(step_rows) < rows_per_step:  # cannot happen with loop=True; guard against a bad stream
            raise DiffembedError("the training data stream ended unexpectedly")
        base = state.rows_consumed
        loss_acc = torch.zeros(3, dtype=torch.float64, device=accelerator.device)
        for j in range(accum):
            offset = (j * world + rank) * mbs
            idx = list(range(offset, offset + mbs))
            batch = batcher([step_rows[i] for i in idx], [row_seed(cfg.train.seed, base + i) for i in idx])
            sync = accelerator.no_sync(denoiser) if j < accum - 1 else nullcontext()
            with sync, accelerator.autocast():
                out_j = denoiser(**batch)
                accelerator.backward(out_j["loss"] / accum)
            loss_acc += torch.stack([out_j["loss"].detach().double(), out_j["correct"], out_j["total"]])
        grad_norm = None
        if cfg.optim.max_grad_norm is not None:
            grad_norm = accelerator.clip_grad_norm_(denoiser.parameters(), cfg.optim.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        state.step += 1
        state.rows_consumed += rows_per_step
        state.tokens_seen += tokens_per_step
        window_tokens += tokens_per_step
        state.elapsed_s = start_elapsed + (time.perf_counter() - t0)
        if bar is not None:
            bar.update(1)

        if state.step % cfg.train.log_every == 0 or state.step == cfg.train.steps:
            red = accelerator.reduce(loss_acc, reduction="sum")
            now = time.perf_counter()
            tps = window_tokens / max(now - window_t, 1e-9)
            record = {"step": state.step, "kind": "train", "loss": float(red[0] / (accum * world)),
                      "acc": float(red[1] / red[2].clamp(min=1)), "lr": scheduler.get_last_lr()[0],
                      "grad_norm": None if grad_norm is None else float(grad_norm),
                      "tokens": state.tokens_seen, "tokens_per_s": tps, "elapsed_s": round(state.elapsed_s, 2)}
            if peak is not None:
                record["mfu"] = tps * fpt / (peak * world)
            emit(record)
            if bar is not None:
                bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['acc']:.3f}", tok_s=f"{tps:.0f}")
            window_t, window_tokens = now, 0

        over_budget = _over_budget(accelerator, cfg, state.elapsed_s)
        last = state.step == cfg.train.steps or over_budget
        if state.step % cfg.eval.every == 0 or last:
            run_evals()
        if state.step % cfg.checkpoint.every == 0 or last:
            save_checkpoint(accelerator, ckpt_root, state, cfg.checkpoint.keep)
        if over_budget and state.step < cfg.train.steps:
            stopped_early = True
            break
    if bar is not None:
        bar.close()

    final = out / "final"
    provenance = {"config": cfg.model_dump(mode="json"), "state": asdict(state), "stopped_early": stopped_early,
                  "mask_token": pm.mask_token, "mask_id": pm.mask_id, "source_model": pm.source,
                  "world_size": world}
    export_lm = unwrapped.lm
    if accelerator.distributed_type.name == "FSDP":  # gather the shards into a plain copy on the main process
        full = accelerator.get_state_dict(denoiser)
        if accelerator.is_main_process:
            plain = MaskedDenoiser(load_pretrain_model(cfg.model, cfg.objective).lm, cfg.objective.kind)
            plain.load_state_dict(full)
            export_lm = plain.lm
    if accelerator.is_main_process:
        export_backbone(export_lm, pm.tokenizer, final, provenance=provenance)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return final


def stream_fingerprint(cfg: PretrainConfig) -> str:
    """Hash of what a resumed run must share with the original: model, objective, data stream, seed.
    Steps, schedule, batch shape and logging may change between runs (rows are counted, not steps)."""
    import hashlib
    import json

    keep = {"model": cfg.model.model_dump(mode="json", exclude={"gradient_checkpointing"}),
            "objective": cfg.objective.model_dump(mode="json"),
            "data": cfg.data.model_dump(mode="json", exclude={"eval"}), "seed": cfg.train.seed}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def _over_budget(accelerator, cfg: PretrainConfig, elapsed_s: float) -> bool:
    if cfg.train.max_minutes is None:
        return False
    # Every process must agree, or one would wait forever in the next collective.
    flag = torch.tensor([1.0 if elapsed_s >= cfg.train.max_minutes * 60 else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="sum").item() > 0)
