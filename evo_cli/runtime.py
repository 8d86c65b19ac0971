"""Runtime choices: device, dtype and kernel backend. Environment variables are read here only."""

from __future__ import annotations

import os

import torch

from evo_cli.errors import InputError
from evo_cli.kernels import BACKENDS

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
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        dev = None
    name = None if dev is None else f"cuda:{dev.index or 0}" if dev.type == "cuda" else dev.type
    if name not in available:
        raise InputError(f"device {str(device)!r} is not available here: this torch {torch.__version__} has "
                         f"{', '.join(available)} (use auto or one of these)")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``auto`` -> float32 on CPU, bfloat16 on GPUs."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r} (use auto, float32 or bfloat16)")
    return DTYPES[dtype]


def resolve_kernels(kernels: str | None) -> str:
    """Kernel backend: the argument, else ``EVO_KERNELS``, else ``auto``."""
    choice = kernels or os.environ.get("EVO_KERNELS") or "auto"
    if choice not in BACKENDS:
        raise InputError(f"unknown kernel backend {choice!r} (use {', '.join(BACKENDS)})")
    return choice
