"""Crash-safe writes: readable modes, and a group of files renamed only when all were written."""

import os
from pathlib import Path

import pytest

from diffembed.atomic import building_dir, default_file_mode, write_files, write_text
from diffembed.errors import DataFileError


def test_written_files_get_the_umask_mode_not_0600(tmp_path):
    target = tmp_path / "a.txt"
    write_text(target, "hello\n")
    assert target.read_text() == "hello\n"
    assert os.stat(target).st_mode & 0o777 == default_file_mode()


def test_failed_group_leaves_every_old_file_and_no_temp(tmp_path):
    first, second = tmp_path / "vecs.bin", tmp_path / "ids.txt"
    first.write_text("old vecs")
    second.write_text("old ids")

    def boom(tmp: str) -> None:
        raise OSError("disk full")

    with pytest.raises(DataFileError, match="cannot write .*ids.txt: disk full"):
        write_files({first: lambda tmp: Path(tmp).write_text("new vecs"), second: boom})
    assert first.read_text() == "old vecs" and second.read_text() == "old ids"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ids.txt", "vecs.bin"]


# --- folders -------------------------------------------------------------------------------------------

def _fill(folder: Path, tag: str, n: int = 3) -> None:
    for i in range(n):
        (folder / f"part-{i}.txt").write_text(f"{tag}-{i}")


def _content(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.iterdir())}


OLD = {f"part-{i}.txt": f"old-{i}" for i in range(3)}
NEW = {f"part-{i}.txt": f"new-{i}" for i in range(3)}


def test_building_dir_creates_replaces_and_leaves_nothing_beside(tmp_path):
    dest = tmp_path / "model"
    with building_dir(dest) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".model.")
        _fill(tmp, "old")
    assert _content(dest) == OLD
    assert os.stat(dest).st_mode & 0o777 == (default_file_mode() | 0o111) & 0o777  # not mkdtemp's 0700
    with building_dir(dest) as tmp:
        _fill(tmp, "new")
    assert _content(dest) == NEW and [p.name for p in tmp_path.iterdir()] == ["model"]


def test_building_dir_keeps_the_old_folder_when_the_block_fails(tmp_path):
    dest = tmp_path / "model"
    dest.mkdir()
    _fill(dest, "old")
    with pytest.raises(RuntimeError):
        with building_dir(dest) as tmp:
            _fill(tmp, "new", n=1)
            raise RuntimeError("export failed")
    assert _content(dest) == OLD and [p.name for p in tmp_path.iterdir()] == ["model"]


def test_publish_without_replace_keeps_the_existing_folder(tmp_path):
    dest = tmp_path / "cache"
    dest.mkdir()
    _fill(dest, "old")
    with building_dir(dest, replace=False) as tmp:
        _fill(tmp, "new")
    assert _content(dest) == OLD and [p.name for p in tmp_path.iterdir()] == ["cache"]
    empty = tmp_path / "empty"
    empty.mkdir()  # an empty folder counts as absent
    with building_dir(empty, replace=False) as tmp:
        _fill(tmp, "new")
    assert _content(empty) == NEW


def _replace_and_maybe_die(dest: Path, kill_at: int, fallback: bool) -> int:
    """In a forked child: replace dest with a new folder, dying (os._exit, no clean-up, as a kill)
    just before the kill_at-th file-system call. Returns the number of calls made when not killed."""
    import builtins
    import shutil

    import diffembed.atomic as atomic

    count = 0

    def counted(fn):
        def wrapper(*a, **k):
            nonlocal count
            count += 1
            if count == kill_at:
                os._exit(9)
            return fn(*a, **k)
        return wrapper

    for name in ("rename", "unlink", "rmdir", "mkdir", "chmod", "open"):
        setattr(os, name, counted(getattr(os, name)))
    builtins.open = counted(builtins.open)
    shutil.rmtree = counted(shutil.rmtree)
    atomic._exchange = counted((lambda a, b: False) if fallback else atomic._exchange)
    with atomic.building_dir(dest) as tmp:
        for i in range(3):
            (tmp / f"part-{i}.txt").write_text(f"new-{i}")
    return count


def _in_child(fn, *args) -> tuple[int, int]:
    """(exit status, fn's result or -1) of fn run in a forked child: patches die with it."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(r)
        result = fn(*args)
        os.write(w, str(result).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        out = f.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), int(out) if out else -1


@pytest.mark.parametrize("fallback", [False, True], ids=["exchange", "rename-aside"])
def test_a_kill_at_any_point_leaves_the_old_or_the_new_folder(tmp_path, fallback):
    """Kill the process before each file-system call of a folder replacement in turn. With the atomic
    exchange the final name always holds the old or the new folder, complete. The fallback (rename
    aside, then rename in) may leave the final name empty for a moment, but never loses the old
    folder: it is then under `.NAME.old-*`."""
    def fresh(i: int) -> Path:
        root = tmp_path / f"run{i}"
        (root / "model").mkdir(parents=True)
        _fill(root / "model", "old")
        return root / "model"

    code, n_calls = _in_child(_replace_and_maybe_die, fresh(0), 0, fallback)
    assert code == 0 and _content(tmp_path / "run0" / "model") == NEW
    assert n_calls >= 6  # files written, the publish, the clean-up: the loop below covers each gap
    seen = set()
    for k in range(1, n_calls + 1):
        dest = fresh(k)
        code, _ = _in_child(_replace_and_maybe_die, dest, k, fallback)
        assert code == 9, k
        if dest.exists():
            state = _content(dest)
            assert state in (OLD, NEW), (k, state)
            seen.add("old" if state == OLD else "new")
        else:
            assert fallback, f"killed before call {k}: {dest} is gone"
            aside = list(dest.parent.glob(".model.old-*"))
            assert len(aside) == 1 and _content(aside[0]) == OLD, k
            seen.add("aside")
    assert {"old", "new"} <= seen  # the kills fell both before and after the publish
    assert ("aside" in seen) == fallback
