"""Turn a run's metrics.jsonl into the figures a reader checks: curves (PNG) and a summary table.

The step-0 evaluation is the baseline every curve is read against: the same decoder made
bidirectional, with no continued pretraining, scored on the same held-out rows with the same masks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffembed.extras import require
from diffembed.training.run_log import read_log


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    train = [r for r in records if r["kind"] == "train"]
    evals: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r["kind"] == "eval":
            evals.setdefault(r.get("set", "heldout"), []).append(r)
    out: dict[str, Any] = {"steps": train[-1]["step"] if train else 0,
                           "tokens": train[-1]["tokens"] if train else 0,
                           "elapsed_s": train[-1]["elapsed_s"] if train else 0.0, "sets": {}}
    if train:
        rates = [r["tokens_per_s"] for r in train[1:]] or [train[0]["tokens_per_s"]]  # step 1 pays warm-up
        out["median_tokens_per_s"] = sorted(rates)[len(rates) // 2]
    for name, rows in evals.items():
        first, last = rows[0], rows[-1]
        out["sets"][name] = {"start_step": first["step"], "start_loss": first["eval_loss"],
                             "start_acc": first["eval_acc"], "end_step": last["step"],
                             "end_loss": last["eval_loss"], "end_acc": last["eval_acc"]}
    return out


def markdown_table(summary: dict[str, Any]) -> str:
    lines = ["| held-out set | step 0 loss | step 0 masked acc | final step | final loss | final masked acc |",
             "|---|---|---|---|---|---|"]
    for name, s in summary["sets"].items():
        lines.append(f"| {name} | {s['start_loss']:.3f} | {s['start_acc']:.3f} | {s['end_step']} | "
                     f"{s['end_loss']:.3f} | {s['end_acc']:.3f} |")
    return "\n".join(lines)


def plot_run(metrics: str | Path, out_png: str | Path, title: str = "masked-diffusion pretraining") -> None:
    matplotlib = require("matplotlib", "train", "the training report plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(Path(metrics))
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    train = [r for r in records if r["kind"] == "train"]
    if train:
        steps, losses = [r["step"] for r in train], [r["loss"] for r in train]
        ax_loss.plot(steps, losses, color="0.8", lw=0.8, label="train (one step per log line)")
        w = min(10, len(losses))
        smooth = [sum(losses[max(0, i - w + 1):i + 1]) / len(losses[max(0, i - w + 1):i + 1]) for i in range(len(losses))]
        ax_loss.plot(steps, smooth, color="0.4", lw=1.2, label=f"train (mean of last {w} log lines)")
    for name in dict.fromkeys(r.get("set", "heldout") for r in records if r["kind"] == "eval"):
        rows = [r for r in records if r["kind"] == "eval" and r.get("set", "heldout") == name]
        steps = [r["step"] for r in rows]
        ax_loss.plot(steps, [r["eval_loss"] for r in rows], marker="o", ms=3, label=f"{name} set")
        ax_acc.plot(steps, [r["eval_acc"] for r in rows], marker="o", ms=3, label=f"{name} set")
    ax_loss.set(xlabel="step", ylabel="masked-diffusion loss (1/t weighted, per token)", title="loss")
    ax_acc.set(xlabel="step", ylabel="accuracy on masked tokens", title="masked-token accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title + " (step 0 = bidirectional, no continued pretraining)", fontsize=10)
    fig.tight_layout()
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
