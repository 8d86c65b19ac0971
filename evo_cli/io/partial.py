"""Progress of a long run, persisted so that a killed run can be resumed. No torch here.

The sidecar ``<output>.evo-partial`` holds JSON lines: the first records the run's settings, each
further line one completed chunk of results, appended, flushed and fsynced as the chunk completes.
The file is created when the first chunk completes, so a run that fails before doing any work
leaves no sidecar.
A kill can at worst leave a truncated last line, which resuming drops. Floats go through JSON's
``repr``, which reads back to the same float64 bits, so a resumed run writes byte-identical output.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator

from evo_cli.errors import InputError, OutputError

from .atomic import atomic_open

SUFFIX = ".evo-partial"
_FORMAT = "evo-partial/1"


def sidecar_path(output: str | Path) -> Path:
    return Path(str(output) + SUFFIX)


def check_fresh(output: str | Path, resume: bool) -> None:
    """Refuse to start over an interrupted run's progress unless resuming it."""
    path = sidecar_path(output)
    if path.exists() and not resume:
        raise InputError(f"{path} exists: an earlier run of this output was interrupted; add --resume to "
                         f"continue it, or delete the file to start over")


def stored_settings(output: str | Path) -> dict | None:
    """The settings recorded by an interrupted run of ``output``, or None (no or unreadable progress file)."""
    try:
        with open(sidecar_path(output), encoding="utf-8") as fh:
            head = json.loads(fh.readline())
        return head["settings"] if head.get("format") == _FORMAT else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


class Checkpoint:
    """Completed chunks of one run, keyed by the run's ``settings`` (a JSON-able dict)."""

    def __init__(self, output: str | Path, settings: dict, resume: bool):
        self.path = sidecar_path(output)
        self.settings = json.loads(json.dumps(settings))
        self.done = 0
        self._fh = None
        check_fresh(output, resume)
        if self.path.exists():
            self._load()
            self._fh = open(self.path, "a", encoding="utf-8")
        # else the file is created with the first completed chunk: a run that fails before any work
        # (a bad input, say) leaves nothing behind

    def _load(self) -> None:
        with open(self.path, "rb") as fh:
            data = fh.read()
        good = data.rfind(b"\n") + 1  # a line without its newline was cut by the kill
        lines = data[:good].decode("utf-8", errors="replace").splitlines()
        try:
            head = json.loads(lines[0])
            assert head["format"] == _FORMAT
        except (IndexError, ValueError, KeyError, AssertionError, TypeError):
            raise InputError(f"{self.path}: not an evo progress file; delete it to start over") from None
        if head["settings"] != self.settings:
            old, new = head["settings"], self.settings
            diff = ", ".join(f"{k}: {old.get(k)!r} then, {new.get(k)!r} now" for k in sorted(set(old) | set(new))
                             if old.get(k) != new.get(k))
            raise InputError(f"{self.path}: cannot resume, the settings differ ({diff}); rerun the same command, "
                             f"or delete the file to start over")
        for i, line in enumerate(lines[1:]):
            try:
                chunk = json.loads(line)["chunk"]
            except (ValueError, KeyError, TypeError):
                raise InputError(f"{self.path}:{i + 2}: corrupt progress line; delete the file to start over") from None
            if chunk != i:
                raise InputError(f"{self.path}:{i + 2}: chunk {chunk} out of order; delete the file to start over")
        self.done = len(lines) - 1
        if good != len(data):
            with open(self.path, "rb+") as fh:
                fh.truncate(good)

    def append(self, chunk: int, records: list) -> None:
        """Persist chunk number ``chunk`` (the next one) with its per-record results."""
        if chunk != self.done:
            raise ValueError(f"chunk {chunk} appended after {self.done} completed chunks")
        if self._fh is None:
            with atomic_open(self.path) as fh:
                fh.write(json.dumps({"format": _FORMAT, "settings": self.settings}, sort_keys=True) + "\n")
            self._fh = open(self.path, "a", encoding="utf-8")
        try:
            self._fh.write(json.dumps({"chunk": chunk, "records": records}) + "\n")
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as err:
            # a cut last line is dropped on resuming: the chunks completed before are intact
            raise OutputError(f"cannot write {self.path}: {err.strerror or err}; the {self.done:,} chunk(s) of "
                              f"progress completed before are intact: fix this and rerun with --resume") from None
        self.done += 1

    def chunks(self) -> Iterator[list]:
        """The stored chunks' record lists, in order."""
        if self._fh is None:
            return
        self._fh.flush()
        with open(self.path, encoding="utf-8") as fh:
            next(fh)
            for line in fh:
                yield json.loads(line)["records"]

    def close(self) -> None:
        if self._fh is not None:
            # after a failed write (full disk) the buffer cannot be flushed either: the error is already raised
            with contextlib.suppress(OSError):
                self._fh.close()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, exc_type, *_) -> None:
        """Closed however the run ends; removed when it completes (its output then holds everything)."""
        self.close()
        if exc_type is None:
            self.remove()

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)
