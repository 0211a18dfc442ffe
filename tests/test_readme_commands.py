"""Every `diffembed ...` command shown in README.md's shell blocks is real.

For each one: `--help` of its (sub)command exits 0 and lists every option the README passes, so a
renamed or dropped option fails here. Pretrain commands also run as `--dry-run` (config and data
validated, nothing trained): a README example that fails validation, like `train.steps=20` on a
recipe with 20 warmup steps once did, fails here. Commands that need a model, data or minutes
(encode, index add, serve, demo, ...) are covered by their own tests; here only their surface is.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

import diffembed.cli.app as cli_app
from cli_helpers import run_cli

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


def readme_commands(text: str) -> list[list[str]]:
    """`diffembed` commands of the ```bash blocks, as argv lists (comments dropped, `\\` lines joined)."""
    commands = []
    for block in re.findall(r"^```(?:bash|sh|shell)\n(.*?)^```", text, flags=re.S | re.M):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            argv = shlex.split(line, comments=True)
            if argv and argv[0] == "diffembed":
                commands.append(argv[1:])
    return commands


COMMANDS = readme_commands(README.read_text(encoding="utf-8"))


def command_path(argv: list[str]):
    """The leading words of argv that name a (sub)command, and that (click) command."""
    cmd = typer.main.get_command(cli_app.app)
    path: list[str] = []
    for word in argv:
        sub = getattr(cmd, "commands", {}).get(word)  # groups have .commands (typer vendors click)
        if sub is None:
            break
        cmd = sub
        path.append(word)
    return path, cmd


def test_readme_shows_the_commands_this_test_relies_on():
    """The extraction itself works: a parsing slip must not turn this module into a no-op."""
    shown = {" ".join(command_path(argv)[0]) for argv in COMMANDS}
    assert {"encode", "info", "demo", "index add", "search", "serve", "bulk-embed", "data build", "eval",
            "pretrain", "convert-gguf", ""} <= shown, shown
    assert any("--dry-run" in argv for argv in COMMANDS if argv[:1] == ["pretrain"])
    # a continued line is one command
    assert any(argv[:2] == ["eval", "data/squad-contextual"] and "--plot" in argv for argv in COMMANDS)


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(a)[:70] for a in COMMANDS])
def test_readme_command_help_lists_its_options(argv, monkeypatch, capsys):
    path, cmd = command_path(argv)
    code, out, err = run_cli([*path, "--help"], monkeypatch, capsys)
    assert code == 0, err
    assert "Usage:" in out
    known = {opt for param in cmd.params for opt in (*param.opts, *param.secondary_opts)} | {"--help"}
    for word in argv[len(path):]:
        if not word.startswith("-"):
            continue
        name = word.split("=", 1)[0]
        if path == ["pretrain"] and "." in name:  # --section.field=value: a config override
            continue
        assert name in known, f"`diffembed {' '.join(argv)}`: {name} is not an option of `{' '.join(path)}`"


PRETRAIN = [argv for argv in COMMANDS if argv[:1] == ["pretrain"]]


def _missing_data(argv: list[str]) -> list[str]:
    """Data paths of the command's recipe that this machine lacks (the Debian docs are optional)."""
    from diffembed.config_io import ConfigError, load_config
    from diffembed.training.pretrain_config import PretrainConfig

    recipe = argv[argv.index("-c") + 1]
    try:
        cfg = load_config(PretrainConfig, REPO / recipe, [w for w in argv[1:] if "=" in w and not w.startswith("-")])
    except ConfigError:
        return []  # the dry run below reports it
    return [p for p in (*cfg.data.train, *cfg.data.eval) if not Path(p).exists()]


@pytest.mark.parametrize("argv", PRETRAIN, ids=[" ".join(a)[:70] for a in PRETRAIN])
def test_readme_pretrain_command_passes_dry_run(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)  # the README's recipe paths are relative to the repository root
    args = list(argv) + ([] if "--dry-run" in argv else ["--dry-run"])
    missing = _missing_data(argv)
    if missing:  # same config, stand-in text in place of the absent documentation folders
        print(f"data of the recipe absent here ({', '.join(missing)}): dry-run with stand-in folders")
        for name in ("train", "eval"):
            (tmp_path / name).mkdir()
            (tmp_path / name / "a.txt").write_text("Some documentation text. " * 50, encoding="utf-8")
        args += [f"data.train=[{tmp_path / 'train'}]", f"data.eval=[{tmp_path / 'eval'}]"]
    before = sorted(p.name for p in (REPO / "runs").iterdir()) if (REPO / "runs").is_dir() else []
    code, out, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, f"`diffembed {' '.join(argv)}` failed validation:\n{err}"
    assert "config ok" in err
    after = sorted(p.name for p in (REPO / "runs").iterdir()) if (REPO / "runs").is_dir() else []
    assert after == before  # a dry run writes nothing
