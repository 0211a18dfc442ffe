"""Options and output helpers shared by the CLI commands."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer
from rich.console import Console

err_console = Console(stderr=True)

ModelOpt = typer.Option(None, "--model", "-m", help="Model folder or hub id (default: packaged all-MiniLM-L6-v2).")
DeviceOpt = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: cuda if available).")
DtypeOpt = typer.Option(None, "--dtype", help="auto, float32, bfloat16 or float16.")


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2) + "\n")
