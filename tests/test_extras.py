"""Optional dependencies (issue 11, item 7): the runtime works without any extra, and a command that
needs a missing one says which extra to install, in one `error:` line with exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from diffembed.errors import DiffembedError
from diffembed.extras import ALL_JOBS, EXTRAS, MissingExtraError, distribution, require, require_extra

REPO = Path(__file__).resolve().parents[1]
OPTIONAL = sorted({m for modules in EXTRAS.values() for m in modules})


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]


# ---------------------------------------------------------------------------- the table
def test_extras_table_matches_pyproject():
    """EXTRAS names, per extra, exactly the distributions pyproject.toml's extra installs."""
    extras = _pyproject()["optional-dependencies"]
    for extra, modules in EXTRAS.items():
        declared = {_canonical(Requirement(r).name) for r in extras[extra]}
        assert {_canonical(Requirement(distribution(m)).name) for m in modules} == declared, extra


def test_core_dependencies_hold_no_optional_package_and_all_is_every_job():
    project = _pyproject()
    core = {_canonical(Requirement(r).name) for r in project["dependencies"]}
    optional = {_canonical(Requirement(distribution(m)).name) for m in OPTIONAL}
    assert not core & optional
    jobs = project["optional-dependencies"]
    assert sorted(jobs["all"]) == sorted({r for extra in ALL_JOBS for r in jobs[extra]})


def test_the_readme_commands_install_every_extra():
    """demo.sh runs setup.sh (README: "installs everything"), test.sh runs setup.sh --dev."""
    setup = (REPO / "scripts" / "setup.sh").read_text(encoding="utf-8")
    assert 'extras="[all]"' in setup and '--dev) extras="[all,dev,ray]"' in setup
    assert '"${pip[@]}" -e ".${extras}"' in setup


# ---------------------------------------------------------------------------- require
def test_require_returns_the_module_when_installed():
    assert require("json", "index", "x") is json


def test_require_names_the_extra_when_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(MissingExtraError) as info:
        require("faiss", "index", "diffembed search")
    assert str(info.value) == "diffembed search needs faiss-cpu, which is not installed: pip install 'diffembed[index]'"
    assert isinstance(info.value, DiffembedError) and isinstance(info.value, ImportError)
    assert info.value.extra == "index" and info.value.module == "faiss"


