"""`diffembed pretrain`: masked-diffusion continued pretraining from a YAML recipe."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from diffembed.cli.common import err_console
from diffembed.extras import require_extra


def pretrain(
    ctx: typer.Context,
    config: Path = typer.Option(None, "--config", "-c", help="Recipe YAML (see recipes/)."),
    resume: str = typer.Option("auto", "--resume",
                               help="auto: continue from the newest checkpoint in output_dir; none: start over; "
                                    "or a checkpoint folder."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate the config and the data paths, print the "
                                                          "resolved config, and stop."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or per-log console lines."),
) -> None:
    """Continue pretraining a decoder LM as a bidirectional masked-diffusion denoiser.

    Override any field after the options: `diffembed pretrain -c recipe.yaml train.steps=200 optim.lr=3e-4`
    (or `--train.steps=200`). Runs on one device as is, and on several with
    `torchrun --nproc_per_node=N -m diffembed pretrain ...` or `accelerate launch -m diffembed pretrain ...`.
    Writes output_dir/metrics.jsonl, output_dir/checkpoints/step-*/ and the exported backbone in
    output_dir/final/ (loadable by Embedder and sentence-transformers).
    """
    require_extra("train", "diffembed pretrain")
    from diffembed.config_io import dump_config, load_config
    from diffembed.training.pretrain_config import PretrainConfig

    if config is None and not ctx.args:
        raise typer.BadParameter("give a recipe with --config (and/or key=value overrides)", param_hint="--config")
    cfg = load_config(PretrainConfig, config, ctx.args)
    if dry_run:
        from diffembed.training.text_stream import list_files

        n_train = len(list_files(cfg.data.train))
        n_eval = len(list_files(cfg.data.eval)) if cfg.data.eval else 0
        typer.echo(dump_config(cfg), nl=False)
        held = f"{cfg.data.heldout_fraction:.1%} of documents held out" if cfg.data.heldout_fraction else "none held out"
        err_console.print(f"config ok: {n_train} training files ({held}), {n_eval} separate eval files")
        return

    from diffembed.training.pretrain import run_pretrain

    def show(record: dict) -> None:
        if quiet:
            return
        if record["kind"] == "eval":
            err_console.print(f"step {record['step']}: {record['set']} loss {record['eval_loss']:.4f}, "
                              f"masked acc {record['eval_acc']:.4f}", highlight=False)

    final = run_pretrain(cfg, resume=resume, on_log=show, progress=not quiet)
    if os.environ.get("RANK", "0") == "0":  # once, not once per process under torchrun
        typer.echo(str(final))
