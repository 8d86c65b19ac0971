"""RMSNorm on a CPU in one pass per row (``cpu.cpp``, compiled on first use by ``_native.py``), with
the residual add before it fused in (``add_rms_norm``). torch's ops make three passes over the
activations for the norm and one for the add (benchmarks/README.md, tenth round). Where the kernel
cannot be built, or the tensors are not float32 CPU tensors without a derivative to record, the
reference ops run."""

from __future__ import annotations

import ctypes

import torch

from .. import _native
from .naive import rms_norm_ref

_ARGS = [ctypes.c_void_p] * 5 + [ctypes.c_int, ctypes.c_float, ctypes.c_float, ctypes.c_int64, ctypes.c_int64]


def _usable(*tensors) -> bool:
    return (all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
            and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)))


def _run(x, residual, scale, eps):
    """(u, y) by the kernel (u None without a residual), or None where it does not apply. A strided input
    is copied, not sent to the reference ops: a row gets the same bits however it is laid out."""
    D = x.shape[-1]
    if not (D > 0 and scale.shape == (D,) and _usable(x, scale, *([] if residual is None else [residual]))
            and (residual is None or residual.shape == x.shape)):
        return None
    fn = _native.function("norm", "rms_norm", _ARGS, None)
    if fn is None:
        return None
    x, scale = x.contiguous(), scale.contiguous()
    residual = None if residual is None else residual.contiguous()
    y = torch.empty_like(x)
    u = None if residual is None else torch.empty_like(x)
    rows = x.numel() // D
    args = (x.data_ptr(), None if residual is None else residual.data_ptr(), scale.data_ptr(),
            None if u is None else u.data_ptr(), y.data_ptr(), D, D**-0.5, eps)
    _native.over_ranges(lambda lo, hi: fn(*args, lo, hi), rows, x.numel(), torch.get_num_threads())
    return u, y


def rms_norm(x, scale, eps):
    """x: [..., D]; scale: [D] -> [..., D], as ``rms_norm_ref``."""
    out = _run(x, None, scale, eps)
    return rms_norm_ref(x, scale, eps) if out is None else out[1]


def add_rms_norm(x, residual, scale, eps):
    """(u, y): u = x + residual [..., D], y = rms_norm(u) [..., D]."""
    out = _run(x, residual, scale, eps)
    if out is None:
        u = x + residual
        return u, rms_norm_ref(u, scale, eps)
    return out
