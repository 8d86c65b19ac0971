"""Pieces shared by the fused CPU kernels (``<op>/cpu.py``, compiled by numba on first use).

They serve what eager PyTorch does badly on a CPU: the matrix-vector products of decoding (MKL
streams a weight at 9-17 GB/s on this project's CPUs, a plain loop at 19-24; benchmarks/README.md),
chains of small ops over one token, and the Hyena filters of a window, where PyTorch makes a pass
per tap or an FFT (``over_channels`` splits those among threads). Compiled code is cached on disk
(``jit``), so only the first run on a machine pays the compilation (10-20 s; ``ready`` says so).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from pathlib import Path

import numba
import numpy as np
import torch

from . import _native

log = logging.getLogger(__name__)


# No kernel is compiled with fast-math flags: the order of every sum is the source's. With them
# (reassociation), a kernel's results changed in the last bits with the context it was compiled in
# (a fresh compilation against numba's cached one), so a run's numbers depended on whether it had
# compiled the kernels, and a distributed run did not reproduce the single-process bytes. The loops
# vectorise across independent outputs instead (``linear/cpu.py``, ``block/cpu.py``).


def sources_digest(root: Path) -> str:
    """A digest of every kernel source under ``root`` (``_numba.py`` and ``*/cpu.py``)."""
    digest = hashlib.sha256()
    for path in sorted([root / "_numba.py", *root.glob("*/cpu.py")]):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _cache_dir() -> str:
    """Where numba caches the compiled kernels: one folder per version of the kernel sources, under
    ``$NUMBA_CACHE_DIR`` or ``~/.cache/evo/numba``. numba checks a cached kernel against its own file
    only, and the block kernels inline the products and the Hyena step from other files: an edit there
    (or an upgrade of evo) would otherwise keep running the old compiled code."""
    base = os.environ.get("NUMBA_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "evo", "numba")
    return os.path.join(base, "kernels-" + sources_digest(Path(__file__).resolve().parent))


_CACHE_DIR = _cache_dir()


def jit(fn):
    """``numba.njit`` for the kernels: cached on disk in ``_CACHE_DIR``, no bounds checks (the wrappers
    check shapes), the GIL released."""
    saved = numba.config.CACHE_DIR
    numba.config.CACHE_DIR = _CACHE_DIR  # read once, when the decorator sets up the function's cache
    try:
        return numba.njit(cache=True, boundscheck=False, nogil=True)(fn)
    finally:
        numba.config.CACHE_DIR = saved


# an absent optional vector (a bias, a skip term): kernels test its length
EMPTY = np.zeros(0, dtype=np.float32)
# an absent history or state: the window kernels read it only when their ``carry`` argument is true
NO_STATE = np.zeros((1, 1, 1), dtype=np.float32)


def array(t: torch.Tensor):
    """A numpy view of a CPU tensor (no copy), parameters included."""
    return t.detach().numpy()


def vec(t: torch.Tensor | None):
    """``array(t)``, or ``EMPTY`` for None."""
    return EMPTY if t is None else array(t)


def usable(tensors, complex_ok=()) -> bool:
    """Whether these tensors (None entries ignored) can go to a kernel as they are: contiguous float32
    CPU tensors (complex64 allowed for those in ``complex_ok``) with no derivative to record."""
    tensors = [t for t in tensors if t is not None]
    return (all(t.device.type == "cpu" and t.is_contiguous()
                and (t.dtype == torch.float32 or (t.dtype == torch.complex64 and any(t is c for c in complex_ok)))
                for t in tensors)
            and not recording(tensors))


def recording(tensors) -> bool:
    """Whether autograd records derivatives through ops on these tensors (None entries ignored): a
    gradient to record, or forward-mode AD (a dual level open), which would lose its tangents in a
    kernel (they have no derivatives) without an error; the reference ops run instead."""
    return ((torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors))
            or getattr(torch.autograd.forward_ad, "_current_level", -1) >= 0)


_noticed = threading.Event()
# seconds: compiling one kernel takes longer; loading one from the cache can take a second on a
# loaded machine, and then the line would show on every run
_NOTICE_AFTER = 2.0


def ready(kernel, args) -> None:
    """Compile ``kernel`` for ``args`` before its first call (numba loads it from its disk cache when it
    can). Compiling all of them takes 10-20 s on the first run on a machine, so where this takes over
    ``_NOTICE_AFTER`` one line says why, once per process."""
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
        log.warning("preparing the CPU kernels (numba compiles them on the first run on a machine, 10-20 s; "
                    "later runs load them from its cache)")


def over_channels(kernel, args, channels: int, work: int) -> None:
    """``kernel(*args, lo, hi)`` for channel ranges covering ``0 .. channels``: one call, or, when
    ``work`` (its multiply-adds) is large, as many calls as torch has threads, run in the kernel threads
    (the kernels release the GIL) while torch's own threads are idle (``_native.over_ranges``). Each
    channel's numbers are the same however the channels are split."""
    ready(kernel, args + (0, channels))
    # in blocks of 16 channels: every range but the last is whole vectors
    _native.over_ranges(lambda lo, hi: kernel(*args, lo * 16, min(hi * 16, channels)), (channels + 15) // 16,
                        work, torch.get_num_threads())
