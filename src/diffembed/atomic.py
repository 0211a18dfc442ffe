"""Crash-safe file writes: write to a temporary sibling, then rename into place.

A crash, a kill or a failed write leaves the previous file untouched; a group of files (e.g. vectors
and their ids) is renamed only once every one of them was written.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from diffembed.errors import DataFileError


def default_file_mode() -> int:
    """0666 minus the umask: what a plain open() gives (mkstemp's 0600 would hide files from others)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_files(writes: dict[Path, Callable[[str], None]]) -> None:
    """Call each writer on a temporary path; rename all into place only when all succeeded."""
    for path in writes:
        if Path(path).is_dir():
            raise DataFileError(f"cannot write {path}: it is a directory")
    temps: dict[Path, str] = {}
    try:
        for path, write in writes.items():
            path = Path(path)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
                os.close(fd)
                temps[path] = tmp
                write(tmp)
                os.chmod(tmp, default_file_mode())
            except OSError as exc:
                raise DataFileError(f"cannot write {path}: {exc}") from exc
        for path, tmp in temps.items():
            try:
                os.replace(tmp, path)
            except OSError as exc:
                raise DataFileError(f"cannot write {path}: {exc}") from exc
    finally:
        for tmp in temps.values():
            Path(tmp).unlink(missing_ok=True)


def write_text(path: str | Path, text: str | Iterable[str]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines([text] if isinstance(text, str) else text)

    write_files({Path(path): write})
