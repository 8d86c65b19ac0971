"""Progress of a long run, persisted so that a killed run can be resumed. No torch here.

A run is a list of chunks, numbered in input order. The sidecar ``<output>.evo-partial`` holds JSON
lines: the first records the run's settings, each further line one completed chunk of results,
appended, flushed and fsynced as the chunk completes. In a distributed run (``distributed.py``)
rank r > 0 keeps its chunks in ``<output>.evo-partial.<r>`` beside it, and a rank's chunks come in
the order it finished them; a resumed run reads every such file, whatever the number of ranks that
wrote them. A file is created when its writer's first chunk completes, so a run that fails before
doing any work leaves no sidecar.
A kill can at worst leave a truncated last line, which resuming drops. Floats go through JSON's
``repr``, which reads back to the same float64 bits, so a resumed run writes byte-identical output.
An output on stdout, a device or a pipe (``-o /dev/null``, ``>(gzip > x)``) cannot be resumed: its
run keeps no progress file and writes as it goes (``open_progress``).
A writer holds an exclusive lock (``flock``) on its progress file, which it creates only where no
other exists: a second run of the same output at the same time (two terminals, a requeued job
whose first copy still runs) stops with one line instead of appending to, or replacing, the file
the first one writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator

from evo_cli.errors import InputError, OutputError

from .atomic import STDOUT, _umask, is_special, remove_stale_temporaries, temporary_prefix

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent runs of one output are not detected
    fcntl = None

SUFFIX = ".evo-partial"
_FORMAT = "evo-partial/1"


def sidecar_path(output: str | Path, rank: int = 0) -> Path:
    """The progress file of ``output`` written by ``rank`` (0: also the single-process run)."""
    return Path(str(output) + SUFFIX + (f".{rank}" if rank else ""))


def progress_files(output: str | Path) -> list[Path]:
    """Every progress file of ``output``: the sidecar and those of other ranks, rank 0 first."""
    return [p for p in _progress_paths(output) if p.is_file()]


def _progress_paths(output: str | Path) -> list[Path]:
    """Every existing path with a progress file's name (the sidecar, those of other ranks), rank 0 first."""
    main = sidecar_path(output)
    ranked = re.compile(re.escape(main.name) + r"\.(\d+)")
    try:
        names = os.listdir(main.parent)
    except OSError:
        return []
    found = sorted((int(m.group(1)), main.parent / n) for n in names if (m := ranked.fullmatch(n)))
    return [p for p in [main] + [p for _, p in found] if p.exists()]


def check_fresh(output: str | Path, resume: bool) -> None:
    """Refuse to start over an interrupted run's progress unless resuming it, and to resume a run
    whose output keeps no progress (a device or a pipe)."""
    if is_special(output):
        if resume:
            raise InputError(f"{output}: is a device or a pipe, and a run writing there keeps no progress to "
                             f"resume; rerun without --resume")
        return
    for path in _progress_paths(output):
        if not path.is_file():  # a folder, say: the run would fail there after loading the model
            raise InputError(f"{path} exists and is not a file: a run of {output} keeps its progress there; "
                             f"remove or rename it")
    files = progress_files(output)
    if files and not resume:
        raise InputError(f"{files[0]} exists: an earlier run of this output was interrupted; add --resume to "
                         f"continue it, or delete the file to start over")


def stored_settings(output: str | Path) -> dict | None:
    """The settings recorded by an interrupted run of ``output``, or None (no or unreadable progress file)."""
    for path in progress_files(output):
        try:
            with open(path, encoding="utf-8") as fh:
                head = json.loads(fh.readline())
            return head["settings"] if head.get("format") == _FORMAT else None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
    return None


def open_progress(output: str | Path | None, settings: dict, resume: bool, rank: int = 0) -> Checkpoint | None:
    """The ``Checkpoint`` of a run writing ``output``, or None where the output keeps no progress:
    stdout, a device or a pipe, written as the run goes (``resume`` there is an InputError)."""
    if output in STDOUT:
        if resume:
            raise InputError("resume needs an output file (progress is kept beside it)")
        return None
    if is_special(output):
        check_fresh(output, resume)
        return None
    return Checkpoint(output, settings, resume, rank)


def busy_output(path: str | Path) -> InputError:
    """The error for an output (its progress file, or parts folder) that another live run is writing."""
    return InputError(f"{path}: another evo run is writing this output now; wait for it to end (or stop it) "
                      "before running or resuming this one")


