"""The shared training loop with a task that is not stage 0: a least-squares fit, so what the loop
does (steps, accumulation, logged sums, eval and checkpoint cadence, resume, export) is checked on
its own, apart from any objective."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from diffembed.errors import DiffembedError
from diffembed.training.checkpoint import TrainerState, list_checkpoints
from diffembed.training.loop import StepData, StepMetrics, TrainingTask, run_training
from diffembed.training.run_log import read_log

W_TRUE = torch.tensor([[2.0, -1.0, 0.5]])


class Fit(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 1, bias=False)
        nn.init.zeros_(self.lin.weight)

    def forward(self, x, y):
        err = self.lin(x) - y
        return {"loss": (err ** 2).mean(), "rows": torch.tensor(float(x.shape[0])),
                "abs_err": err.abs().sum().detach()}


class FitTask(TrainingTask):
    name = "fit"
    metrics = StepMetrics(keys=("rows", "abs_err"), derive=lambda s: {"mae": s["abs_err"] / s["rows"]})

    def __init__(self, out: Path, seed: int = 0):
        self.out, self.seed, self.exported = out, seed, []

    def build_model(self):
        return Fit()

    def fingerprint(self):
        return f"fit-{self.seed}"

    def start(self, state, accelerator):
        self.started_at = state.rows_consumed

    def rows(self, first: int, n: int):
        """Row i is a pure function of i, so a resumed run sees the rows an uninterrupted one does."""
        x = torch.stack([torch.randn(3, generator=torch.Generator().manual_seed(1000 * self.seed + first + i))
                         for i in range(n)])
        return x, x @ W_TRUE.T

    def next_step(self, state, accelerator):
        batches = []
        for j in range(2):  # two micro-batches of 4 rows
            x, y = self.rows(state.rows_consumed + 4 * j, 4)
            batches.append({"x": x, "y": y})
        return StepData(micro_batches=batches, rows=8, tokens=24)

    def evaluate(self, model, accelerator):
        x, y = self.rows(10**6, 32)
        with torch.no_grad():
            return [{"set": "dev", "eval_loss": float(model(x, y)["loss"])}]

    def export(self, model, state: TrainerState, *, stopped_early, world_size):
        folder = self.out / "final"
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(model.lin.weight.detach().clone(), folder / "w.pt")
        self.exported.append((state.step, stopped_early))
        return folder


def cfg(out: Path, steps: int = 6, **train):
    return SimpleNamespace(
        output_dir=str(out),
        train=SimpleNamespace(steps=steps, precision="fp32", seed=0, distributed="ddp", log_every=1, peak_tflops=None,
                              threads=None, max_minutes=None, **train),
        optim=SimpleNamespace(lr=0.3, weight_decay=0.0, betas=(0.9, 0.98), adam_eps=1e-8, max_grad_norm=None),
        schedule=SimpleNamespace(kind="constant", warmup_steps=0),
        checkpoint=SimpleNamespace(every=3, keep=2),
        eval=SimpleNamespace(every=3),
        model_dump=lambda **_: {"output_dir": str(out)},
    )


@pytest.fixture(autouse=True)
def _plain_dump(monkeypatch):
    monkeypatch.setattr("diffembed.config_io.dump_config", lambda c: "fit: true\n")


def test_loop_trains_logs_derived_metrics_checkpoints_and_exports(tmp_path):
    task = FitTask(tmp_path)
    final = run_training(task, cfg(tmp_path), progress=False)
    log = read_log(tmp_path / "metrics.jsonl")
    train = [r for r in log if r["kind"] == "train"]
    evals = [r for r in log if r["kind"] == "eval"]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in evals] == [0, 3, 6] and all(r["set"] == "dev" for r in evals)
    assert evals[-1]["eval_loss"] < 0.5 * evals[0]["eval_loss"]  # every row is seeded: deterministic
    assert all(r["tokens"] == 24 * r["step"] for r in train)
    # mae is derived from the summed per-micro-batch numbers: 8 rows per step
    assert all(r["mae"] > 0 for r in train)
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step-00000003", "step-00000006"]
    assert final == tmp_path / "final" and task.exported == [(6, False)]


def test_loop_resume_continues_the_same_run(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    run_training(FitTask(full), cfg(full), progress=False)
    run_training(FitTask(part), cfg(part, steps=3), progress=False)
    resumed = FitTask(part)
    run_training(resumed, cfg(part), progress=False)
    assert resumed.started_at == 3 * 8
    def losses(out):
        return [(r["step"], r["loss"]) for r in read_log(out / "metrics.jsonl") if r["kind"] == "train"]

    assert [s for s, _ in losses(part)] == [1, 2, 3, 4, 5, 6]
    assert [v for _, v in losses(part)] == pytest.approx([v for _, v in losses(full)], rel=1e-6)
    assert torch.equal(torch.load(part / "final" / "w.pt"), torch.load(full / "final" / "w.pt"))


def test_loop_refuses_to_resume_another_run(tmp_path):
    run_training(FitTask(tmp_path, seed=0), cfg(tmp_path, steps=3), progress=False)
    with pytest.raises(DiffembedError, match="other model, objective or data settings"):
        run_training(FitTask(tmp_path, seed=1), cfg(tmp_path), progress=False)


def test_a_checkpoint_that_cannot_be_written_is_a_clear_error_and_keeps_the_earlier_ones(tmp_path, monkeypatch):
    """A full disk while saving step 6: a DiffembedError naming the way on, no partial folder left
    taking space, and step 3 intact so that re-running resumes and finishes the same run."""
    from accelerate import Accelerator

    real = Accelerator.save_state

    def disk_full(self, output_dir, **kw):
        if output_dir.endswith("step-00000006.tmp"):
            (Path(output_dir) / "model.safetensors").write_bytes(b"partial")
            raise OSError(28, "No space left on device")
        return real(self, output_dir, **kw)

    monkeypatch.setattr(Accelerator, "save_state", disk_full)
    with pytest.raises(DiffembedError, match=r"cannot write checkpoint step-00000006.*No space left.*resumes from step-00000003"):
        run_training(FitTask(tmp_path), cfg(tmp_path), progress=False)
    ckpts = tmp_path / "checkpoints"
    assert [p.name for p in ckpts.iterdir()] == ["step-00000003"]  # no hidden partial folder either
    monkeypatch.setattr(Accelerator, "save_state", real)
    resumed = FitTask(tmp_path)
    run_training(resumed, cfg(tmp_path), progress=False)
    assert resumed.started_at == 3 * 8 and resumed.exported == [(6, False)]


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    """checkpoint.keep prunes older checkpoints after each save (six steps, every 2, keep 2)."""
    run = cfg(tmp_path)
    run.checkpoint = SimpleNamespace(every=2, keep=2)
    run_training(FitTask(tmp_path), run, progress=False)
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step-00000004", "step-00000006"]
