"""Crash-safe writes: readable modes, and a group of files renamed only when all were written."""

import os
from pathlib import Path

import pytest

from diffembed.atomic import default_file_mode, write_files, write_text
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
