"""RMSNorm on a CPU in one pass over each row, compiled by numba (the reference is five ops and
four passes over x: norm, scale, add, divide, multiply)."""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from numba import prange

from .._numba import FASTMATH, array, parallel
from .naive import rms_norm_ref

_PARALLEL_ELEMS = 1 << 16  # from this many elements of x, rows spread over torch's threads


@numba.njit(fastmath=FASTMATH, cache=True, boundscheck=False, nogil=True)
def _row(x, scale, eps, out, r):
    D = x.shape[1]
    s = np.float32(0.0)
    for j in range(D):
        s += x[r, j] * x[r, j]
    # as the reference: ||x|| / sqrt(D) + eps, then x divided by it and scaled
    d = np.float32(math.sqrt(s)) * np.float32(D ** -0.5) + eps
    for j in range(D):
        out[r, j] = x[r, j] / d * scale[j]


@numba.njit(fastmath=FASTMATH, cache=True, boundscheck=False, nogil=True)
def rms_norm_rows(x, scale, eps, out):
    """x, out: [R, D] float32; scale: [D] float32; eps: float32."""
    for r in range(x.shape[0]):
        _row(x, scale, eps, out, r)


@numba.njit(fastmath=FASTMATH, cache=True, boundscheck=False, nogil=True, parallel=True)
def rms_norm_rows_parallel(x, scale, eps, out):
    for r in prange(x.shape[0]):
        _row(x, scale, eps, out, r)


def rms_norm(x, scale, eps):
    """x: [..., D]; scale: [D] -> [..., D] in x.dtype; float32 without autograd here, else the reference."""
    if (x.device.type != "cpu" or x.dtype != torch.float32 or scale.dtype != torch.float32 or x.numel() == 0
            or (torch.is_grad_enabled() and (x.requires_grad or scale.requires_grad))):
        return rms_norm_ref(x, scale, eps)
    D = x.shape[-1]
    rows = x.reshape(-1, D).contiguous()
    out = torch.empty_like(rows)
    kernel = rms_norm_rows_parallel if x.numel() >= _PARALLEL_ELEMS and parallel() else rms_norm_rows
    kernel(array(rows), array(scale.contiguous()), np.float32(eps), array(out))
    return out.view(x.shape)
