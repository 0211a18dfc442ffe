"""Read JSON Lines with errors that name the file and line, for every reader in diffembed."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

from diffembed.errors import DataFileError


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line; blank lines are skipped. A name ending
    in .gz is read through gzip."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"missing file {path}")
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataFileError(f"{path}:{n}: malformed JSON ({exc.msg})") from exc
                if not isinstance(row, dict):
                    raise DataFileError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
                yield n, row
    except UnicodeDecodeError as exc:
        raise DataFileError(f"{path} is not valid UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except (gzip.BadGzipFile, EOFError) as exc:  # not gzip, or truncated
        raise DataFileError(f"cannot read {path}: {exc}") from exc
