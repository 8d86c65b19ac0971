"""Data parallel runs: several processes launched by ``torchrun`` share one run's chunks.

``torchrun --nproc-per-node N $(which evo) score-variants ...`` starts N ranks; they find each other
through the environment torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``) and join one torch.distributed process group (NCCL on GPUs, gloo on CPU). Without
torchrun nothing here is active and a run is the single-process run.

The unit of work is a resumable chunk (``io/partial.py``): every rank reads the same input and
numbers the same chunks; a rank takes the next chunk from an atomic counter in the
torch.distributed store, so that a slow rank or a long sequence holds nobody else; it writes the
chunk's results to its own progress file beside the output. When every chunk is done, rank 0 writes
the output from all of them in input order, the bytes a single process writes, and removes the
progress files. A resumed run, with any number of ranks, skips every chunk any rank finished.

A rank that leaves a run unfinished (an error, an interrupt) says so in the store as it exits, and
the ranks waiting for it stop with one line (``RankFailed``): torchrun stops only the ranks of its
own node, so those of other nodes would otherwise wait forever. A killed rank says nothing: there
``srun --kill-on-bad-exit`` (or the scheduler's like) stops the other nodes.

A command takes part through ``Share``::

    share = Share(store, progress)          # every rank, once its Checkpoint is open
    for i, chunk in enumerate(chunks):      # the same chunks on every rank
        if share.take(i, size(chunk)):      # this process computes chunk i
            store.append(i, compute(chunk, share.progress))
    if share.finish():                      # True on the process that writes the output
        write(store.chunks())
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Callable

from evo_cli.errors import EvoError, InputError

log = logging.getLogger(__name__)

# seconds between a rank's reports of its progress to the store, and between rank 0's looks at it
_REPORT_EVERY = 0.5


@dataclass
class Job:
    """This process's place in a torchrun job, and the job's shared store (``torch.distributed.Store``)."""

    rank: int
    world_size: int
    store: object
    runs: int = 0  # runs started so far in this process: each gets its own store keys
    active: bool = False  # a run (``Share``) has started here and not every rank has finished it

    def key(self, name: str, run: int | None = None) -> str:
        """A store key of run ``run`` (default: the next run to start); a group restarted by torchrun
        (``--max-restarts``) starts afresh."""
        return f"evo/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{self.runs if run is None else run}/{name}"


_job: Job | None = None


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher setting the same variables)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ


def current() -> Job | None:
    """The job this process is a rank of, or None (a single process)."""
    return _job


def rank_device(device: str) -> str:
    """The device this rank runs on: ``auto`` and ``cuda`` become ``cuda:LOCAL_RANK`` when there are GPUs;
    an explicit device (``cpu``, ``cuda:N``, a list ``cuda:0,cuda:1``) is kept."""
    import torch

    from evo_cli.runtime import local_rank

    if device in ("auto", "cuda") and torch.cuda.is_available():
        local = local_rank() or 0
        if local >= torch.cuda.device_count():
            raise InputError(f"rank with LOCAL_RANK {local} has no GPU of its own ({torch.cuda.device_count()} here): "
                             f"start at most {torch.cuda.device_count()} processes per node")
        return f"cuda:{local}"
    return "cpu" if device == "auto" else device


def setup(device: str = "auto", devices_per_rank: int | None = None) -> str:
    """Join the torchrun job when launched by torchrun (once per process); returns the device to load
    the model on (``rank_device``; with ``devices_per_rank`` K, ``device`` unchanged: ``load_model``
    then gives local rank r the GPUs cuda:rK .. cuda:rK+K-1). A CPU rank uses its share of the node's
    cores. Without torchrun, returns ``device`` unchanged."""
    global _job
    if not launched():
        return device
    import torch
    import torch.distributed as dist

    if devices_per_rank is None:
        device = rank_device(device)
    if _job is not None:
        return device
    local_world = _check_environment()
    from evo_cli.runtime import local_rank, resolve_device, usable_cpus

    if devices_per_rank is not None and torch.cuda.is_available():
        first = resolve_device(f"cuda:{(local_rank() or 0) * devices_per_rank}")
    else:
        first = resolve_device(str(device).split(",")[0].strip())
    if first.type == "cuda":
        torch.cuda.set_device(first)  # the rank's first GPU: NCCL's, and the default one
        backend = "nccl"
    else:
        torch.set_num_threads(max(1, usable_cpus() // local_world))
        backend = "gloo"
    store, rank, world = next(dist.rendezvous("env://"))
    # the process group gets its own key space, one per start of the group: torchrun's store keeps
    # the keys of a group it restarted (--max-restarts); the bare store holds the chunk counters
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    dist.init_process_group(backend, store=dist.PrefixStore(f"pg/{restart}", store), rank=rank, world_size=world)
    atexit.register(_close)
    _job = Job(rank, world, store)
    log.info("rank %d of %d on %s (%s)", rank, world, first, backend)
    return device


def _check_environment() -> int:
    """The launcher's variables, checked before the rendezvous (which would wait forever for a rank
    outside the world, or stop with a ValueError); returns LOCAL_WORLD_SIZE (1 when unset)."""
    names = ("RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")
    values = {n: os.environ.get(n, "1" if n == "LOCAL_WORLD_SIZE" else "") for n in names}
    bad = [f"{n}={v!r}" for n, v in values.items() if not v.isdigit()]
    if bad:
        raise InputError(f"{', '.join(bad)}: not a whole number (start the ranks with torchrun, which sets it)")
    rank, world = int(values["RANK"]), int(values["WORLD_SIZE"])
    if not rank < world:
        raise InputError(f"RANK={rank} is not a rank of WORLD_SIZE={world} (0..{world - 1}): "
                         "start the ranks with torchrun")
    if not os.environ.get("MASTER_PORT"):
        raise InputError("MASTER_ADDR is set but MASTER_PORT is not: start the ranks with torchrun, or set both")
    return int(values["LOCAL_WORLD_SIZE"])


class RankFailed(EvoError):
    """Another rank of the job stopped before finishing its part of the run."""


def _close() -> None:
    global _job
    import torch.distributed as dist

    if _job is not None:
        _mark_failed(_job)
    if dist.is_initialized():
        dist.destroy_process_group()
    _job = None


def _mark_failed(job: Job) -> None:
    """At exit: tell the other ranks when this one leaves a run unfinished (an error, an interrupt),
    so that they stop with one line instead of waiting for it. Ranks on other nodes, which torchrun
    on this node does not stop, would otherwise wait forever. The run concerned is the current one,
    or the next when none is under way: ranks still loading or reading the input wait for it."""
    key = job.key("failed", job.runs - 1 if job.active else job.runs)
    try:
        if not job.store.check([key]):
            job.store.set(key, str(job.rank))
    except Exception:  # the store went with its host: the other ranks see that for themselves
        pass


def _check_failed(job: Job, run_key: str) -> None:
    """Raise ``RankFailed`` when another rank has left the run of ``run_key`` unfinished (``_mark_failed``)."""
    key = run_key + "failed"
    if job.store.check([key]):
        rank = job.store.get(key).decode()
        raise RankFailed(f"rank {rank} stopped before finishing its part of the run (see its message); the chunks "
                         f"done are kept: rerun with --resume once that is fixed")


def is_leader() -> bool:
    """Whether this process reports to the user (rank 0, or a single process)."""
    return _job is None or _job.rank == 0


def checkpoint_rank() -> int:
    """The rank whose progress file this process writes (0 for a single process)."""
    return 0 if _job is None else _job.rank


def shared_value(key: str, value: str | None) -> str:
    """A value every rank agrees on: rank 0's ``value`` (e.g. a random seed); ``value`` itself
    without a job."""
    job = _job
    if job is None:
        return value
    full = job.key(f"value/{key}")
    if job.rank == 0:
        job.store.set(full, value)
        return value
    while not job.store.check([full]):  # polled: rank 0 may stop first (``_mark_failed``)
        _check_failed(job, job.key(""))
        time.sleep(0.05)
    return job.store.get(full).decode()


class Share:
    """One process's part in a chunked run: which chunks it computes, and the whole run's progress.

    store: the run's ``Checkpoint`` (None: a single process writing to stdout, every chunk computed
    here). progress: the caller's ``progress(n)`` (on rank 0 it shows every rank's work; on other
    ranks it is not called)."""

    def __init__(self, store, progress: Callable[[int], None] | None = None):
        self.store = store
        self.job = _job
        self._progress = progress
        self._mine: int | None = None
        self._pending = 0
        self._last = time.monotonic()
        self._seen = 0
        self.chunks: list[int] = []  # the chunks this process computed
        self._busy = 0.0  # seconds spent on them
        self._busy_since: float | None = None
        self._start, self._cpu_start = time.monotonic(), time.process_time()
        self.ranks: list[dict] = []  # on rank 0 after finish(): every rank's chunks and times (``_stats``)
        if self.job is None:
            return
        if store is None:
            raise InputError("a distributed run needs an output file (-o PATH), not stdout, a device or a pipe: the "
                             "ranks keep their chunks beside it")
        self._key = self.job.key("")
        self.job.runs += 1
        self.job.active = True
        # every rank has read the progress files before any rank writes to its own
        self._wait_for("ready")
        self._start, self._cpu_start = time.monotonic(), time.process_time()  # times count from here

    def take(self, i: int, size: int = 0) -> bool:
        """Whether this process computes chunk ``i``. Called for every chunk in order; ``size``: the
        chunk's progress, shown at once on the reporting process when an earlier run stored the chunk."""
        self._idle()
        if self.store is not None and i in self.store:
            if is_leader() and self._progress:
                self._progress(size)
            return False
        if self.job is not None:
            _check_failed(self.job, self._key)
            # the counter runs over every chunk number; those of chunks stored before this run (all
            # below i when they come up here) are passed over
            while self._mine is None or self._mine < i:
                self._mine = self.job.store.add(self._key + "next", 1) - 1
            if self._mine != i:
                return False
            self._mine = None
        self.chunks.append(i)
        self._busy_since = time.monotonic()
        return True

    def _idle(self) -> None:
        """The chunk taken last is done: count its time."""
        if self._busy_since is not None:
            self._busy += time.monotonic() - self._busy_since
            self._busy_since = None

    def _stats(self) -> dict:
        """This process's chunks, the seconds it spent on them, and its wall and CPU seconds in the run."""
        return {"rank": checkpoint_rank(), "chunks": self.chunks, "busy_s": round(self._busy, 3),
                "wall_s": round(time.monotonic() - self._start, 3),
                "cpu_s": round(time.process_time() - self._cpu_start, 3)}

    def progress(self, n: int) -> None:
        """Count ``n`` units of this process's work (pass this, not the caller's progress, to the work)."""
        if self.job is None:
            if self._progress:
                self._progress(n)
            return
        self._pending += n
        if time.monotonic() - self._last >= _REPORT_EVERY:
            self._report()

    def _report(self) -> None:
        """Add this rank's unreported work to the job's count; rank 0 then shows the job's count."""
        total = self.job.store.add(self._key + "progress", self._pending)
        self._pending = 0
        self._last = time.monotonic()
        if self.job.rank == 0 and self._progress and total > self._seen:
            self._progress(total - self._seen)
            self._seen = total

    def finish(self) -> bool:
        """Wait until every rank has done its chunks; True on the process that writes the output
        (rank 0, which then sees every rank's chunks in ``store``), False on the others."""
        self._idle()
        if self.job is None:
            self.ranks = [self._stats()]
            self._log(logging.DEBUG)
            return True
        self._report()
        self.job.store.set(f"{self._key}stats/{self.job.rank}", json.dumps(self._stats()))
        self._wait_for("finished", report=self.job.rank == 0)
        self.job.active = False
        if self.job.rank != 0:
            return False
        self._report()
        self.ranks = [json.loads(self.job.store.get(f"{self._key}stats/{r}")) for r in range(self.job.world_size)]
        self._log(logging.INFO)
        self.store.reload()
        return True

    def _log(self, level: int) -> None:
        for r in self.ranks:
            log.log(level, "rank %d: %d chunks %s, busy %.2f s of %.2f s, %.2f CPU s", r["rank"], len(r["chunks"]),
                    r["chunks"], r["busy_s"], r["wall_s"], r["cpu_s"])

    def _wait_for(self, name: str, report: bool = False) -> None:
        """Count this rank as arrived at ``name``; return once every rank has (polling the store, so
        that a long wait needs no collective timeout)."""
        key, world = self._key + name, self.job.world_size
        arrived = self.job.store.add(key, 1)
        while arrived < world:
            _check_failed(self.job, self._key)
            time.sleep(0.05 if name == "ready" else _REPORT_EVERY)
            if report:
                self._report()
            arrived = self.job.store.add(key, 0)
