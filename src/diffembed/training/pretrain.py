"""Stage 0: masked-diffusion (or MNTP) continued pretraining of a decoder under bidirectional attention.

The same function runs on one CPU, one GPU, or N processes under `torchrun` / `accelerate launch`
(DDP; FSDP with `train.distributed: fsdp`): the loop is the shared one in `training/loop.py`, and
this file holds what is stage-0's own. Determinism is by construction rather than by saved iterator
state: the data stream is a pure function of (sources, tokenizer, seed), each step takes the next
`world x grad_accum x micro_batch_size` rows, and every row is masked with a generator seeded from
its index in the stream. Resuming replays the stream past the rows already consumed, so the loss
curve after a resume equals the uninterrupted one, and N processes see exactly the rows (and masks)
that one process with N times the accumulation would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict
from itertools import islice
from pathlib import Path
from typing import Any

import torch

from diffembed.errors import DiffembedError
from diffembed.training.checkpoint import TrainerState, settings_fingerprint
from diffembed.training.denoiser import MaskedDenoiser
from diffembed.training.export import export_backbone
from diffembed.training.loop import StepData, StepMetrics, TrainingTask, run_training
from diffembed.training.objectives import maskable_positions, mask_rows
from diffembed.training.pretrain_config import PretrainConfig
from diffembed.training.pretrain_model import PretrainModel, load_pretrain_model
from diffembed.training.run_log import flops_per_token
from diffembed.training.text_stream import PackedStream, list_files

ROW_SEED_STRIDE = 1 << 40


def row_seed(seed: int, index: int) -> int:
    """The mask generator's seed of a row: unique per (seed, index in the stream or eval set)."""
    return seed * ROW_SEED_STRIDE + index


class RowMasker:
    """Masks rows of token ids, each with the generator of its row seed, into model kwargs on the device."""

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
def evaluate(model, accelerator, masker: RowMasker, rows: list[list[int]], cfg: PretrainConfig) -> dict[str, float]:
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
        batch = masker([rows[i] for i in idx], [row_seed(cfg.eval.seed, i) for i in idx])
        with accelerator.autocast():
            out = model(**batch)
        sums += torch.stack([out["loss_sum"].double(), out["loss_count"].double(), out["correct"], out["total"]])
    sums = accelerator.reduce(sums, reduction="sum")
    model.train()
    return {"eval_loss": float(sums[0] / sums[1].clamp(min=1)), "eval_acc": float(sums[2] / sums[3].clamp(min=1)),
            "eval_masked_tokens": int(sums[3])}


class PretrainTask(TrainingTask):
    """Stage 0 for the shared loop: packed rows from the text stream, each masked by its row seed."""

    name = "pretrain"
    metrics = StepMetrics(keys=("correct", "total"),
                          derive=lambda sums: {"acc": sums["correct"] / max(sums["total"], 1.0)})

    def __init__(self, cfg: PretrainConfig):
        self.cfg = cfg
        # Sources are checked before the (slow) model load, so a typo fails in a second.
        self.train_files = list_files(cfg.data.train)
        self.eval_files = list_files(cfg.data.eval) if cfg.data.eval else []
        self.pm: PretrainModel | None = None

    def build_model(self) -> MaskedDenoiser:
        pm = load_pretrain_model(self.cfg.model, self.cfg.objective)
        if self.pm is None:
            self.pm = pm
        return MaskedDenoiser(pm.lm, self.cfg.objective.kind)

    def fingerprint(self) -> str:
        return stream_fingerprint(self.cfg)

    def start(self, state: TrainerState, accelerator) -> None:
        cfg, pm = self.cfg, self.pm
        self.masker = RowMasker(cfg, pm.mask_id, pm.special_ids, accelerator.device)
        self.eval_sets = _eval_sets(cfg, pm.tokenizer, self.eval_files, self.train_files)
        stream = PackedStream(self.train_files, pm.tokenizer, cfg.data.seq_len,
                              split="train" if cfg.data.heldout_fraction > 0 else "all",
                              heldout_fraction=cfg.data.heldout_fraction, seed=cfg.train.seed, loop=True,
                              text_field=cfg.data.text_field, shuffle_files=cfg.data.shuffle_files)
        self.rows_it: Iterator[list[int]] = stream.rows(skip=state.rows_consumed)

    def next_step(self, state: TrainerState, accelerator) -> StepData:
        world, rank = accelerator.num_processes, accelerator.process_index
        accum, mbs = self.cfg.train.grad_accum, self.cfg.train.micro_batch_size
        rows_per_step = world * accum * mbs
        step_rows = list(islice(self.rows_it, rows_per_step))
        if len(step_rows) < rows_per_step:  # cannot happen with loop=True; guard against a bad stream
            raise DiffembedError("the training data stream ended unexpectedly")
        base, seed = state.rows_consumed, self.cfg.train.seed
        batches = []
        for j in range(accum):  # micro-batch j of process r holds the stream rows a 1-process run gives it
            offset = (j * world + rank) * mbs
            idx = range(offset, offset + mbs)
            batches.append(self.masker([step_rows[i] for i in idx], [row_seed(seed, base + i) for i in idx]))
        return StepData(micro_batches=batches, rows=rows_per_step, tokens=rows_per_step * self.cfg.data.seq_len)

    def evaluate(self, model, accelerator) -> list[dict[str, Any]]:
        return [{"set": name, **evaluate(model, accelerator, self.masker, rows, self.cfg)}
                for name, rows in self.eval_sets.items()]

    def flops_per_token(self, model) -> float:
        causal_cfg = model.causal_lm.config
        n_params = sum(p.numel() for p in model.parameters())
        return flops_per_token(n_params, causal_cfg.num_hidden_layers, causal_cfg.hidden_size, self.cfg.data.seq_len)

    def step_postfix(self, record: dict[str, Any]) -> dict[str, str]:
        return {"loss": f"{record['loss']:.3f}", "acc": f"{record['acc']:.3f}"}

    def export(self, model, state: TrainerState, *, stopped_early: bool, world_size: int) -> Path:
        pm = self.pm
        provenance = {"config": self.cfg.model_dump(mode="json"), "state": asdict(state),
                      "stopped_early": stopped_early, "mask_token": pm.mask_token, "mask_id": pm.mask_id,
                      "source_model": pm.source, "world_size": world_size}
        return export_backbone(model.lm, pm.tokenizer, self.cfg.out / "final", provenance=provenance)


def run_pretrain(cfg: PretrainConfig, *, resume: str | None = "auto",
                 on_log: Callable[[dict[str, Any]], None] | None = None, progress: bool = True) -> Path:
    """Train, checkpoint, evaluate and export; returns the exported backbone folder."""
    return run_training(PretrainTask(cfg), cfg, resume=resume, on_log=on_log, progress=progress)


def stream_fingerprint(cfg: PretrainConfig) -> str:
    """Hash of what a resumed run must share with the original: model, objective, data stream, seed.
    Steps, schedule, batch shape and logging may change between runs (rows are counted, not steps)."""
    keep = {"model": cfg.model.model_dump(mode="json", exclude={"gradient_checkpointing"}),
            "objective": cfg.objective.model_dump(mode="json"),
            "data": cfg.data.model_dump(mode="json", exclude={"eval"}), "seed": cfg.train.seed}
    return settings_fingerprint(keep)
