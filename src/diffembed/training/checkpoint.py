"""Crash-safe training checkpoints: written under a hidden name, renamed when complete.

A checkpoint folder holds accelerate's state (model weights as safetensors, optimizer, scheduler,
RNG states of every process) and ``trainer_state.json`` (step, rows of data consumed, tokens seen).
Only folders named ``step-NNNNNNNN`` that contain ``trainer_state.json`` count, so a run killed while
saving resumes from the previous complete checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from diffembed.atomic import publish_dir
from diffembed.errors import DiffembedError

STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^step-(\d{8})$")


@dataclass
class TrainerState:
    step: int = 0
    rows_consumed: int = 0
    tokens_seen: int = 0
    elapsed_s: float = 0.0
    fingerprint: str = ""  # of the settings that define the data stream and the model (see pretrain)


def settings_fingerprint(settings) -> str:
    """A short, order-independent hash of JSON-able settings: what resumes, skips and merges compare."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def checkpoint_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:08d}"


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _NAME.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def read_state(folder: Path) -> TrainerState:
    try:
        data = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        return TrainerState(**{k: data[k] for k in TrainerState.__dataclass_fields__ if k in data})
    except (OSError, json.JSONDecodeError, TypeError) as exc:
        raise DiffembedError(f"checkpoint {folder} is unreadable: {exc}") from exc


def save_checkpoint(accelerator, root: Path, state: TrainerState, keep: int) -> Path:
    """Every process writes its part into a temporary folder; the main process renames it."""
    final = checkpoint_dir(root, state.step)
    tmp = root / f".{final.name}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp), safe_serialization=True)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            (tmp / STATE_FILE).write_text(json.dumps(asdict(state), indent=2), encoding="utf-8")
            publish_dir(tmp, final)
    except Exception as exc:  # noqa: BLE001 - safetensors' own error type for a full disk, OSError for the rest
        raise _unwritten(root, tmp, final, exc) from exc
    if accelerator.is_main_process:
        for old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _unwritten(root: Path, tmp: Path, final: Path, exc: BaseException) -> DiffembedError:
    """A checkpoint that could not be written (most often a full disk: one of a 135M decoder with its
    AdamW state is about 1.6 GB): drop the partial folder, which only takes space, and say how to go
    on. Earlier checkpoints are untouched, so re-running resumes from the newest of them."""
    shutil.rmtree(tmp, ignore_errors=True)
    kept = list_checkpoints(root)
    free = shutil.disk_usage(root).free / 2**30 if root.exists() else float("nan")
    resume = f"re-running the same command resumes from {kept[-1].name}" if kept else \
        "no earlier checkpoint exists, so re-running starts the stage again"
    return DiffembedError(f"cannot write checkpoint {final.name} in {root} ({free:.1f} GiB free there): {exc}. "
                          f"Free some space (or lower checkpoint.keep); {resume}")


def resolve_resume(root: Path, resume: str | None) -> Path | None:
    """`auto`: the newest complete checkpoint if any; `none`/None: start fresh; else a folder."""
    if resume is None or resume == "none":
        return None
    if resume == "auto":
        found = list_checkpoints(root)
        return found[-1] if found else None
    folder = Path(resume)
    if not (folder / STATE_FILE).is_file():
        raise DiffembedError(f"--resume {resume}: not a complete checkpoint folder (no {STATE_FILE})")
    return folder
