"""Atomic outputs: write to a temporary file beside the target, rename over it on success.

A crash, kill or error never leaves a half-written output under the final name."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path

STDOUT = ("-", "", None)


def check_output_path(path: str | Path | None) -> None:
    """Fail early, with one line, for an output that cannot be written as a file: an existing
    directory, or a parent path that runs through a file. Missing parent directories are fine
    (they are created when the output is written); stdout (``-``) is always fine."""
    from evo_cli.errors import InputError

    if path in STDOUT:
        return
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected an output file name")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"{path}: cannot create it, {parent} is not a directory")
            break


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None):
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed to ``path``.

    For writers that take a file name (pyarrow, pysam). The temporary keeps ``path``'s suffix (or
    ``suffix``) so that format detection by extension still works."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix if suffix is not None else "".join(path.suffixes),
                               dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        # mkstemp creates 0600; give the output the permissions a plain open() would
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | Path | None, mode: str = "w", encoding: str | None = "utf-8"):
    """Open ``path`` for writing atomically; ``-``/None means stdout (written as it goes)."""
    if path in STDOUT:
        yield sys.stdout if "b" not in mode else sys.stdout.buffer
        return
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=None if "b" in mode else encoding) as fh:
            yield fh
