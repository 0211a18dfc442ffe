"""Run a training recipe's stages in order: resolve each stage's starting point, skip stages that
already finished with the same settings, train the rest (or merge, for `kind: merge`), write a model
card into every output, and score each output on the recipe's `evaluate` datasets as it is done.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from diffembed.atomic import write_text
from diffembed.training.checkpoint import settings_fingerprint
from diffembed.training.run_log import read_log
from diffembed.training.train_config import PretrainStageConfig, StageConfig, TrainRecipe

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


def check_attention(recipe: TrainRecipe) -> None:
    """``model.attention: causal`` needs a decoder base model (stages load their own start folders
    and check again)."""
    from diffembed.modeling.layout import read_model_spec
    from diffembed.modeling.loader import resolve_model_path
    from diffembed.training.contrastive import check_causal_backbone

    folder, name = resolve_model_path(recipe.model.path)
    check_causal_backbone(read_model_spec(folder), f"model.path {name}")


def task_class(stage: StageConfig):
    """The training task for the stage's kind."""
    if stage.kind == "contextual":
        from diffembed.training.contextual import ContextualTask

        return ContextualTask
    from diffembed.training.contrastive import ContrastiveTask

    return ContrastiveTask


def finished(stage: StageConfig | PretrainStageConfig, fingerprint: str) -> bool:
    return saved_fingerprint(stage.out / "final") == fingerprint


def skip_finished(stage: StageConfig | PretrainStageConfig, fingerprint: str, resume: str | None,
                  on_stage: Callable[[str, str], None] | None) -> bool:
    """True (and says so) when the stage already finished with these settings and may be skipped."""
    if resume == "none" or not finished(stage, fingerprint):
        return False
    if on_stage:
        on_stage(stage.name, f"already finished ({stage.out / 'final'}); skipped")
    return True


def saved_fingerprint(final: Path) -> str | None:
    try:
        return json.loads((final / PROVENANCE).read_text(encoding="utf-8")).get("fingerprint")
    except (OSError, json.JSONDecodeError):
        return None


def is_main_process() -> bool:
    """Rank 0 of a torchrun/accelerate launch, or a plain single process."""
    return os.environ.get("RANK", "0") == "0"


def run_recipe(recipe: TrainRecipe, *, resume: str | None = "auto", only: list[str] | None = None,
               on_log: Callable[[dict[str, Any]], None] | None = None,
               on_stage: Callable[[str, str], None] | None = None, progress: bool = True) -> dict[str, Path]:
    """Train (or merge) every stage (or those in `only`, whose parents must then be finished);
    returns each stage's exported folder. With `recipe.evaluate`, each folder is scored as it is
    done (results.jsonl) and the run ends with results.md and results.png in the output folder."""
    from diffembed.training.loop import run_training

    done: dict[str, Path] = {}
    fingerprints: dict[str, str] = {}
    lineage: dict[str, list[str]] = {}
    datasets: dict[str, Any] = {}  # evaluation datasets, loaded once per run (first: a bad one fails early)
    causal = recipe.model.attention == "causal"
    first = recipe.stages[0]
    if causal and (any(s.kind != "merge" and s.start_from == "base" for s in recipe.stages)
                   or (first.kind != "merge" and first.start_from == "previous")):
        check_attention(recipe)  # an encoder base with attention: causal fails before any stage runs
    if recipe.evaluate is not None and is_main_process():
        from diffembed.eval.datasets import load_dataset

        for path in recipe.evaluate.datasets:
            datasets[path] = load_dataset(path, split=recipe.evaluate.split)
    for stage in recipe.stages:
        final = stage.out / "final"
        if stage.kind == "merge":
            inputs = merge_inputs(stage, done)
            lineage[stage.name] = merge_lineage(stage, lineage)
            fp = merge_fingerprint(stage, inputs, fingerprints)
        else:
            start = resolve_start(recipe, stage, done)
            parent = next((name for name, path in done.items() if str(path) == start), None)
            lineage[stage.name] = [*lineage.get(parent, []), stage.name] if parent else [stage.name]
        if only and stage.name not in only:
            fp_saved = saved_fingerprint(final)
            if fp_saved is None:
                from diffembed.errors import DiffembedError

                raise DiffembedError(f"stage {stage.name!r} has not finished; run it first (it is not in --only)")
            done[stage.name], fingerprints[stage.name] = final, fp_saved
            _evaluate(recipe, stage.name, final, fp_saved, datasets, on_stage)
            continue
        if stage.kind == "merge":
            done[stage.name] = run_merge(recipe, stage, inputs, fp, lineage[stage.name], resume=resume,
                                         on_stage=on_stage, progress=progress)
            fingerprints[stage.name] = fp
            _evaluate(recipe, stage.name, final, fp, datasets, on_stage)
            continue
        if stage.kind == "pretrain":
            done[stage.name], fingerprints[stage.name] = run_pretrain_stage(
                recipe, stage, start, lineage[stage.name], fingerprints.get(parent) if parent else None,
                resume=resume, on_log=on_log, on_stage=on_stage, progress=progress)
            _evaluate(recipe, stage.name, final, fingerprints[stage.name], datasets, on_stage)
            continue
        task = task_class(stage)(stage, start, max_length=recipe.model.max_length,
                                 gradient_checkpointing=recipe.model.gradient_checkpointing,
                                 attention=recipe.model.attention,
                                 provenance={"base_model": recipe.model.path, "lineage": lineage[stage.name],
                                             **({"attention": recipe.model.attention} if causal else {}),
                                             **({"parent_fingerprint": fingerprints[parent]} if parent else {})})
        fp = task.fingerprint()
        task.provenance["fingerprint"] = fp
        fingerprints[stage.name] = fp
        if skip_finished(stage, fp, resume, on_stage):
            done[stage.name] = final
            _evaluate(recipe, stage.name, final, fp, datasets, on_stage)
            continue
        if on_stage:
            on_stage(stage.name, f"training from {start}")
        out = run_training(task, stage, resume=resume, on_log=on_log, progress=progress)
        if is_main_process():
            write_model_card(out, recipe, stage, lineage[stage.name], read_log(stage.out / "metrics.jsonl"))
        done[stage.name] = out
        _evaluate(recipe, stage.name, out, fp, datasets, on_stage)
    if recipe.evaluate is not None and is_main_process():
        from diffembed.training.recipe_results import write_summary

        table, plot = write_summary(recipe, fingerprints)
        if on_stage:
            on_stage("results", f"wrote {table} and {plot}")
    return done