def test_require_reports_a_broken_install_as_such(tmp_path, monkeypatch):
    """A package that is there but fails to import is not called "not installed"."""
    (tmp_path / "brokenpkg").mkdir()
    (tmp_path / "brokenpkg" / "__init__.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(MissingExtraError, match=r"^x needs brokenpkg, which cannot be imported \(ModuleNotFoundError: "
                                                r"No module named 'no_such_dependency_xyz'\): pip install 'diffembed\[eval\]'$"):
        require("brokenpkg", "eval", "x")


def test_require_extra_checks_every_module_without_importing(monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(MissingExtraError, match=r"needs prometheus-client, which is not installed: pip install 'diffembed\[serve\]'"):
        require_extra("serve", "diffembed serve")
    with pytest.raises(ValueError, match="unknown extra"):
        require("json", "server", "x")


def test_library_import_sites_name_their_extra(monkeypatch):
    """Beyond the CLI's up-front checks, the places that import an optional module use `require`."""
    import numpy as np

    from diffembed.index.bm25 import LexicalIndex
    from diffembed.training.pair_batches import cluster_labels

    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(MissingExtraError, match=r"cluster batches needs faiss-cpu.*'diffembed\[train\]'"):
        cluster_labels(np.ones((4, 3), dtype=np.float32), 2, seed=0)
    monkeypatch.setitem(sys.modules, "bm25s", None)
    with pytest.raises(MissingExtraError, match=r"BM25 search needs bm25s.*'diffembed\[index\]'"):
        LexicalIndex(store=None).search("query", 3)


# ---------------------------------------------------------------------------- in a process without them
# Runs in a fresh interpreter where every optional module is hidden (None in sys.modules makes
# `import` fail as if it were not installed; find_spec answers None). First the runtime, with all of
# them hidden; then each CLI case with only its one module hidden.
_SCRIPT = r"""
import contextlib, io, json, sys
cases = json.loads(sys.argv[1])
optional = json.loads(sys.argv[2])
for m in optional:
    sys.modules[m] = None

def cli(argv):
    from diffembed.cli.app import main
    sys.argv = ["diffembed", *argv]
    err = io.StringIO()
    code = 0
    with contextlib.redirect_stderr(err):
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, err.getvalue()

from diffembed import Embedder
vecs = Embedder(show_progress=False).encode(["a first text", "a second one"])
runtime = {"shape": list(vecs.shape), "encode": cli(cases["encode"]), "info": cli(cases["info"])}
out = {"runtime": runtime, "cli": []}
for argv, module in cases["cli"]:
    for m in optional:  # hide only this case's module
        if m == module:
            sys.modules[m] = None
        elif m in sys.modules and sys.modules[m] is None:
            del sys.modules[m]
    out["cli"].append(cli(argv))
sys.modules["mteb"] = None
try:
    import diffembed.eval.mteb_adapter
    out["mteb"] = "imported"
except Exception as exc:
    out["mteb"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
"""


# (case, argv with {tmp} for the test folder, extra whose modules are each hidden in turn)
COMMANDS = [
    ("search", ["search", "q", "--index", "{tmp}/idx"], "index"),
    ("serve", ["serve"], "serve"),
    ("serve-index", ["serve", "--index", "{tmp}/idx"], "index"),
    ("train", ["train", "-c", "{tmp}/recipe.yaml"], "train"),
    ("pretrain", ["pretrain", "-c", "{tmp}/recipe.yaml"], "train"),
    ("eval", ["eval", "{tmp}/dataset"], "eval"),
]
# (case id, argv, hidden module, extra the error must name)
CASES = [(f"{name}-{m}", argv, m, extra) for name, argv, extra in COMMANDS for m in EXTRAS[extra]] + [
    ("convert-gguf", ["convert-gguf", "{tmp}/m.gguf", "-o", "{tmp}/out"], "gguf", "train"),
    ("bulk-embed", ["bulk-embed", "{tmp}/in.txt", "-o", "{tmp}/bulk"], "ray", "ray"),
]


@pytest.fixture(scope="module")
def without_extras(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("extras")
    (tmp / "in.txt").write_text("one text\n")
    (tmp / "idx").mkdir()
    (tmp / "m.gguf").write_bytes(b"GGUF" + b"\x00" * 60)  # the magic bytes: convert-gguf gets to `import gguf`
    payload = {"encode": ["encode", f"{tmp}/in.txt", "-o", f"{tmp}/vecs.npy"], "info": ["info"],
               "cli": [[[a.format(tmp=tmp) for a in argv], module] for _, argv, module, _ in CASES]}
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, json.dumps(payload), json.dumps(OPTIONAL)],
                          capture_output=True, text=True, timeout=600, cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return tmp, {case[0]: (case, result) for case, result in zip(CASES, out["cli"])}, out


def test_runtime_needs_no_extra(without_extras):
    """`Embedder`, `diffembed encode` and `diffembed info` run with every optional module hidden."""
    import numpy as np

    tmp, _, out = without_extras
    runtime = out["runtime"]
    assert runtime["shape"] == [2, 384]
    assert runtime["encode"][0] == 0, runtime["encode"][1]
    assert runtime["info"][0] == 0, runtime["info"][1]
    assert np.load(tmp / "vecs.npy").shape == (1, 384)


@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_command_names_the_missing_extra(without_extras, case):
    _, results, _ = without_extras
    (_, argv, module, extra), (code, err) = results[case]
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].endswith(f"needs {distribution(module)}, which is not installed: pip install 'diffembed[{extra}]'"), lines[0]
    assert lines[0].startswith("error: "), lines[0]


def test_mteb_adapter_names_its_extra(without_extras):
    _, _, out = without_extras
    assert out["mteb"] == ("MissingExtraError: the MTEB adapter needs mteb, which is not installed: "
                           "pip install 'diffembed[mteb]'")
