"""Pieces shared by the fused CPU kernels (``<op>/cpu.py``, compiled by numba on first use).

They serve what eager PyTorch does badly on a CPU: the matrix-vector products of decoding (MKL
streams a weight at 9-17 GB/s on this project's CPUs, a plain loop at 21-30; benchmarks/README.md)
and chains of small ops over one token. Compiled code is cached on disk (numba's ``cache=True``), so
only the first run on a machine pays the compilation (10-20 s; ``ready`` says so).
"""

from __future__ import annotations

import logging
import threading

import numba
import numpy as np
import torch

log = logging.getLogger(__name__)


def _start_pool() -> None:
    """Start numba's thread pool now, keeping torch's thread count. With numba's OpenMP layer and torch
    sharing one libgomp, the pool's start (at the first call of any kernel with a parallel loop) sets
    the process's OpenMP thread count to numba's, every core: a run on one thread then ran its torch
    ops on all of them, and decoding took twice the CPU time."""
    n = torch.get_num_threads()
    numba.get_num_threads()  # starts the pool
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


_start_pool()

# sums may be reordered (vectorised partial sums, as any BLAS does) and multiply-adds fused; no
# assumption about NaN or infinities, which must propagate as they do in PyTorch
FASTMATH = {"reassoc", "nsz", "contract"}


# an absent optional vector (a bias, a skip term): kernels test its length
EMPTY = np.zeros(0, dtype=np.float32)


def array(t: torch.Tensor):
    """A numpy view of a CPU tensor (no copy), parameters included."""
    return t.detach().numpy()


def vec(t: torch.Tensor | None):
    """``array(t)``, or ``EMPTY`` for None."""
    return EMPTY if t is None else array(t)


def usable(tensors, complex_ok=()) -> bool:
    """Whether these tensors (None entries ignored) can go to a kernel as they are: contiguous float32
    CPU tensors (complex64 allowed for those in ``complex_ok``) with no gradient to record."""
    tensors = [t for t in tensors if t is not None]
    return (all(t.device.type == "cpu" and t.is_contiguous()
                and (t.dtype == torch.float32 or (t.dtype == torch.complex64 and any(t is c for c in complex_ok)))
                for t in tensors)
            and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)))


def parallel() -> bool:
    """Whether to run a kernel's parallel version: torch runs on more than one CPU thread, whose count
    is then given to numba's pool."""
    n = min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)
    if n < 2:
        return False
    if numba.get_num_threads() != n:
        numba.set_num_threads(n)
    return True


_noticed = threading.Event()
_NOTICE_AFTER = 1.0  # seconds


def ready(kernel, args) -> None:
    """Compile ``kernel`` for ``args`` before its first call (numba loads it from its disk cache when it
    can). Compiling all of them takes 10-20 s on the first run on a machine, so where this takes over
    a second one line says why, once per process."""
    if kernel.overloads:
        return
    timer = threading.Timer(_NOTICE_AFTER, _notice)
    timer.daemon = True
    timer.start()
    try:
        kernel.compile(tuple(numba.typeof(a) for a in args))
    finally:
        timer.cancel()


def _notice() -> None:
    if not _noticed.is_set():
        _noticed.set()
        log.warning("compiling the CPU kernels (numba; the first run on a machine only, 10-20 s)")
