"""Atomic outputs: write to a temporary file beside the target, rename over it on success.

A crash, kill or error never leaves a half-written output under the final name. Temporaries are
named ``.<output name>.evo-tmp-<pid>-<random><suffix>``: one whose process is gone (a SIGKILLed
run) is removed by the next run that checks or writes the same output."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path

STDOUT = ("-", "", None)
_TMP_TAG = ".evo-tmp-"
# errors of the file system rather than of the data: reported as one line naming the output
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def check_output_path(path: str | Path | None, inputs: tuple = ()) -> None:
    """Fail early, with one line naming ``path``, for an output that cannot be written as a file: an
    existing directory, a parent path that runs through a file, a directory we may not write in, a
    read-only existing file (refused, never replaced), or a file that is one of ``inputs`` (paths;
    None entries ignored). Missing parent directories are fine (they are created when the output is
    written); stdout (``-``) is always fine. A ``.vcf.gz`` (``.vcf.bgz``) output's ``.tbi`` index is an output too.
    Also removes stale temporaries of ``path`` (see above)."""
    from evo_cli.errors import OutputError

    if path in STDOUT or is_special(path):
        return  # stdout, or a device or a pipe written in place: nothing is created beside it
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a directory, expected an output file name")
    _check_location(path)
    if path.exists():
        for other in inputs:
            if other not in STDOUT and Path(other).exists() and os.path.samefile(path, other):
                raise OutputError(f"{path}: the output is also an input ({other}); choose another output file")
        _refuse_read_only(path)
    # a bgzipped VCF output replaces its tabix index too (vcf.write_vcf)
    index = Path(f"{path}.tbi")
    if path.name.endswith((".vcf.gz", ".vcf.bgz")) and index.exists():
        _refuse_read_only(index)
    remove_stale_temporaries(path)


def _check_location(path: Path) -> None:
    """The nearest existing parent of ``path`` must be a directory we may write in (missing ones are
    created when the output is written)."""
    from evo_cli.errors import OutputError

    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"{path}: cannot create it, {parent} is not a directory")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise OutputError(f"{path}: cannot write it, the directory {parent} is not writable")
            break


def _refuse_read_only(path: Path) -> None:
    from evo_cli.errors import OutputError

    # the mode, not os.access: root may write anything, yet a chmod 444 output is meant to stay
    if path.is_file() and not path.stat().st_mode & 0o222 or not os.access(path, os.W_OK):
        raise OutputError(f"{path}: the output exists and is read-only; evo does not replace read-only files "
                          f"(make it writable or choose another output)")


def output_dir(path: str | Path) -> Path:
    """The directory an output directory ``path`` names: a symbolic link stands for its target (created
    if missing), as the shell's ``>`` writes through a link to a file; the output is built beside the
    target and renamed onto it, which a rename onto the link itself cannot do."""
    path = Path(path)
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def check_output_dir(path: str | Path) -> None:
    """``check_output_path`` for an output directory (``output_dir(path)``): it must not exist or be empty,
    and its location must be writable. Also removes stale temporary directories of it."""
    from evo_cli.errors import OutputError

    if str(path) == "":  # else Path("") is ".", the working directory
        raise OutputError("no output folder given: the path is empty")
    path = output_dir(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: is a file; the output is a folder that must not exist, or be empty")
    if path.exists() and any(path.iterdir()):
        raise OutputError(f"{path}: exists and is not an empty directory")
    _check_location(path)
    remove_stale_temporaries(path)


def temporary_prefix(path: str | Path) -> str:
    """The name prefix of this process's temporaries for ``path`` (``tempfile``'s ``prefix``)."""
    return f".{Path(path).name}{_TMP_TAG}{os.getpid()}-"


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Delete the temporary files and directories of ``path`` left by runs that no longer exist;
    returns them."""
    path = Path(path)
    removed = []
    with contextlib.suppress(OSError):
        for tmp in path.parent.glob(f".{path.name}{_TMP_TAG}*"):
            pid = tmp.name[len(path.name) + 1 + len(_TMP_TAG):].split("-", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                with contextlib.suppress(OSError):
                    if tmp.is_dir() and not tmp.is_symlink():
                        shutil.rmtree(tmp)
                    else:
                        tmp.unlink()
                    removed.append(tmp)
    return removed


def written_by_another_run(folder: str | Path) -> bool:
    """Whether ``folder`` holds a temporary of another process that is still running (a run writing there)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return False
    pids = {n.split(_TMP_TAG, 1)[1].split("-", 1)[0] for n in names if _TMP_TAG in n}
    return any(pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)) for pid in pids)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, under another user
        return True
    return True


def write_failure(path: str | Path, err: OSError) -> str:
    """One line for a failed write of ``path``, saying whether its progress file is there for --resume."""
    from .partial import sidecar_path

    why = err.strerror or str(err)
    line = f"cannot write {path}: {why}"
    progress = sidecar_path(path)
    if Path(progress).exists():
        line += f"; the progress file {progress} is intact: fix this and rerun with --resume"
    return line


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None):
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed to ``path``.

    For writers that take a file name (pyarrow, pysam). The temporary keeps ``path``'s suffix (or
    ``suffix``) so that format detection by extension still works. A full disk, a read-only or
    otherwise unwritable location ends in ``OutputError`` naming ``path`` (not the temporary). An
    existing device, FIFO or socket (``-o /dev/null``) is yielded itself and written in place."""
    from evo_cli.errors import OutputError

    path = Path(path)
    if is_special(path):
        # /dev/null, /dev/stdout, a FIFO or >(process substitution): written in place, as `> path`
        # would; a rename over it would replace the device or pipe with a regular file
        try:
            yield path
        except OSError as err:
            if err.errno not in _WRITE_ERRNOS:
                raise
            raise OutputError(write_failure(path, err)) from None
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(path),
                                   suffix=suffix if suffix is not None else "".join(path.suffixes), dir=path.parent)
        os.close(fd)
    except OSError as err:
        raise OutputError(write_failure(path, err)) from None
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        # mkstemp creates 0600; give the output the permissions a plain open() would
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as err:
        if err.errno not in _WRITE_ERRNOS:
            raise
        raise OutputError(write_failure(path, err)) from None
    finally:
        tmp.unlink(missing_ok=True)


