"""Run `diffembed` in-process through its real entry point and check user-error output."""

from __future__ import annotations

import re
import sys

import diffembed.cli.app as cli_app

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def run_cli(args: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    """Run `diffembed ARGS` in-process through the real entry point -> (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["diffembed", *[str(a) for a in args]])
    capsys.readouterr()  # drop anything captured before this call
    code = 0
    try:
        cli_app.main()
    except SystemExit as exc:
        if exc.code is None:
            code = 0
        elif isinstance(exc.code, int):
            code = exc.code
        else:  # sys.exit("message") -> exit status 1
            code = 1
    out, err = capsys.readouterr()
    return code, ANSI.sub("", out), ANSI.sub("", err)


def assert_clean_error(code: int, err: str, *needles: str) -> str:
    """A user error: exit 2, one `error: ...` line on stderr, no traceback. Returns the message."""
    assert code == 2, f"expected exit 2, got {code}; stderr:\n{err}"
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected a one-line error, got:\n{err}"
    assert lines[0].startswith("error:"), err
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]