def _evaluate(recipe: TrainRecipe, name: str, folder: Path, fingerprint: str, datasets: dict[str, Any],
              on_stage: Callable[[str, str], None] | None) -> None:
    if recipe.evaluate is None or not is_main_process():
        return
    if not recipe.evaluate.scores(name):
        return
    from diffembed.training.recipe_results import evaluate_stage

    evaluate_stage(recipe, name, folder, fingerprint, datasets=datasets, on_stage=on_stage)


# -------------------------------------------------------------------------------------- pretrain
def pretrain_config(recipe: TrainRecipe, stage: PretrainStageConfig, start: str):
    """The `diffembed pretrain` config the stage runs: its sections, the start as model.path, and
    <output_dir>/<name> as the output folder."""
    from diffembed.training.pretrain_config import ModelSection, PretrainConfig

    opts = stage.model.model_dump()
    if opts["gradient_checkpointing"] is None:
        opts["gradient_checkpointing"] = recipe.model.gradient_checkpointing
    sections = stage.model_dump(include={"objective", "data", "optim", "schedule", "train", "checkpoint", "eval"})
    return PretrainConfig.model_validate({"output_dir": stage.output_dir, "model": ModelSection(path=start, **opts)
                                         .model_dump(), **sections})


def pretrain_fingerprints(cfg, parent_fingerprint: str | None) -> tuple[str, str]:
    """(resume, finished): what a checkpoint must share to be continued (`diffembed pretrain`'s stream
    fingerprint: model, objective, data, seed) and what a finished stage must share to be skipped
    (that plus steps, batch shape, optimizer and schedule). Both carry the parent stage's fingerprint,
    so a retrained parent retrains (and refuses the old checkpoints of) this stage."""
    from diffembed.training.pretrain import stream_fingerprint

    resume_keep = {"stream": stream_fingerprint(cfg), "parent": parent_fingerprint}
    resume_fp = settings_fingerprint(resume_keep)
    t = cfg.train
    keep = {"resume": resume_fp, "steps": t.steps, "micro_batch_size": t.micro_batch_size, "grad_accum": t.grad_accum,
            "precision": t.precision, "optim": cfg.optim.model_dump(mode="json"),
            "schedule": cfg.schedule.model_dump(mode="json")}
    return resume_fp, settings_fingerprint(keep)


