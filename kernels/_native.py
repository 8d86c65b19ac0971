"""CPU kernels written in C++ (``<op>/cpu.cpp``), compiled on first use with the system's compiler and
called through ctypes.

numba cannot keep a tile of vector accumulators in registers (benchmarks/README.md, sixth round), which
is what an attention kernel at head size 32 needs. So such a kernel is C++ with the compiler's vector
extensions, built for this machine (``-march=native``) the first time it is asked for, in under a
second, and kept in ``~/.cache/evo/native`` (``$XDG_CACHE_HOME``) under a name that covers its source,
the compiler and the CPU, so that a home folder shared by machines of different CPUs never loads code
built for another. Where there is no compiler (``$CXX``, ``c++``, ``g++`` or ``clang++``) or the build
fails, ``load`` returns None, says why once in the log, and the caller runs its PyTorch path (numba's loop
for the filter).

No fast-math flags: as in the numba kernels (``_numba.py``), every sum runs in the source's order.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import functools
import hashlib
import logging
import os
import platform
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
from pathlib import Path

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent
# the vector helpers every kernel includes
HEADER = "vec.h"
FLAGS = ["-O3", "-march=native", "-ffp-contract=fast", "-fPIC", "-shared", "-std=c++17"]
# a compiler that does not take -march=native (some for ARM) builds for its default target instead
PORTABLE_FLAGS = [f for f in FLAGS if f != "-march=native"]
# kernels whose bits must be the numba kernels' and the decoding step's (a product, then a sum: numba
# does not contract them into fused multiply-adds)
OP_FLAGS = {"fir": ["-ffp-contract=off"]}
# seconds a build may take (two on this project's CPUs; a loaded machine is slower)
BUILD_TIMEOUT = 300
# seconds after which a build says what it is doing (once per process)
_NOTICE_AFTER = 2.0

_libs: dict[str, ctypes.CDLL | None] = {}
_lock = threading.Lock()


def compiler() -> str | None:
    """The C++ compiler's command: ``$CXX`` (a command line, as build tools take it: ``ccache g++``),
    else the first of c++, g++ and clang++ on the PATH."""
    cxx = shlex.split(os.environ.get("CXX", ""))
    if cxx:
        return shlex.join([shutil.which(cxx[0]) or cxx[0], *cxx[1:]])
    return next((p for p in map(shutil.which, ("c++", "g++", "clang++")) if p), None)


def _cpu_identity() -> str:
    """What the compiled code depends on: the machine and, on Linux, the CPU's model and feature flags."""
    ident = [platform.machine(), platform.system()]
    try:
        with open("/proc/cpuinfo") as f:
            ident += sorted({line.strip() for line in f if line.startswith(("flags", "model name", "Features"))})
    except OSError:
        ident.append(platform.processor())
    return "\n".join(ident)


def _cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"))
    # a relative path (XDG says to ignore one; "~" unexpanded where there is no home) would put a cache,
    # and the code loaded from it, in whatever folder the user runs from
    if not base.is_absolute():
        raise RuntimeError(f"no cache folder ({base} is not absolute): set XDG_CACHE_HOME to one")
    return base / "evo" / "native"


@functools.lru_cache(maxsize=None)
def _version(cxx: str) -> str:
    out = _run([*shlex.split(cxx), "--version"], 60)
    return out.stdout.splitlines()[0] if out.returncode == 0 and out.stdout else ""


# what runs where a kernel cannot be built: torch's ops, except for the filter, whose numba loop gives the
# C++ kernel's bits
_FALLBACK = {"fir": "numba's loop"}


def load(op: str) -> ctypes.CDLL | None:
    """The compiled ``<op>/cpu.cpp`` (built now if this machine has not built this version), or None
    where it cannot be built here."""
    with _lock:
        if op not in _libs:
            try:
                _libs[op] = _build(op)
            except Exception as e:  # whatever the compiler or the disk does, the caller's path runs
                log.info("the C++ kernel %s is not available (%s); %s run instead", op, e,
                         _FALLBACK.get(op, "torch's ops"))
                _libs[op] = None
        return _libs[op]


def function(op: str, name: str, argtypes: list, restype):
    """The C function ``name`` of the compiled ``<op>/cpu.cpp`` with its ctypes signature, or None where
    the kernel cannot be built here."""
    lib = load(op)
    if lib is None:
        return None
    fn = getattr(lib, name)
    if fn.argtypes is None:
        fn.argtypes, fn.restype = argtypes, restype
    return fn


