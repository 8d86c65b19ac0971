"""Matrix-vector products for decoding on a CPU, compiled by numba.

A decoding step multiplies every weight by one token's vector (a few with a batch), so it streams
the weights from memory once per token and does two FLOPs per weight read. MKL's GEMV reaches 9-17
GB/s on this project's CPUs depending on the weight's shape and layout; the plain loop below, one dot
product per weight row against every row of x while the weight row sits in L1, reaches 21-30 GB/s
(benchmarks/README.md). Inputs with more rows, or anything but float32 without autograd, go to
``F.linear`` (a GEMM, at the arithmetic rate of the core).
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from numba import prange

from .._numba import FASTMATH, array, parallel, ready, vec
from .naive import linear_ref

# rows of x up to which the loop beats MKL: each weight row is read once for all of them
MAX_ROWS = 8
# weights from this many elements (1 MiB of float32) split their rows over torch's threads
_PARALLEL_ELEMS = 1 << 18
_BLOCK = 64  # weight rows per parallel task


@numba.njit(fastmath=FASTMATH, cache=True, boundscheck=False, nogil=True)
def _rows(w, x, bias, out, i0, i1):
    """out[r, i] = bias[i] + sum_j w[i, j] x[r, j] for weight rows i0 <= i < i1 (bias empty: none)."""
    M, K = x.shape
    if M == 1:  # one dot product per row, nothing else in the loop: about 15% faster than the general case
        for i in range(i0, i1):
            s = np.float32(0.0)
            for j in range(K):
                s += w[i, j] * x[0, j]
            out[0, i] = s
    else:  # every row of x against one weight row while it sits in L1: the weight is read once
        for i in range(i0, i1):
            for r in range(M):
                s = np.float32(0.0)
                for j in range(K):
                    s += w[i, j] * x[r, j]
                out[r, i] = s
    if bias.shape[0]:
        for r in range(M):
            for i in range(i0, i1):
                out[r, i] += bias[i]


@numba.njit(fastmath=FASTMATH, cache=True, boundscheck=False, nogil=True)
def gemv(w, x, bias, out):
    """w: [N, K] row-major; x: [M, K]; bias: [N] or [0]; out: [M, N] (all float32)."""
    _rows(w, x, bias, out, 0, w.shape[0])


@numba.njit(fastmath=FASTMATH, cache=True, boundscheck=False, nogil=True, parallel=True)
def gemv_parallel(w, x, bias, out):
    """``gemv`` with blocks of weight rows spread over numba's threads."""
    N = w.shape[0]
    for b in prange((N + _BLOCK - 1) // _BLOCK):
        _rows(w, x, bias, out, b * _BLOCK, min(N, (b + 1) * _BLOCK))


def applies(x, weight, bias) -> bool:
    """Whether ``linear`` runs the loop: float32 CPU tensors, a row-major weight, at most ``MAX_ROWS``
    rows, and no gradient to record."""
    K = x.shape[-1]
    return (x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32 and K > 0
            and 0 < x.numel() // K <= MAX_ROWS and weight.is_contiguous()
            and (bias is None or bias.dtype == torch.float32)
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                                  or (bias is not None and bias.requires_grad))))


def linear(x, weight, bias=None):
    """x: [..., K]; weight: [N, K]; bias: [N] or None -> [..., N], as ``F.linear``."""
    if not applies(x, weight, bias):
        return linear_ref(x, weight, bias)
    N, K = weight.shape
    rows = x.reshape(-1, K).contiguous()
    out = torch.empty(rows.shape[0], N, dtype=torch.float32)
    b = vec(None if bias is None else bias.contiguous())
    kernel = gemv_parallel if N * K >= _PARALLEL_ELEMS and parallel() else gemv
    args = (array(weight), array(rows), b, array(out))
    ready(kernel, args)
    kernel(*args)
    return out.view(*x.shape[:-1], N)