def run_pretrain_stage(recipe: TrainRecipe, stage: PretrainStageConfig, start: str, lineage: list[str],
                       parent_fingerprint: str | None, *, resume: str | None,
                       on_log: Callable[[dict[str, Any]], None] | None, on_stage: Callable[[str, str], None] | None,
                       progress: bool) -> tuple[Path, str]:
    """Stage 0 with `diffembed pretrain`'s task and loop into <stage>/final (skipped when finished with
    the same settings, resumed from its newest checkpoint when interrupted); returns (folder, fingerprint)."""
    from diffembed.training.loop import run_training
    from diffembed.training.pretrain import PretrainTask

    cfg = pretrain_config(recipe, stage, start)
    resume_fp, fp = pretrain_fingerprints(cfg, parent_fingerprint)
    final = stage.out / "final"
    if skip_finished(stage, fp, resume, on_stage):
        return final, fp
    info = {"stage": stage.model_dump(mode="json"), "start_from": start, "base_model": recipe.model.path,
            "lineage": lineage, **({"parent_fingerprint": parent_fingerprint} if parent_fingerprint else {}),
            "fingerprint": fp}

    class StageTask(PretrainTask):
        name = stage.name

        def fingerprint(self) -> str:
            return resume_fp

        def export(self, model, state, *, stopped_early: bool, world_size: int) -> Path:
            out = super().export(model, state, stopped_early=stopped_early, world_size=world_size)
            write_text(out / PROVENANCE, json.dumps({**info, "state": asdict(state), "stopped_early": stopped_early,
                                                     "world_size": world_size}, indent=2) + "\n")
            write_model_card(out, recipe, stage, lineage, read_log(stage.out / "metrics.jsonl"))
            return out

    if on_stage:
        on_stage(stage.name, f"pretraining ({stage.objective.kind}) from {start}")
    return run_training(StageTask(cfg), cfg, resume=resume, on_log=on_log, progress=progress), fp


# ----------------------------------------------------------------------------------------- merge
def merge_inputs(stage: StageConfig, done: dict[str, Path]) -> list[Path]:
    """Each input's folder: an earlier stage's final/ or the folder as given."""
    return [done[src] if src in done else Path(src).expanduser() for src in stage.inputs]


def merge_lineage(stage: StageConfig, lineage: dict[str, list[str]]) -> list[str]:
    """The stages behind every input, each once, in order, then the merge itself."""
    names = [n for src in stage.inputs for n in lineage.get(src, [])]
    return [*dict.fromkeys(names), stage.name]


