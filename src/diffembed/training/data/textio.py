"""Read the (often compressed) text files the builders take their data from."""

from __future__ import annotations

import bz2
import gzip
import lzma
import shutil
import subprocess
from pathlib import Path

from diffembed.errors import DataFileError

_APT_HELPER = "/usr/lib/apt/apt-helper"


def strip_compression(name: str) -> str:
    for ext in (".gz", ".xz", ".bz2", ".lz4", ".zst"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def read_bytes(path: Path) -> bytes:
    """File content, decompressed by its suffix. lz4/zst (apt's own list format) go through apt's
    ``apt-helper cat-file`` or the ``lz4``/``zstd`` tools, as Python's standard library lacks them."""
    name = path.name
    try:
        if name.endswith(".gz"):
            return gzip.decompress(path.read_bytes())
        if name.endswith(".xz"):
            return lzma.decompress(path.read_bytes())
        if name.endswith(".bz2"):
            return bz2.decompress(path.read_bytes())
        if name.endswith((".lz4", ".zst")):
            return _external_cat(path)
        return path.read_bytes()
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise DataFileError(f"cannot read {path}: {exc}") from exc


def _external_cat(path: Path) -> bytes:
    tool = "lz4" if path.name.endswith(".lz4") else "zstd"
    commands = []
    if Path(_APT_HELPER).is_file():
        commands.append([_APT_HELPER, "cat-file", str(path)])
    if shutil.which(tool):
        commands.append([tool, "-dc", str(path)])
    if not commands:
        raise DataFileError(f"cannot read {path}: neither apt-helper nor the {tool} tool is available to "
                            "decompress it")
    errors = []
    for cmd in commands:
        done = subprocess.run(cmd, capture_output=True)
        if done.returncode == 0:
            return done.stdout
        errors.append(done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["failed"])
    raise DataFileError(f"cannot read {path}: {errors[-1][0]}")


def read_text(path: Path) -> str:
    """UTF-8 text (undecodable bytes replaced: a stray byte in one man page should not stop a build)."""
    return read_bytes(path).decode("utf-8", errors="replace")
