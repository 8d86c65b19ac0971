"""Runtime choices: device, dtype and kernel backend. Environment variables are read here only."""

from __future__ import annotations

import ctypes
import math
import os
import sys
from typing import Sequence

import torch

from evo_cli.errors import EvoError, InputError
from evo_cli.kernels import BACKENDS, FP8_MODES, fp8_native_supported, mmaemu_available, resolve_backend

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def available_devices() -> list[str]:
    """The devices this torch can run on here: ``cpu``, ``cuda:N`` per visible GPU, ``mps`` when present."""
    devices = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0)]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` -> the first CUDA GPU when there is one, else the CPU. Any other device must be one of
    ``available_devices`` (``cuda`` is ``cuda:0``); else one line naming the ones this torch has."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    available = available_devices()
    has = f"this torch {torch.__version__} has {', '.join(available)}"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(f"unknown device {str(device)!r}: {has} (use auto or one of these)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device} requested but no CUDA GPU is available: {has}")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise InputError(f"device {device} requested but only {torch.cuda.device_count()} GPU(s) are visible: {has}")
    if dev.type != "cuda" and dev.type not in available:
        raise InputError(f"device {str(device)!r} is not available here: {has} (use auto or one of these)")
    return dev


def resolve_devices(device: str | torch.device | Sequence | None = "auto",
                    devices_per_rank: int | None = None) -> list[torch.device]:
    """One device, or several to split the model over: a comma-separated string (``cuda:0,cuda:1``)
    or a list. ``devices_per_rank`` K gives this process K GPUs, cuda:rK .. cuda:rK+K-1 for the
    local rank r that torchrun sets (0 without torchrun); ``device`` must then be ``auto``."""
    from evo_cli.model.placement import check_distinct, parse_device_list, rank_devices

    if devices_per_rank is not None:
        if device not in (None, "auto"):
            raise InputError(f"--devices-per-rank picks this process's GPUs itself: use --device auto, not {device}")
        if not torch.cuda.is_available():
            raise InputError("--devices-per-rank needs CUDA GPUs, and none is available")
        names = rank_devices(devices_per_rank, local_rank() or 0, torch.cuda.device_count())
    elif isinstance(device, (list, tuple)):
        if not device:
            raise InputError("empty device list")
        names = list(device)
    else:
        names = parse_device_list(device) if isinstance(device, str) else [device]
    check_distinct(names)
    return [resolve_device(n) for n in names]


def local_rank() -> int | None:
    """This process's rank on its node under torchrun (``LOCAL_RANK``); None without torchrun."""
    value = os.environ.get("LOCAL_RANK")
    if value is None:
        return None
    if not value.isdigit():
        raise InputError(f"LOCAL_RANK={value!r} is not a rank number")
    return int(value)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``auto`` -> float32 on CPU, bfloat16 on GPUs. A name or torch dtype of ``DTYPES``, else an
    ``InputError`` (a float64 or integer model would fail, or silently run, far from the cause)."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise InputError(f"unsupported dtype {dtype} (use auto, float32 or bfloat16)")
        return dtype
    if dtype is None or dtype == "auto":
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r} (use auto, float32 or bfloat16)")
    return DTYPES[dtype]


def resolve_kernels(kernels: str | None, devices: Sequence[torch.device] = ()) -> str:
    """Kernel backend: the argument, else ``EVO_KERNELS``, else ``auto``; an ``InputError`` where one of
    ``devices`` cannot run it (``--kernels triton`` on a CPU, ``numba`` without numba installed)."""
    choice = kernels or os.environ.get("EVO_KERNELS") or "auto"
    source = " (from EVO_KERNELS)" if not kernels and os.environ.get("EVO_KERNELS") else ""
    if choice not in BACKENDS:
        raise InputError(f"unknown kernel backend {choice!r}{source} (use {', '.join(BACKENDS)})")
    for device in devices:
        try:
            resolve_backend(choice, device)
        except RuntimeError as err:
            raise InputError(f"{err}{source}") from None
    return choice


def usable_cpus(cgroup_root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup") -> int:
    """The CPUs this process may keep busy: its affinity mask, capped by a cgroup CPU quota rounded up
    (a container's ``--cpus``, a Kubernetes CPU limit, a systemd CPUQuota). torch's default thread
    count sees only the cores, so under a quota of 2 CPUs on a 64-core host it would start 64 threads
    that spin-wait at every op for time slices they do not get."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root, proc_cgroup)
    return max(1, min(cores, math.ceil(quota))) if quota is not None else cores


def cgroup_cpu_quota(cgroup_root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup") -> float | None:
    """CPUs' worth of time per period this process's cgroup allows (the tightest of its own cgroup
    and its ancestors', cgroup v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``), or None without a quota."""
    quotas = []
    for path in _cgroup_dirs(cgroup_root, proc_cgroup):
        text = _read(os.path.join(path, "cpu.max"))
        if text is not None:  # v2: "<quota> <period>" or "max <period>"
            quota, _, period = text.partition(" ")
            if quota != "max":
                quotas.append(_ratio(quota, period))
            continue
        quota, period = _read(os.path.join(path, "cpu.cfs_quota_us")), _read(os.path.join(path, "cpu.cfs_period_us"))
        if quota is not None and period is not None and not quota.startswith("-"):  # v1: -1 is no quota
            quotas.append(_ratio(quota, period))
    quotas = [q for q in quotas if q is not None]
    return min(quotas) if quotas else None


def _cgroup_dirs(root: str, proc_cgroup: str) -> list[str]:
    """This process's cgroup folders with their ancestors, under ``root`` (v2 and the v1 cpu
    controller), the cgroup namespace's root included: a container sees its own cgroup as the root."""
    rels = []
    for line in (_read(proc_cgroup) or "").splitlines():
        if line.count(":") < 2:
            continue
        _, controllers, rel = line.split(":", 2)
        if controllers == "":
            rels.append(("", rel))
        elif "cpu" in controllers.split(","):
            rels.append((controllers, rel))
    dirs = []
    for controllers, rel in rels or [("", "/")]:
        bases = [root] if controllers == "" else [os.path.join(root, controllers), os.path.join(root, "cpu")]
        parts = [p for p in rel.split("/") if p]
        for base in bases:
            dirs += [os.path.join(base, *parts[:n]) for n in range(len(parts), -1, -1)]
    return list(dict.fromkeys(dirs))


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def fit_threads_to_cpus() -> int:
    """Lower torch's thread count to ``usable_cpus()`` unless ``OMP_NUM_THREADS`` sets it; returns the count."""
    if "OMP_NUM_THREADS" not in os.environ and torch.get_num_threads() > usable_cpus():
        torch.set_num_threads(usable_cpus())
    return torch.get_num_threads()


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory(limit: int = 1 << 30) -> bool:
    """Let glibc's allocator reuse freed blocks of up to ``limit`` bytes instead of returning them
    to the OS. By default a block over 32 MiB is its own mapping, unmapped on free, so every large
    temporary of a forward (50 MB per [8192, 1536] float32 tensor) pays a page fault per 4 KiB page
    on first touch: 16% of an 8k forward's CPU time on this project's machines
    (benchmarks/README.md). Peak memory is unchanged; freed memory stays in the process up to
    ``limit``. A no-op (False) off Linux/glibc. The CLI calls it before loading a model."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, limit) and libc.mallopt(_M_TRIM_THRESHOLD, limit))
    except (OSError, AttributeError):
        return False


def free_memory_bytes(device: torch.device) -> int | None:
    """Memory a run on ``device`` can still allocate: free GPU memory, or the kernel's MemAvailable
    on the CPU; None when unknown. Used to choose layer-by-layer runs of long sequences."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def non_finite_error(what: str, dtype: torch.dtype) -> EvoError:
    """The one-line error for NaN or infinite model outputs on ``what`` (e.g. ``sequence 'x'``). Weights are
    checked at load, so in float32 the cause is extreme weights; in lower precision an overflow."""
    if dtype == torch.float32:
        cause = "already float32: the checkpoint's weights are extreme or damaged"
    else:
        cause = f"numerical overflow in {str(dtype).removeprefix('torch.')}: try --dtype float32"
    return EvoError(f"the model computed NaN or infinite values for {what} ({cause})")


FP8_INSTALL_HINT = 'pip install "evo-cli[fp8]"'


def fp8_choice(fp8: str | None) -> str:
    """The FP8 mode asked for: the argument, else ``EVO_FP8``, else ``auto``."""
    choice = fp8 or os.environ.get("EVO_FP8") or "auto"
    if choice not in FP8_MODES:
        raise InputError(f"unknown FP8 mode {choice!r}{fp8_source(fp8)} (use {', '.join(FP8_MODES)})")
    return choice


def fp8_source(fp8: str | None) -> str:
    """`` (from EVO_FP8)`` where the FP8 mode came from the environment, not from an argument."""
    return " (from EVO_FP8)" if not fp8 and os.environ.get("EVO_FP8") else ""


def resolve_fp8(fp8: str | None, devices: torch.device | Sequence[torch.device], needs_fp8: bool) -> str:
    """How the FP8 projections run (``fp8_choice``), resolved to ``off``, ``emulate`` or ``native``.
    ``auto``: ``off`` for a model that does not need FP8; ``native`` on GPUs of compute capability 8.9 /
    9.x (the hardware Evo 2 was trained on), ``emulate`` elsewhere. ``devices``: the model's device, or
    every device of a split model; ``native`` needs each of them to be such a GPU (elsewhere
    ``torch._scaled_mm`` would run other arithmetic, or none)."""
    devices = [devices] if isinstance(devices, torch.device) else list(devices)
    choice = fp8_choice(fp8)
    unsupported = next((d for d in devices if not fp8_native_supported(d)), None)
    if choice == "auto":
        if not needs_fp8:
            return "off"
        choice = "emulate" if unsupported is not None else "native"
    if choice == "native" and unsupported is not None:
        raise InputError(f"--fp8 native{fp8_source(fp8)} needs a GPU of compute capability 8.9 or 9.x "
                         f"(Ada, Hopper), not {_device_name(unsupported)}; use --fp8 emulate")
    if choice == "emulate" and not mmaemu_available():
        raise InputError(f"FP8 emulation needs the mmaemu package: {FP8_INSTALL_HINT} (or --fp8 off, at lower accuracy)")
    return choice


def fp8_native_on(devices: torch.device | Sequence[torch.device]) -> bool:
    """Whether every one of ``devices`` runs ``--fp8 native`` (a GPU of compute capability 8.9 or 9.x)."""
    devices = [devices] if isinstance(devices, torch.device) else list(devices)
    return all(fp8_native_supported(d) for d in devices)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"{torch.cuda.get_device_name(device)} (sm_{major}{minor})"
    return str(device)
