"""Crash-safe file writes: write to a temporary sibling, then rename into place.

A crash, a kill or a failed write leaves the previous file untouched; a group of files (e.g. vectors
and their ids) is renamed only once every one of them was written.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from diffembed.errors import DataFileError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """0666 minus the umask: what a plain open() gives (mkstemp's 0600 would hide files from others)."""
    return 0o666 & ~_umask()


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


# --- Folders -----------------------------------------------------------------------------------------
# A folder (a checkpoint, an exported model, a converted model, a BM25 cache, a Parquet output) is
# filled under a hidden sibling name and published by rename. Replacing an existing folder uses
# Linux's renameat2(RENAME_EXCHANGE), which swaps the two names in one step, so a kill at any moment
# leaves the old folder or the new one at the final name, never neither; the swapped-out old folder
# is then deleted. Where the exchange is unsupported (another OS, some network filesystems) the old
# folder is first renamed aside to `.NAME.old-*`: a kill between the two renames leaves the old
# folder there and the new one under its staging name, and nothing is deleted before the new folder
# is in place.

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def staging_dir(dest: str | Path) -> Path:
    """A new empty hidden folder beside ``dest`` (same filesystem, so publishing is a rename), with
    the permissions a plain mkdir gives (mkdtemp's 0700 would hide published folders from others)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths; False where the system cannot (the caller falls back)."""
    import ctypes
    import errno

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def publish_dir(tmp: str | Path, dest: str | Path, *, replace: bool = True) -> bool:
    """Move the complete folder ``tmp`` to ``dest``. Returns True when ``tmp`` became ``dest``.

    With ``replace=False`` an existing ``dest`` wins: ``tmp`` is deleted and False returned (a cache
    that another process has just built, or one whose content is fixed by its name).
    """
    import shutil

    tmp, dest = Path(tmp), Path(dest)
    try:
        os.rename(tmp, dest)  # atomic where dest is absent or an empty folder
        return True
    except OSError:
        if not dest.exists():
            raise
    if not replace:
        shutil.rmtree(tmp, ignore_errors=True)
        return False
    if _exchange(tmp, dest):
        shutil.rmtree(tmp, ignore_errors=True)  # now the old folder
        return True
    aside = dest.parent / f".{dest.name}.old-{os.getpid()}-{os.urandom(4).hex()}"
    os.rename(dest, aside)
    try:
        os.rename(tmp, dest)
    except OSError:
        os.rename(aside, dest)
        raise
    shutil.rmtree(aside, ignore_errors=True)
    return True


@contextmanager
def building_dir(dest: str | Path, *, replace: bool = True) -> Iterator[Path]:
    """Fill the yielded staging folder; it is published as ``dest`` when the block ends without an
    error, and removed otherwise (a kill can leave a hidden ``.NAME.*.tmp`` sibling, never a partial
    ``dest``)."""
    import shutil

    tmp = staging_dir(dest)
    try:
        yield tmp
        publish_dir(tmp, dest, replace=replace)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already once published