def folder_fingerprint(folder: Path) -> str:
    """A folder that is no stage of this recipe: its saved fingerprint, else its files' names,
    sizes and modification times."""
    saved = saved_fingerprint(folder)
    if saved:
        return saved
    if not folder.is_dir():
        from diffembed.errors import ModelLoadError

        raise ModelLoadError(f"merge input {folder} is no model folder")
    files = sorted((p.relative_to(folder).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
                   for p in folder.rglob("*") if p.is_file())
    return settings_fingerprint(files)


def merge_fingerprint(stage: StageConfig, inputs: list[Path], fingerprints: dict[str, str]) -> str:
    parts = [fingerprints[src] if src in fingerprints else folder_fingerprint(path)
             for src, path in zip(stage.inputs, inputs)]
    keep = {"kind": "merge", "inputs": parts, "method": stage.method, "t": stage.t, "weights": stage.weights}
    return settings_fingerprint(keep)


def describe_merge(stage: StageConfig) -> str:
    names = ", ".join(f"`{src}`" for src in stage.inputs)
    if stage.method == "slerp":
        a, b = stage.inputs
        return f"SLERP (t = {stage.t:g}; t = 0 gives `{a}`, 1 gives `{b}`) of {names}"
    how = f"weights {', '.join(f'{w:g}' for w in stage.weights)}" if stage.weights else "equal weights"
    return f"mean ({how}) of {names}"


def run_merge(recipe: TrainRecipe, stage: StageConfig, inputs: list[Path], fingerprint: str, lineage: list[str],
              *, resume: str | None, on_stage: Callable[[str, str], None] | None, progress: bool) -> Path:
    """Merge the inputs into <stage>/final with `diffembed merge`'s code, unless already done."""
    final = stage.out / "final"
    if skip_finished(stage, fingerprint, resume, on_stage):
        return final
    if not is_main_process():  # rank 0 merges; the others wait for its folder
        while not finished(stage, fingerprint):
            time.sleep(2)
        return final
    from diffembed.training.merge import merge_folders

    if on_stage:
        on_stage(stage.name, f"merging: {describe_merge(stage).replace('`', '')}")
    result = merge_folders(inputs, final, method="slerp" if stage.method == "slerp" else "linear",
                           t=stage.t if stage.method == "slerp" else None, weights=stage.weights,
                           progress=progress and sys.stderr.isatty())
    info = {"stage": stage.model_dump(mode="json"), "inputs": dict(zip(stage.inputs, map(str, inputs))),
            "merge": result.to_dict(), "base_model": recipe.model.path, "lineage": lineage,
            "fingerprint": fingerprint}
    write_model_card(final, recipe, stage, lineage, [])
    write_text(final / PROVENANCE, json.dumps(info, indent=2) + "\n")  # last: it marks the stage finished
    return final


def write_model_card(folder: Path, recipe: TrainRecipe, stage: StageConfig, lineage: list[str],
                     log: list[dict[str, Any]]) -> None:
    """README.md: base model, the stages that led here, data, steps and dev figures."""
    by_name = {s.name: s for s in recipe.stages}
    if stage.kind == "merge":
        intro = (f"Made with `diffembed train` from base model `{recipe.model.path}`: stage `{stage.name}` is the "
                 f"{describe_merge(stage)}, merged tensor by tensor with `diffembed merge`'s code.")
    elif stage.kind == "pretrain":
        ob = stage.objective
        how = (f"masked diffusion (t ~ U({ob.eps:g}, 1))" if ob.kind == "diffusion"
               else f"MNTP (mask rate {ob.mask_rate:g})")
        intro = (f"Made with `diffembed train` from base model `{recipe.model.path}`: stage `{stage.name}` is stage 0, "
                 f"continued pretraining with {how} under bidirectional attention, by `diffembed pretrain`'s code. "
                 "The LM head is dropped; the embedding stages of the recipe start from this backbone.")
    else:
        intro = f"Trained with `diffembed train` from base model `{recipe.model.path}`."
    causal = recipe.model.attention == "causal"
    if causal:
        intro += (" Attention stays causal (`model.attention: causal`; config.json records `is_causal: true`) and "
                  "the vector is the last token's state, an EOS the tokenizer appends to every text.")
    lines = [f"# diffembed model: {stage.name}", "", intro, "",
             "| stage | kind | data | steps | batch | lr | temperature | quantization | matryoshka |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in lineage:
        s = by_name[name]
        if s.kind == "merge":
            what = (f"SLERP t={s.t:g} of " if s.method == "slerp" else "mean of ") + ", ".join(s.inputs)
            lines.append(f"| {name} | merge | {what} | - | - | - | - | - | - |")
            continue
        if s.kind == "pretrain":
            files = ", ".join(Path(p).name for p in s.data.train)
            rows = s.train.micro_batch_size * s.train.grad_accum
            lines.append(f"| {name} | pretrain ({s.objective.kind}) | {files} | {s.train.steps} | "
                         f"{rows} x {s.data.seq_len} tokens | {s.optim.lr:g} | - | - | - |")
            continue
        lines.append(f"| {name} | {s.kind} | {', '.join(Path(p).name for p in s.data.train)} | {s.train.steps} | "
                     f"{s.batch.size} | {s.optim.lr:g} | {s.loss.temperature:g} | {s.loss.quantization} | "
                     f"{', '.join(map(str, s.loss.matryoshka_dims)) or '-'} |")
    try:
        info = json.loads((folder / PROVENANCE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        info = {}
    if info.get("stopped_early") and stage.train is not None:
        lines += ["", f"Stage `{stage.name}` stopped early at step {info['state']['step']} of {stage.train.steps}: "
                      f"its time budget (train.max_minutes = {stage.train.max_minutes}) ran out."]
    for held in dict.fromkeys(r["set"] for r in log if r.get("kind") == "eval" and "eval_loss" in r):
        rows = [r for r in log if r.get("kind") == "eval" and r.get("set") == held]
        first, last = rows[0], rows[-1]
        lines += ["", f"Held-out `{held}` rows (fixed masks): loss {first['eval_loss']:.4f}, masked-token accuracy "
                      f"{first['eval_acc']:.4f} at step {first['step']} -> {last['eval_loss']:.4f}, "
                      f"{last['eval_acc']:.4f} at step {last['step']}."]
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
                  f"`round(127 * tanh(x))` of the {'last-token' if causal else 'mean-pooled'} vector and "
                  "binary is its sign "
                  "(`precision=\"int8\"` / `\"binary\"`).", ""]
    write_text(folder / "README.md", "\n".join(lines))
