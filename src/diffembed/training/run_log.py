"""Training metrics as JSON Lines (one object per logged step or evaluation) plus MFU arithmetic.

On resume the log is cut back to the checkpoint's step, so the file always reads as one clean curve.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from diffembed.atomic import write_text

# Dense bf16 peak, TFLOP/s, by device-name substring (vendor datasheets).
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0}


class JsonlLog:
    def __init__(self, path: Path, enabled: bool = True):
        self.path = path
        self.enabled = enabled

    def truncate_after(self, step: int) -> None:
        if not self.enabled or not self.path.exists():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:
                break  # a torn last line from a crash
        write_text(self.path, [k + "\n" for k in kept])  # atomic: a crash here keeps the old log

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def flops_per_token(n_params: int, n_layers: int, hidden: int, seq_len: int) -> float:
    """Training FLOPs per token: 6N for the matmuls (forward + backward) plus 12*L*d*T for attention
    scores and values (bidirectional: every token attends to the whole row)."""
    return 6.0 * n_params + 12.0 * n_layers * hidden * seq_len


def peak_flops(device: torch.device, override_tflops: float | None) -> float | None:
    """Per-device peak FLOP/s, or None where unknown (CPU): MFU is then not reported."""
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_BF16_TFLOPS.items():
        if key in name:
            return tflops * 1e12
    return None
