"""Typed configs from YAML plus `key.path=value` overrides, validated before any work starts.

Every training command reads one recipe file and lets the command line change single fields
(`optim.lr=3e-4`, `--train.steps=20`). Values are parsed as YAML scalars, so `1e-4`, `true`, `null`
and `[a, b]` mean what they look like. Validation errors name the field by its dotted path, so a
typo in a 40-line recipe points at the line to fix.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from diffembed.errors import DiffembedError

M = TypeVar("M", bound=BaseModel)


class ConfigError(DiffembedError):
    """A recipe file or an override is malformed or fails validation."""


def parse_overrides(args: Sequence[str]) -> dict[str, Any]:
    """`a.b=1`, `--a.b=1` or `--a.b 1` -> {"a.b": 1}."""
    out: dict[str, Any] = {}
    items = list(args)
    i = 0
    while i < len(items):
        raw = items[i]
        key = raw[2:] if raw.startswith("--") else raw
        if "=" in key:
            key, text = key.split("=", 1)
        elif raw.startswith("--") and i + 1 < len(items) and not items[i + 1].startswith("--"):
            text = items[i + 1]
            i += 1
        else:
            raise ConfigError(f"override '{raw}' is not of the form key.path=value")
        key = key.strip().replace("-", "_")
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override '{raw}' has an empty field name")
        out[key] = _parse_value(key, text)
        i += 1
    return out


_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)$")


def _parse_value(key: str, text: str) -> Any:
    if not text.strip():
        return ""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key}: cannot parse value {text!r} ({exc})") from exc
    if isinstance(value, str) and _FLOAT.match(value.strip()):
        return float(value)  # YAML 1.1 reads 3e-4 (no dot) as a string
    return value


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set each dotted key. A list is entered by index (`stages.0.lr`) or, for a list of named
    sections, by name (`stages.pairs.lr`)."""
    for dotted, value in overrides.items():
        node: Any = data
        parts = dotted.split(".")
        for depth, part in enumerate(parts[:-1]):
            where = ".".join(parts[: depth + 1])
            if isinstance(node, list):
                node = _list_item(node, part, dotted, where)
                continue
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, (dict, list)):
                raise ConfigError(f"override {dotted}: {where} is a value, not a section")
            node = child
        if isinstance(node, list):
            raise ConfigError(f"override {dotted}: cannot replace one item of a list; set a field inside it")
        node[parts[-1]] = value
    return data


def _list_item(items: list, key: str, dotted: str, where: str) -> dict:
    if key.isdigit() and int(key) < len(items):
        item = items[int(key)]
    else:
        item = next((x for x in items if isinstance(x, dict) and x.get("name") == key), None)
    if not isinstance(item, dict):
        names = [str(x.get("name")) for x in items if isinstance(x, dict) and "name" in x]
        raise ConfigError(f"override {dotted}: {where} names no item (use an index below {len(items)}"
                          + (f" or one of {', '.join(names)})" if names else ")"))
    return item


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        # a tagged union's tag (e.g. a recipe stage's "kind:pretrain") is no field: leave it out
        where = ".".join(str(p) for p in err["loc"] if not str(p).startswith("kind:")) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling)"
        lines.append(f"  {where}: {msg}")
    return f"invalid config ({source}):\n" + "\n".join(lines)


def load_config(model: type[M], path: str | Path | None = None, overrides: Sequence[str] | dict[str, Any] = ()) -> M:
    """Read YAML (optional), apply overrides, validate. Relative paths in the recipe stay as written;
    the caller decides what they are relative to."""
    data = read_yaml(path) if path is not None else {}
    ov = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    apply_overrides(data, ov)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path) if path else "overrides")) from None


def dump_config(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