def _target(op: str, cxx: str) -> Path:
    """Where the build of ``op`` by ``cxx`` for this CPU is kept."""
    sources = (ROOT / op / "cpu.cpp").read_text() + (ROOT / HEADER).read_text()
    flags = " ".join(FLAGS + OP_FLAGS.get(op, []))
    key = hashlib.sha256("\n".join([sources, cxx, _version(cxx), flags, _cpu_identity()]).encode())
    return _cache_dir() / f"{op}-{key.hexdigest()[:16]}.so"


def _build(op: str) -> ctypes.CDLL:
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found: set CXX or install g++ or clang++")
    source, target = ROOT / op / "cpu.cpp", _target(op, cxx)
    if target.exists():
        try:
            return ctypes.CDLL(str(target))
        except OSError as e:  # a damaged file (a disk that filled, a copy cut short): built again
            log.info("rebuilding %s: %s", target, e)
            target.unlink(missing_ok=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    timer = threading.Timer(_NOTICE_AFTER, log.warning, [f"compiling the C++ {op} kernel for this CPU "
                                                         "(once per machine, a few seconds)"])
    timer.daemon = True
    timer.start()
    try:
        _compile(cxx, source, target, OP_FLAGS.get(op, []))
    finally:
        timer.cancel()
    return ctypes.CDLL(str(target))


def _name(cxx: str) -> str:
    """The compiler's program name, for messages."""
    return Path(shlex.split(cxx)[0]).name


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd)`` with its output as text, in a process group of its own that is killed
    whole past ``timeout`` (or on an interrupt): killing the compiler driver alone would leave the
    programs it runs (cc1plus, as, ld) running on."""
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace",
                          start_new_session=hasattr(os, "killpg")) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except BaseException:
            if hasattr(os, "killpg"):
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:  # the group has ended
                    pass
            proc.kill()
            proc.wait()
            raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _compile(cxx: str, source: Path, target: Path, extra: list[str]) -> None:
    # built under a temporary name and renamed: processes building at once each load a whole file
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}-", suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        for flags in (FLAGS, PORTABLE_FLAGS):
            try:
                out = _run([*shlex.split(cxx), *flags, *extra, "-I", str(ROOT), "-o", tmp, str(source)], BUILD_TIMEOUT)
            except subprocess.TimeoutExpired:
                raise RuntimeError(f"{_name(cxx)} timed out after {BUILD_TIMEOUT} s") from None
            if out.returncode == 0:
                os.replace(tmp, target)
                return
        first = next((line for line in out.stderr.splitlines() if "error" in line), out.stderr.strip()[:200])
        raise RuntimeError(f"{_name(cxx)} failed: {first}")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


_pools: dict[int, concurrent.futures.ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def pool() -> concurrent.futures.ThreadPoolExecutor:
    """This process's kernel threads (made as tasks need them, one per core at most), shared by the C++
    and the numba kernels. A child forked after its parent made the pool gets its own: the parent's
    threads do not exist in the child, and tasks given to them would never run."""
    with _pools_lock:
        pid = os.getpid()
        if pid not in _pools:
            _pools[pid] = concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="evo-kernels")
        return _pools[pid]


# multiply-adds a thread takes at the least (about a millisecond): below that, handing work to a thread
# costs more than it saves, the more so as torch's OpenMP threads still spin for a while after each of
# its ops (on 2 threads the quick start's windows ran 2% slower split from 1 M multiply-adds up)
MIN_PART_WORK = 1 << 22


def over_ranges(run, total: int, work: int, threads: int) -> None:
    """``run(lo, hi)`` for ranges covering ``0 .. total``: one call, or, when ``work`` is large, up to
    ``threads`` calls run in the kernel threads (ctypes releases the GIL). A kernel's result for an item
    must not depend on the range it came in."""
    parts = min(threads, total, work // MIN_PART_WORK)
    if parts <= 1:
        run(0, total)
        return
    bounds = [total * i // parts for i in range(parts + 1)]
    executor = pool()
    runs = [executor.submit(run, lo, hi) for lo, hi in zip(bounds[1:-1], bounds[2:])]
    try:
        run(bounds[0], bounds[1])  # this thread takes the first range
    finally:
        concurrent.futures.wait(runs)  # nothing may still write into the outputs after this returns
    for r in runs:
        r.result()


def _after_fork() -> None:
    """A forked child has only the thread that forked: a lock another thread held at that moment (a
    kernel's build, the pool being made) would never be released in it, so the child gets new ones."""
    global _lock, _pools_lock
    _lock, _pools_lock = threading.Lock(), threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
