"""`diffembed train`: contrastive stages from a YAML recipe."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from diffembed.cli.common import err_console
from diffembed.extras import require_extra


def train(
    ctx: typer.Context,
    config: Path = typer.Option(None, "--config", "-c", help="Recipe YAML (see recipes/)."),
    resume: str = typer.Option("auto", "--resume",
                               help="auto: skip finished stages and continue an interrupted one from its newest "
                                    "checkpoint; none: retrain every stage from scratch."),
    only: list[str] = typer.Option(None, "--only", help="Run only this stage (repeatable); its parents must have "
                                                        "finished."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate the recipe and its data, print the resolved "
                                                          "recipe, and stop."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or per-evaluation lines."),
) -> None:
    """Train an embedding model through the recipe's stages (pretrain, pairs, triplets, contextual, merge).

    Override any field after the options, stages by index:
    `diffembed train -c recipe.yaml stages.0.train.steps=50 output_dir=runs/try`.
    `backbone=diffusion|mntp|bidirectional|causal` picks the backbone arm (stage 0's objective, or no
    stage 0 with bidirectional or causal attention); `{backbone}` in output_dir becomes the value.
    Each stage writes output_dir/<stage>/metrics.jsonl, checkpoints/ and final/ (a sentence-transformers
    folder that Embedder, serve and SentenceTransformer load). A pretrain stage (stage 0) runs
    `diffembed pretrain` on a decoder with the same sections. A merge stage SLERPs (or averages) earlier
    stages; an `evaluate` section scores every stage as it finishes into output_dir/results.jsonl,
    results.md and results.png.
    """
    require_extra("train", "diffembed train")
    from diffembed.config_io import dump_config, load_config
    from diffembed.training.train_config import TrainRecipe

    if config is None and not ctx.args:
        raise typer.BadParameter("give a recipe with --config (and/or key=value overrides)", param_hint="--config")
    recipe = load_config(TrainRecipe, config, ctx.args)
    names = [s.name for s in recipe.stages]
    unknown = [o for o in only or [] if o not in names]
    if unknown:
        raise typer.BadParameter(f"no stage named {', '.join(unknown)} (stages: {', '.join(names)})",
                                 param_hint="--only")
    if dry_run:
        from diffembed.training.contextual import read_documents
        from diffembed.training.pair_batches import read_pairs

        typer.echo(dump_config(recipe), nl=False)
        if recipe.backbone is not None:
            stage0 = [f"{s.name} ({s.objective.kind})" for s in recipe.stages if s.kind == "pretrain"]
            err_console.print(f"backbone {recipe.backbone}: model.attention {recipe.model.attention}, stage 0: "
                              f"{', '.join(stage0) or 'none'}; output {recipe.output_dir}", highlight=False)
        for stage in recipe.stages:
            if stage.kind == "merge":
                how = f"SLERP t={stage.t:g}" if stage.method == "slerp" else "mean"
                names = {s.name for s in recipe.stages}
                absent = [src for src in stage.inputs if src not in names and not Path(src).expanduser().is_dir()]
                if absent:
                    from diffembed.errors import ModelLoadError

                    raise ModelLoadError(f"merge stage {stage.name!r}: input folder {absent[0]} does not exist")
                err_console.print(f"stage {stage.name}: {how} merge of {', '.join(stage.inputs)}", highlight=False)
                continue
            if stage.kind == "pretrain":
                from diffembed.training.text_stream import list_files

                d, t = stage.data, stage.train
                first = stage is recipe.stages[0]
                start = recipe.model.path if stage.start_from == "base" or (first and stage.start_from == "previous") \
                    else stage.start_from
                n_eval = len(list_files(d.eval)) if d.eval else 0
                held = f"{d.heldout_fraction:.1%} of documents held out" if d.heldout_fraction else "none held out"
                err_console.print(f"stage {stage.name}: {stage.objective.kind} pretraining from {start}, "
                                  f"{len(list_files(d.train))} training files ({held}), {n_eval} separate eval "
                                  f"files, {t.steps} steps of {t.micro_batch_size * t.grad_accum} x {d.seq_len} "
                                  "tokens", highlight=False)
                continue
            if stage.kind == "contextual":
                what = f"{len(read_documents(stage.data.train))} training documents"
            else:
                what = f"{len(read_pairs(stage.data.train, stage.data.negatives))} training pairs"
            dev = f", dev {stage.data.dev}" if stage.data.dev else ""
            err_console.print(f"stage {stage.name}: {what}, {stage.train.steps} steps of {stage.batch.size}{dev}",
                              highlight=False)
        if recipe.evaluate is not None:
            from diffembed.eval.datasets import load_dataset

            ev = recipe.evaluate
            for path in ev.datasets:
                ds = load_dataset(path, split=ev.split)
                modes = ", ".join(ev.modes) if ds.kind == "contextual" else "naive"
                err_console.print(f"evaluate after each stage: {path} ({ds.kind}, {len(ds.queries)} queries; "
                                  f"{modes}; {', '.join(ev.precisions)})", highlight=False)
        return

    from diffembed.training.stages import run_recipe

    def show_eval(record: dict) -> None:
        if not quiet and record["kind"] == "eval" and "eval_loss" in record:  # a pretrain stage
            err_console.print(f"step {record['step']}: {record['set']} loss {record['eval_loss']:.4f}, "
                              f"masked acc {record['eval_acc']:.4f}", highlight=False)
        if not quiet and record["kind"] == "eval" and "ndcg@10" in record:
            mode = f", {record['mode']}" if record.get("mode") else ""
            err_console.print(f"step {record['step']}: dev nDCG@10 {record['ndcg@10']:.4f} "
                              f"({record['precision']}{mode})", highlight=False)

    def show_stage(name: str, what: str) -> None:
        err_console.print(f"[bold]stage {name}[/]: {what}", highlight=False)

    outputs = run_recipe(recipe, resume=resume, only=only or None, on_log=show_eval, on_stage=show_stage,
                         progress=not quiet)
    if os.environ.get("RANK", "0") == "0":
        for name, path in outputs.items():
            typer.echo(f"{name}\t{path}")
