"""One decoding step of a whole Hyena block on a CPU in one numba call: both norms, the five
matrix-vector products (the loop of ``linear/cpu.py``), the Hyena step (``step/cpu.py``), the MLP's
gate and both residual adds. Through the block's modules the same step is about 60 PyTorch calls,
whose fixed cost (about 130 us per block on this project's CPUs) is as much as reading a 512-wide
block's weights; benchmarks/README.md."""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

from .._numba import FASTMATH, array, parallel
from ..linear.cpu import _NO_BIAS, _PARALLEL_ELEMS, MAX_ROWS, gemv, gemv_parallel
from ..step.cpu import step_fir, step_modal
from .naive import hyena_block_step_ref

_ACT = {"identity": 0, "gelu": 1, "silu": 2}


@numba.njit(fastmath=FASTMATH, cache=True, boundscheck=False, nogil=True)
def _norm(x, scale, eps, out):
    """RMSNorm of each row of x [B, D] into out, as the reference: x / (||x|| / sqrt(D) + eps) * scale."""
    B, D = x.shape
    for r in range(B):
        s = np.float32(0.0)
        for j in range(D):
            s += x[r, j] * x[r, j]
        d = np.float32(math.sqrt(s)) * np.float32(D ** -0.5) + eps
        for j in range(D):
            out[r, j] = x[r, j] / d * scale[j]


@numba.njit(fastmath=FASTMATH, cache=True, boundscheck=False, nogil=True)
def _mv(w, x, bias, out, par):
    if par and w.shape[0] * w.shape[1] >= _PARALLEL_ELEMS:
        gemv_parallel(w, x, bias, out)
    else:
        gemv(w, x, bias, out)


@numba.njit(fastmath=FASTMATH, cache=True, boundscheck=False, nogil=True)
def _mlp_residual(u, eps, post_scale, l1, l2, l3, act, par, out):
    """out = u + l3(act(l1 n) * l2 n), n = norm(u); u: [B, D]."""
    B, D = u.shape
    n = np.empty_like(u)
    _norm(u, post_scale, eps, n)
    a = np.empty((B, l1.shape[0]), dtype=np.float32)
    g = np.empty_like(a)
    _mv(l1, n, _NO_BIAS, a, par)
    _mv(l2, n, _NO_BIAS, g, par)
    for r in range(B):
        for i in range(a.shape[1]):
            v = a[r, i]
            if act == 1:
                v = np.float32(0.5) * v * (np.float32(1.0) + np.float32(math.erf(v * np.float32(0.7071067811865476))))
            elif act == 2:
                v = v / (np.float32(1.0) + np.float32(math.exp(-v)))
            a[r, i] = v * g[r, i]
    _mv(l3, a, _NO_BIAS, out, par)
    for r in range(B):
        for j in range(D):
            out[r, j] += u[r, j]


@numba.njit(fastmath=FASTMATH, cache=True, boundscheck=False, nogil=True)
def _mix_in(x, eps, pre_scale, proj_w, proj_b, par):
    B, D = x.shape
    n = np.empty_like(x)
    _norm(x, pre_scale, eps, n)
    z = np.empty((B, proj_w.shape[0]), dtype=np.float32)
    _mv(proj_w, n, proj_b, z, par)
    return z


@numba.njit(fastmath=FASTMATH, cache=True, boundscheck=False, nogil=True)
def _mix_out(x, y, out_w, out_b, par):
    u = np.empty_like(x)
    _mv(out_w, y, out_b, u, par)
    u += x
    return u


@numba.njit(fastmath=FASTMATH, cache=True, boundscheck=False, nogil=True)
def block_fir(x, eps, pre_scale, proj_w, proj_b, short_w, short_b, fir, h, Dskip, inner, out_w, out_b,
              post_scale, l1, l2, l3, act, par, out):
    """A Hyena-SE / -MR block; arrays as in ``hyena_block_step_ref`` with x, out [B, D]."""
    z = _mix_in(x, eps, pre_scale, proj_w, proj_b, par)
    y = np.empty_like(x)
    step_fir(z, short_w, short_b, fir, h, Dskip, inner, y)
    _mlp_residual(_mix_out(x, y, out_w, out_b, par), eps, post_scale, l1, l2, l3, act, par, out)


@numba.njit(fastmath=FASTMATH, cache=True, boundscheck=False, nogil=True)
def block_modal(x, eps, pre_scale, proj_w, proj_b, short_w, short_b, fir, log_poles, residues, Dskip, inner,
                out_w, out_b, post_scale, l1, l2, l3, act, par, out):
    """A Hyena-LR / Evo 1 Hyena block (real or complex poles)."""
    z = _mix_in(x, eps, pre_scale, proj_w, proj_b, par)
    y = np.empty_like(x)
    step_modal(z, short_w, short_b, fir, log_poles, residues, Dskip, inner, y)
    _mlp_residual(_mix_out(x, y, out_w, out_b, par), eps, post_scale, l1, l2, l3, act, par, out)


def _vec(t):
    return _NO_BIAS if t is None else array(t)


def hyena_block_step(x, fir_state, inner_state, *, eps, pre_scale, proj_w, proj_b, short_w, short_b, h=None,
                     log_poles=None, residues=None, D=None, out_w, out_b, post_scale, l1, l2, l3, activation):
    """As ``block/naive.py``. Runs here for up to ``MAX_ROWS`` float32 CPU tokens (complex64 modal state)
    with contiguous weights and states and no gradient to record; anything else runs the reference
    (with more tokens the matrix products are GEMMs, which MKL runs at the core's arithmetic rate)."""
    kw = dict(eps=eps, pre_scale=pre_scale, proj_w=proj_w, proj_b=proj_b, short_w=short_w, short_b=short_b, h=h,
              log_poles=log_poles, residues=residues, D=D, out_w=out_w, out_b=out_b, post_scale=post_scale,
              l1=l1, l2=l2, l3=l3, activation=activation)
    modal = h is None
    tensors = [t for t in (x, fir_state, inner_state, *(v for k, v in kw.items() if k not in ("eps", "activation")))
               if t is not None]
    if (x.shape[0] > MAX_ROWS or any(t.device.type != "cpu" or not t.is_contiguous() for t in tensors)
            or any(t.dtype != torch.float32 for t in tensors if t is not inner_state and t is not log_poles
                   and t is not residues)
            or (modal and (D is None or log_poles.dtype != residues.dtype or log_poles.dtype != inner_state.dtype))
            or (not modal and inner_state.dtype != torch.float32)
            or (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))):
        return hyena_block_step_ref(x, fir_state, inner_state, **kw)
    out = torch.empty(x.shape[0], x.shape[2], dtype=torch.float32)
    head = (array(x[:, 0]), np.float32(eps), array(pre_scale), array(proj_w), _vec(proj_b), array(short_w),
            _vec(short_b), array(fir_state))
    tail = (array(inner_state), array(out_w), _vec(out_b), array(post_scale), array(l1), array(l2), array(l3),
            _ACT[activation], parallel(), array(out))
    if modal:
        block_modal(*head, array(log_poles), array(residues), array(D), *tail)
    else:
        block_fir(*head, array(h), _vec(D), *tail)
    return out[:, None]
