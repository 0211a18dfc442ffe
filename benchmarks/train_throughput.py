"""Contrastive training throughput: `diffembed train`'s loop vs sentence-transformers' own trainer.

Both train the packaged all-MiniLM-L6-v2 with sentence-transformers' MultipleNegativesRankingLoss
(scale 20 = diffembed's temperature 0.05) on the same (query, positive) rows, at the same batch size,
max_seq_length 128, AdamW lr 2e-5 (weight decay 0.01 off biases/LayerNorms, betas 0.9/0.98), linear
schedule with 10% warm-up, gradient clipping at 1.0, no-duplicate batches, fp32 on CPU:
- diffembed: `run_training(ContrastiveTask(stage, model), stage)`, the code `diffembed train` runs
  (checkpoint and evaluation cadence past the run, log_every 1 so the loop reports every step);
- peer: `SentenceTransformerTrainer` on a `datasets.Dataset` with columns anchor/positive,
  `batch_sampler=NO_DUPLICATES`, no evaluation, saving, logging or reporting, dataloader in the main
  process, its default optimizer (`adamw_torch_fused` on torch >= 2.8).

What is timed: the wall time from the end of step W to the end of step W+N (W warm-up steps), taken
from a per-step hook in each loop (diffembed's `on_log`, called after the optimizer step; the
trainer's `on_step_end` callback, same place). The window holds everything a step does: drawing the
batch, tokenising, forward, backward, clipping, optimizer and scheduler; model loading, the trainer's
setup, diffembed's final checkpoint and export are outside it. Each system runs R times per batch size
in alternating order, each run a fresh model; the best window is kept. The two systems draw different
(equally random) batches from the same rows, so non-padding and padded tokens (what the model computes
on) per pair are reported for both, and the ratio per padded token besides the ratio per pair. The
plain vs fused AdamW step is timed on its own, since the two loops use different kernels. --threads
sets torch's threads for both: on a machine shared with other jobs, 2 threads on 2 cores ran a step
several times slower than 1 (oversubscription), so the recorded run used 1.

Rows: the first --rows rows of data/pairs/train.jsonl (`diffembed data`), or, if that file is
missing, (first paragraph, rest) pairs from Python standard-library docstrings.

Reproduce:
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/train_throughput.py --threads 1 \
        --json benchmarks/results/train_throughput.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PAIRS = ROOT / "data" / "pairs" / "train.jsonl"
MAX_LEN = 128


def load_rows(n: int) -> tuple[list[dict], str]:
    if PAIRS.is_file():
        rows = []
        with PAIRS.open(encoding="utf-8") as fh:
            for line in fh:
                rec = json.loads(line)
                rows.append({"query": rec["query"], "positive": rec["positive"]})
                if len(rows) == n:
                    break
        return rows, f"first {len(rows)} rows of data/pairs/train.jsonl"
    sys.path.insert(0, str(ROOT / "tests" / "training"))
    from stdlib_pairs import stdlib_pairs

    rows = [{"query": r["query"], "positive": r["positive"]} for r in stdlib_pairs()[:n]]
    return rows, f"{len(rows)} stdlib docstring pairs (data/pairs/train.jsonl not found)"


def window(stamps: list[float], warmup: int, steps: int) -> float:
    """Seconds from the end of step `warmup` to the end of step `warmup + steps` (stamps are step ends)."""
    return stamps[warmup + steps - 1] - stamps[warmup - 1]


def step_times(stamps: list[float], warmup: int) -> list[float]:
    return [b - a for a, b in zip(stamps[warmup - 1:-1], stamps[warmup:])]


def run_diffembed(model_dir: str, pairs_file: Path, batch: int, warmup: int, steps: int, work: Path,
                  threads: int) -> dict:
    from diffembed.training.contrastive import ContrastiveTask
    from diffembed.training.loop import run_training
    from diffembed.training.train_config import StageConfig

    padded: list[int] = []

    class Counting(ContrastiveTask):
        """The stage's task, also counting each step's padded tokens (what the model computes on)."""

        def next_step(self, state, accelerator):
            step = super().next_step(state, accelerator)
            padded.append(sum(int(f["attention_mask"].numel()) for f in step.micro_batches[0]["sentence_features"]))
            return step

    total = warmup + steps
    stage = StageConfig(
        name="bench", data={"train": [str(pairs_file)]}, batch={"size": batch, "no_duplicates": True},
        loss={"temperature": 0.05}, optim={"lr": 2e-5, "weight_decay": 0.01, "betas": (0.9, 0.98)},
        schedule={"kind": "linear", "warmup_ratio": 0.1},
        train={"steps": total, "precision": "fp32", "seed": 0, "log_every": 1, "threads": threads},
        checkpoint={"every": 10 * total, "keep": 1}, eval={"every": 10 * total},
        output_dir=str(work / f"diffembed-b{batch}"))
    stamps: list[float] = []
    records: list[dict] = []

    def on_log(rec: dict) -> None:
        if rec.get("kind") == "train":
            stamps.append(time.perf_counter())
            records.append(rec)

    t0 = time.perf_counter()
    run_training(Counting(stage, model_dir, max_length=MAX_LEN), stage, resume="none", on_log=on_log,
                 progress=False)
    total_s = time.perf_counter() - t0
    assert len(stamps) == total, (len(stamps), total)
    tokens = records[warmup + steps - 1]["tokens"] - records[warmup - 1]["tokens"]
    return {"window_s": window(stamps, warmup, steps), "step_s": step_times(stamps, warmup),
            "tokens": tokens, "padded_tokens": sum(padded[warmup:total]), "step_padded": padded[warmup:total],
            "loss_last": records[-1]["loss"], "run_s_incl_setup_export": total_s}


class _Stamp:
    """A TrainerCallback (built lazily so transformers loads only when needed)."""

    @staticmethod
    def make(stamps: list[float]):
        from transformers import TrainerCallback

        class Stamp(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                stamps.append(time.perf_counter())

        return Stamp()


class _Counting:
    """The trainer's collator, counting each batch's non-padding tokens (the trainer reads its attributes)."""

    def __init__(self, collate, counts: list[int], padded: list[int]):
        self._collate, self._counts, self._padded = collate, counts, padded

    def __getattr__(self, name):
        return getattr(self._collate, name)

    def __call__(self, features):
        out = self._collate(features)
        masks = [v for k, v in out.items() if k.endswith("_attention_mask")]
        self._counts.append(sum(int(m.sum()) for m in masks))
        self._padded.append(sum(int(m.numel()) for m in masks))
        return out


def run_peer(model_dir: str, rows: list[dict], batch: int, warmup: int, steps: int, work: Path) -> dict:
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    total = warmup + steps
    torch.manual_seed(0)
    model = SentenceTransformer(model_dir, device="cpu")
    model.max_seq_length = MAX_LEN
    loss = MultipleNegativesRankingLoss(model, scale=20.0)
    data = Dataset.from_dict({"anchor": [r["query"] for r in rows], "positive": [r["positive"] for r in rows]})
    args = SentenceTransformerTrainingArguments(
        output_dir=str(work / f"peer-b{batch}"), per_device_train_batch_size=batch, max_steps=total,
        learning_rate=2e-5, weight_decay=0.01, adam_beta1=0.9, adam_beta2=0.98, adam_epsilon=1e-8,
        max_grad_norm=1.0, lr_scheduler_type="linear", warmup_steps=round(0.1 * total), seed=0,
        batch_sampler=BatchSamplers.NO_DUPLICATES, eval_strategy="no", save_strategy="no",
        logging_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0, use_cpu=True,
        bf16=False, fp16=False)
    stamps: list[float] = []
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=loss,
                                         callbacks=[_Stamp.make(stamps)])
    batch_tokens: list[int] = []
    padded: list[int] = []
    trainer.data_collator = _Counting(trainer.data_collator, batch_tokens, padded)
    t0 = time.perf_counter()
    trainer.train()
    total_s = time.perf_counter() - t0
    assert len(stamps) == total, (len(stamps), total)
    opt = trainer.optimizer
    opt = getattr(opt, "optimizer", opt)  # accelerate's wrapper
    optimizer = {"class": type(opt).__name__, "fused": bool(opt.defaults.get("fused")),
                 "lr_max": args.learning_rate, "betas": list(opt.defaults["betas"])}
    assert len(batch_tokens) >= total, (len(batch_tokens), total)
    return {"window_s": window(stamps, warmup, steps), "step_s": step_times(stamps, warmup),
            "tokens": sum(batch_tokens[warmup:total]), "padded_tokens": sum(padded[warmup:total]),
            "step_padded": padded[warmup:total], "optimizer": optimizer,
            "run_s_incl_setup": total_s}


def adamw_step_cost(model_dir: str, reps: int = 10) -> dict:
    """One AdamW step over MiniLM's weights: torch's default (for-loop on CPU, what diffembed's loop
    builds) vs fused (the trainer's default). Best of `reps`."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_dir, device="cpu")
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    out = {}
    for name, kw in (("plain", {}), ("fused", {"fused": True})):
        opt = torch.optim.AdamW(params, lr=2e-5, **kw)
        opt.step()
        best = float("inf")
        for _ in range(reps):
            t = time.perf_counter()
            opt.step()
            best = min(best, time.perf_counter() - t)
        out[f"{name}_s"] = best
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--batch", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="steps before the timed window (at least 1)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per system and batch size (alternating)")
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch CPU threads for both systems (on a loaded machine, 1 avoids oversubscription)")
    args = parser.parse_args()
    if args.warmup < 1:
        parser.error("--warmup must be at least 1 (the window starts at the end of a step)")
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    from diffembed.modeling.loader import resolve_model_path

    model_dir = str(resolve_model_path("default")[0])
    rows, source = load_rows(args.rows)
    need = max(args.batch) * (args.warmup + args.steps)
    if len(rows) < need:
        sys.exit(f"{len(rows)} rows are fewer than one epoch of the longest run ({need}); raise --rows")
    load_start = os.getloadavg()
    results = []
    with tempfile.TemporaryDirectory(prefix="train_throughput-") as tmp:
        work = Path(tmp)
        pairs_file = work / "pairs.jsonl"
        pairs_file.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        for b in args.batch:
            runs: dict[str, list[dict]] = {"peer": [], "diffembed": []}
            for rep in range(args.repeats):
                order = ("peer", "diffembed") if rep % 2 == 0 else ("diffembed", "peer")
                for system in order:
                    if system == "peer":
                        r = run_peer(model_dir, rows, b, args.warmup, args.steps, work)
                    else:
                        r = run_diffembed(model_dir, pairs_file, b, args.warmup, args.steps, work, args.threads)
                    r["load_avg_1m"] = os.getloadavg()[0]
                    runs[system].append(r)
                    print(json.dumps({"batch": b, "system": system, "rep": rep,
                                      "pairs_per_s": round(b * args.steps / r["window_s"], 2),
                                      "window_s": round(r["window_s"], 2), "load_1m": r["load_avg_1m"]}), flush=True)
            best = {s: min(rs, key=lambda r: r["window_s"]) for s, rs in runs.items()}
            pairs = b * args.steps
            out = {"batch": b, "steps_timed": args.steps, "warmup_steps": args.warmup, "repeats": args.repeats}
            for s, r in best.items():
                out[f"{s}_pairs_per_s"] = pairs / r["window_s"]
                out[f"{s}_tokens_per_s"] = r["tokens"] / r["window_s"]
                out[f"{s}_tokens_per_pair"] = r["tokens"] / pairs
                out[f"{s}_padded_tokens_per_pair"] = r["padded_tokens"] / pairs
                out[f"{s}_padded_tokens_per_s"] = r["padded_tokens"] / r["window_s"]
                out[f"{s}_median_step_s"] = statistics.median(r["step_s"])
                out[f"{s}_windows_s"] = [x["window_s"] for x in runs[s]]
                # The least-disturbed single step of all runs: less exposed to other jobs' load swings.
                out[f"{s}_fastest_step_s"] = min(t for x in runs[s] for t in x["step_s"])
                out[f"{s}_fastest_step_padded_tokens_per_s"] = max(
                    p / t for x in runs[s] for p, t in zip(x["step_padded"], x["step_s"]))
            out["ratio_diffembed_over_peer"] = out["diffembed_pairs_per_s"] / out["peer_pairs_per_s"]
            out["ratio_tokens_per_s"] = out["diffembed_tokens_per_s"] / out["peer_tokens_per_s"]
            out["ratio_padded_tokens_per_s"] = out["diffembed_padded_tokens_per_s"] / out["peer_padded_tokens_per_s"]
            out["ratio_fastest_step"] = out["peer_fastest_step_s"] / out["diffembed_fastest_step_s"]
            out["ratio_fastest_step_padded_tokens_per_s"] = (out["diffembed_fastest_step_padded_tokens_per_s"]
                                                             / out["peer_fastest_step_padded_tokens_per_s"])
            out["peer_optimizer"] = best["peer"]["optimizer"]
            out["runs"] = runs
            print(json.dumps({k: v for k, v in out.items() if k != "runs"}), flush=True)
            results.append(out)
    adamw = adamw_step_cost(model_dir)
    print(json.dumps({"adamw_step": adamw}), flush=True)

    import accelerate
    import datasets
    import sentence_transformers
    import transformers

    payload = {"date": dt.date.today().isoformat(), "model": "all-MiniLM-L6-v2 (packaged)", "rows": source,
               "max_seq_length": MAX_LEN, "torch": torch.__version__, "transformers": transformers.__version__,
               "sentence_transformers": sentence_transformers.__version__, "accelerate": accelerate.__version__,
               "datasets": datasets.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
               "load_avg_start": load_start, "load_avg_end": os.getloadavg(), "adamw_step": adamw,
               "results": results}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