class Checkpoint:
    """Completed chunks of one run, keyed by the run's ``settings`` (a JSON-able dict).

    ``rank``: the writer's rank in a distributed run (0 or a single process write the sidecar)."""

    def __init__(self, output: str | Path, settings: dict, resume: bool, rank: int = 0):
        self.output = output
        self.path = sidecar_path(output, rank)
        self.rank = rank
        self.settings = json.loads(json.dumps(settings))
        self._where: dict[int, tuple[Path, int]] = {}  # chunk -> (file, offset of its line)
        self._fh = None
        check_fresh(output, resume)
        remove_stale_temporaries(self.path)
        if self.path.exists():
            self._fh = open(self.path, "ab")
            self._lock()  # before reload, which may cut the last line of the file
        # else the file is created with the first completed chunk: a run that fails before any work
        # (a bad input, say) leaves nothing behind
        try:
            self.reload()
        except BaseException:
            self.close()
            raise
        if self._fh is not None:
            self._fh.seek(0, os.SEEK_END)  # reload may have cut a line the kill left unfinished

    @property
    def done(self) -> int:
        """How many chunks are stored."""
        return len(self._where)

    def __contains__(self, chunk: int) -> bool:
        return chunk in self._where

    def reload(self) -> None:
        """Read which chunks every progress file holds (again: after other ranks finished theirs)."""
        self._where = {}
        for path in progress_files(self.output):
            self._load(path)

    def _load(self, path: Path) -> None:
        with open(path, "rb") as fh:
            data = fh.read()
        good = data.rfind(b"\n") + 1  # a line without its newline was cut by the kill
        lines = data[:good].split(b"\n")[:-1]
        try:
            head = json.loads(lines[0])
            assert head["format"] == _FORMAT
        except (IndexError, ValueError, KeyError, AssertionError, TypeError):
            raise InputError(f"{path}: not an evo progress file; delete it to start over") from None
        if head["settings"] != self.settings:
            diff = ", ".join(_differences(head["settings"], self.settings))
            raise InputError(f"{path}: cannot resume, the settings differ ({diff}); rerun the same command, "
                             f"or delete the file to start over")
        offset = len(lines[0]) + 1
        for i, line in enumerate(lines[1:]):
            try:
                chunk = json.loads(line)["chunk"]
                assert isinstance(chunk, int) and chunk >= 0
            except (ValueError, KeyError, TypeError, AssertionError):
                raise InputError(f"{path}:{i + 2}: corrupt progress line; delete the file to start over") from None
            if chunk in self._where:
                raise InputError(f"{path}:{i + 2}: chunk {chunk} stored twice; delete the progress files to start over")
            self._where[chunk] = (path, offset)
            offset += len(line) + 1
        if good != len(data) and path == self.path:  # only a file's own writer repairs it
            with open(path, "rb+") as fh:
                fh.truncate(good)

    def append(self, chunk: int, records: list) -> None:
        """Persist chunk number ``chunk`` with its per-record results."""
        if chunk in self._where:
            raise ValueError(f"chunk {chunk} is stored already")
        if self._fh is None:
            self._create()
        offset = self._fh.tell()
        try:
            self._fh.write(json.dumps({"chunk": chunk, "records": records}).encode() + b"\n")
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as err:
            # a cut last line is dropped on resuming: the chunks completed before are intact
            raise OutputError(f"cannot write {self.path}: {err.strerror or err}; the {self.done:,} chunk(s) of "
                              f"progress completed before are intact: fix this and rerun with --resume") from None
        self._where[chunk] = (self.path, offset)

    def _lock(self) -> None:
        """Take the exclusive lock of the open progress file, or stop: another run is writing it."""
        if fcntl is None:
            return
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.close()
            raise busy_output(self.path) from None
        except OSError:  # a file system without locks: run unguarded, as before
            pass

    def _create(self) -> None:
        """Create the progress file with its settings line, complete and locked before it appears under
        its name, and only where no other run created one meanwhile (a hard link fails if the name exists)."""
        header = (json.dumps({"format": _FORMAT, "settings": self.settings}, sort_keys=True) + "\n").encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)  # an output's missing folders are created
            fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(self.path), dir=self.path.parent)
        except OSError as err:
            raise OutputError(f"cannot write {self.path}: {err.strerror or err}") from None
        self._fh = os.fdopen(fd, "wb")
        try:
            self._lock()
            self._fh.write(header)
            self._fh.flush()
            os.fsync(fd)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                self.close()
                raise InputError(f"{self.path}: another evo run of this output started at the same time and "
                                 f"keeps its progress there; let it finish, or stop it and rerun with --resume") from None
            except OSError:  # no hard links here (some network or FAT file systems): rename instead
                os.replace(tmp, self.path)
        except OSError as err:
            self.close()
            raise OutputError(f"cannot write {self.path}: {err.strerror or err}") from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def get(self, chunk: int) -> list:
        """The stored records of ``chunk``."""
        path, offset = self._where[chunk]
        if self._fh is not None:
            self._fh.flush()
        with open(path, "rb") as fh:
            fh.seek(offset)
            return json.loads(fh.readline())["records"]

    def chunks(self) -> Iterator[list]:
        """The stored chunks' record lists in chunk order, up to the first chunk not stored."""
        k = 0
        while k in self._where:
            yield self.get(k)
            k += 1

    def close(self) -> None:
        if self._fh is not None:
            # after a failed write (full disk) the buffer cannot be flushed either: the error is already raised
            with contextlib.suppress(OSError):
                self._fh.close()
            self._fh = None

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, exc_type, *_) -> None:
        """Closed however the run ends; removed when it completes (its output then holds everything).
        The progress of a distributed run is removed by rank 0, which writes the output."""
        self.close()
        if exc_type is None and self.rank == 0:
            self.remove()

    def remove(self) -> None:
        """Delete every progress file of the output (the run is complete)."""
        self.close()
        for path in progress_files(self.output):
            path.unlink(missing_ok=True)


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _differences(old: dict, new: dict, prefix: str = ""):
    """``"key: old then, new now"`` for each setting that differs, nested settings by their own keys
    (a command's recorded header differs wherever one of its options does: only that option shows)."""
    for k in sorted(set(old) | set(new), key=str):
        a, b = old.get(k), new.get(k)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            yield from _differences(a, b, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}: {_short(a)} then, {_short(b)} now"
