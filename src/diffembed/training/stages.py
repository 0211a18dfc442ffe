"""Run a training recipe's stages in order: resolve each stage's starting point, skip stages that
already finished with the same settings, train the rest, and write a model card into every output.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from diffembed.atomic import write_text
from diffembed.training.run_log import read_log
from diffembed.training.train_config import StageConfig, TrainRecipe

PROVENANCE = "diffembed_train.json"


def resolve_start(recipe: TrainRecipe, stage: StageConfig, done: dict[str, Path]) -> str:
    src = stage.start_from
    if src == "base" or (src == "previous" and not done):
        return recipe.model.path
    if src == "previous":
        return str(list(done.values())[-1])
    if src in done:
        return str(done[src])
    return src  # a folder path (validated as such by the recipe)


def task_class(stage: StageConfig):
    """The training task for the stage's kind."""
    if stage.kind == "contextual":
        from diffembed.training.contextual import ContextualTask

        return ContextualTask
    from diffembed.training.contrastive import ContrastiveTask

    return ContrastiveTask


def finished(stage: StageConfig, fingerprint: str) -> bool:
    info = stage.out / "final" / PROVENANCE
    try:
        return json.loads(info.read_text(encoding="utf-8")).get("fingerprint") == fingerprint
    except (OSError, json.JSONDecodeError):
        return False


def run_recipe(recipe: TrainRecipe, *, resume: str | None = "auto", only: list[str] | None = None,
               on_log: Callable[[dict[str, Any]], None] | None = None,
               on_stage: Callable[[str, str], None] | None = None, progress: bool = True) -> dict[str, Path]:
    """Train every stage (or those in `only`, whose parents must then be finished); returns each
    stage's exported folder."""
    from diffembed.training.loop import run_training

    done: dict[str, Path] = {}
    lineage: dict[str, list[str]] = {}
    for stage in recipe.stages:
        start = resolve_start(recipe, stage, done)
        parent = next((name for name, path in done.items() if str(path) == start), None)
        lineage[stage.name] = [*lineage.get(parent, []), stage.name] if parent else [stage.name]
        final = stage.out / "final"
        if only and stage.name not in only:
            if not (final / PROVENANCE).is_file():
                from diffembed.errors import DiffembedError

                raise DiffembedError(f"stage {stage.name!r} has not finished; run it first (it is not in --only)")
            done[stage.name] = final
            continue
        task = task_class(stage)(stage, start, max_length=recipe.model.max_length,
                                 gradient_checkpointing=recipe.model.gradient_checkpointing,
                                 provenance={"base_model": recipe.model.path, "lineage": lineage[stage.name]})
        fp = task.fingerprint()
        task.provenance["fingerprint"] = fp
        if resume != "none" and finished(stage, fp):
            if on_stage:
                on_stage(stage.name, f"already finished ({final}); skipped")
            done[stage.name] = final
            continue
        if on_stage:
            on_stage(stage.name, f"training from {start}")
        out = run_training(task, stage, resume=resume, on_log=on_log, progress=progress)
        write_model_card(out, recipe, stage, lineage[stage.name], read_log(stage.out / "metrics.jsonl"))
        done[stage.name] = out
    return done


def write_model_card(folder: Path, recipe: TrainRecipe, stage: StageConfig, lineage: list[str],
                     log: list[dict[str, Any]]) -> None:
    """README.md: base model, the stages that led here, data, steps and dev figures."""
    by_name = {s.name: s for s in recipe.stages}
    lines = [f"# diffembed model: {stage.name}", "",
             f"Trained with `diffembed train` from base model `{recipe.model.path}`.", "",
             "| stage | kind | data | steps | batch | lr | temperature | quantization | matryoshka |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in lineage:
        s = by_name[name]
        lines.append(f"| {name} | {s.kind} | {', '.join(Path(p).name for p in s.data.train)} | {s.train.steps} | "
                     f"{s.batch.size} | {s.optim.lr:g} | {s.loss.temperature:g} | {s.loss.quantization} | "
                     f"{', '.join(map(str, s.loss.matryoshka_dims)) or '-'} |")
    try:
        info = json.loads((folder / PROVENANCE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        info = {}
    if info.get("stopped_early"):
        lines += ["", f"Stage `{stage.name}` stopped early at step {info['state']['step']} of {stage.train.steps}: "
                      f"its time budget (train.max_minutes = {stage.train.max_minutes}) ran out."]
    evals = [r for r in log if r.get("kind") == "eval" and "ndcg@10" in r]
    for mode in dict.fromkeys(r.get("mode") for r in evals):
        rows = [r for r in evals if r.get("mode") == mode]
        first, last = rows[0], rows[-1]
        how = f"{last['precision']}" + (f", {mode} chunks" if mode else "")
        lines += ["", f"Dev set `{stage.data.dev}` ({how}, the model's own output during training): "
                      f"nDCG@10 {first['ndcg@10']:.4f} at step {first['step']} -> {last['ndcg@10']:.4f} at step "
                      f"{last['step']}."]
    lines += ["", "Load it with `diffembed.Embedder(path)`, `diffembed serve --model path` or "
                  "`sentence_transformers.SentenceTransformer(path)`. Its int8 output is "
                  "`round(127 * tanh(x))` of the mean-pooled vector and binary is its sign "
                  "(`precision=\"int8\"` / `\"binary\"`).", ""]
    write_text(folder / "README.md", "\n".join(lines))