def output_name_error(path: str | Path, message: str) -> Exception:
    """The error for an output named with no known format: an existing directory is named as such
    (``OutputError``, exit 1, as ``check_output_path`` says), anything else is the command line's
    fault (``OptionError`` with ``message``, exit 2)."""
    from evo_cli.errors import OptionError, OutputError

    if Path(path).is_dir():
        return OutputError(f"{path}: is a directory, expected an output file name")
    return OptionError(message)


def is_special(path: str | Path | None) -> bool:
    """Whether ``path`` is written in place, as the shell's ``>`` would, not replaced by a renamed
    temporary: an existing device, FIFO or socket, or a link under /dev or /proc (``/dev/stdout``,
    ``/dev/fd/1``, ``/proc/self/fd/1`` lead to whatever the descriptor is, a regular file when the
    shell redirected it: replacing the name would replace the link, not write the file). Files in a
    directory such as /dev/shm are ordinary outputs."""
    if path in STDOUT:
        return False
    if os.path.islink(path) and os.path.abspath(path).startswith(("/dev/", "/proc/")):
        return True
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def same_destination(a: str | Path, b: str | Path) -> bool:
    """Whether two output arguments name one destination: stdout (``-`` or ``/dev/stdout``), or one file
    however spelled (``a.tsv``, ``./sub/../a.tsv``)."""
    a, b = ("/dev/stdout" if p in STDOUT else p for p in (a, b))
    return Path(a).resolve() == Path(b).resolve()


def check_seekable(path: str | Path | None, what: str) -> None:
    """Refuse stdout, a device or a pipe as the output of a writer that seeks (Parquet, bigWig)."""
    from evo_cli.errors import InputError, OptionError

    if path in STDOUT:  # the command line's fault; a device or a pipe is found on the file system
        raise OptionError(f"{what} output needs a file name (-o PATH), not stdout")
    if is_special(path):
        raise InputError(f"{path}: is a device or a pipe; {what} output needs a regular file (its writer seeks)")


def _umask() -> int:
    """The process umask. Linux reports it in /proc; elsewhere it is read by setting and restoring it,
    which another thread creating a file at that moment would see."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
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


@contextlib.contextmanager
def atomic_open_text(path: str | Path | None):
    """``atomic_open`` for text, gzip-compressed when ``path`` ends in ``.gz`` (a table or a track named
    so). The gzip header names the output, not its temporary, and has no time: a rerun or a resumed
    run writes the same bytes."""
    if path in STDOUT or not str(path).lower().endswith(".gz"):
        with atomic_open(path, "w") as fh:
            yield fh
        return
    import gzip
    import io

    with atomic_path(path) as tmp, open(tmp, "wb") as raw, \
            io.TextIOWrapper(gzip.GzipFile(Path(path).name, "wb", fileobj=raw, mtime=0), encoding="utf-8") as fh:
        yield fh
