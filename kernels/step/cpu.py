"""One decoding step of a whole Hyena operator on a CPU, compiled by numba: the featurizer's short
filter and pre-gate, the inner filter (explicit taps, or the modal recurrence with real or complex
poles) and the output gate in one call, with both states updated in place. The reference
(``step/naive.py``) is about twenty PyTorch ops for one token, each costing more than its arithmetic."""

from __future__ import annotations

import numba
import numpy as np
import torch

from .._numba import FASTMATH, array, ready
from .naive import hyena_step_ref

_EMPTY = np.zeros(0, dtype=np.float32)


@numba.njit(fastmath=FASTMATH, cache=True, boundscheck=False, nogil=True)
def _featurize(z, w, bias, fir, x1v, x2):
    """z: [B, 3D]; w: [3D, K]; bias: [3D] or [0]; fir: [B, K-1, 3D] (shifted in place).
    Writes x2 [B, D] and x1v [B, D]."""
    B, C3 = z.shape
    K = w.shape[1]
    D = C3 // 3
    zc = np.empty(C3, dtype=np.float32)
    for b in range(B):
        for c in range(C3):
            s = z[b, c] * w[c, K - 1]
            for k in range(K - 1):
                s += fir[b, k, c] * w[c, k]
            zc[c] = s + bias[c] if bias.shape[0] else s
        for k in range(K - 2):
            fir[b, k, :] = fir[b, k + 1, :]
        if K > 1:
            fir[b, K - 2, :] = z[b, :]
        for c in range(D):
            x2[b, c] = zc[c]
            x1v[b, c] = zc[D + c] * zc[2 * D + c]


@numba.njit(fastmath=FASTMATH, cache=True, boundscheck=False, nogil=True)
def step_fir(z, w, bias, fir, h, Dskip, inner, y):
    """Hyena-SE / -MR: h [G, Kh] grouped taps (current token last), Dskip [D] or [0], inner
    [B, Kh-1, D] history of x1v (shifted in place); y: [B, D]."""
    B = z.shape[0]
    D = z.shape[1] // 3
    G, Kh = h.shape
    per = D // G
    x2 = np.empty((B, D), dtype=np.float32)
    x1v = np.empty((B, D), dtype=np.float32)
    _featurize(z, w, bias, fir, x1v, x2)
    for b in range(B):
        for g in range(G):
            hk = h[g, Kh - 1]
            for c in range(g * per, (g + 1) * per):
                y[b, c] = x1v[b, c] * hk
        for k in range(Kh - 1):
            for g in range(G):
                hk = h[g, k]
                for c in range(g * per, (g + 1) * per):
                    y[b, c] += inner[b, k, c] * hk
        for k in range(Kh - 2):
            inner[b, k, :] = inner[b, k + 1, :]
        if Kh > 1:
            inner[b, Kh - 2, :] = x1v[b, :]
        for c in range(D):
            v = y[b, c] + Dskip[c] * x1v[b, c] if Dskip.shape[0] else y[b, c]
            y[b, c] = v * x2[b, c]


@numba.njit(fastmath=FASTMATH, cache=True, boundscheck=False, nogil=True)
def step_modal(z, w, bias, fir, log_poles, residues, Dskip, inner, y):
    """Hyena-LR (real poles) / Evo 1 (complex poles, complex64 arrays): log_poles, residues [D, S];
    inner [B, D, S]: ``s <- exp(log_p) s + x1v``, ``y = (Re sum_n R_n s_n + Dskip x1v) * x2``."""
    B = z.shape[0]
    D = z.shape[1] // 3
    S = log_poles.shape[1]
    x2 = np.empty((B, D), dtype=np.float32)
    x1v = np.empty((B, D), dtype=np.float32)
    _featurize(z, w, bias, fir, x1v, x2)
    for b in range(B):
        for d in range(D):
            acc = np.float32(0.0)
            for n in range(S):
                s = inner[b, d, n] * np.exp(log_poles[d, n]) + x1v[b, d]
                inner[b, d, n] = s
                acc += (residues[d, n] * s).real
            y[b, d] = (acc + Dskip[d] * x1v[b, d]) * x2[b, d]


def _f32(t, shape=None):
    """A float32 (complex64 for complex) contiguous numpy view of a CPU tensor, or None where it is not one."""
    if t is None or t.device.type != "cpu" or t.dtype not in (torch.float32, torch.complex64):
        return None
    return array(t.contiguous())


def hyena_step(z, weight, bias, fir_state, inner_state, h=None, log_poles=None, residues=None, D=None):
    """As ``step/naive.py``: z [B, 1, 3D] -> y [B, 1, D]; fir_state [B, K-1, 3D] and inner_state
    ([B, Kh-1, D] or [B, D, S]) are updated in place. float32 (complex64 modal state) CPU tensors
    without autograd and contiguous states run here, anything else runs the reference."""
    args = (z, weight, bias, fir_state, inner_state, h, log_poles, residues, D)
    modal = h is None
    tensors = [z, weight, fir_state, inner_state] + ([log_poles, residues, D] if modal else [h])
    if (z.dtype != torch.float32 or not fir_state.is_contiguous() or not inner_state.is_contiguous()
            or any(t.device.type != "cpu" for t in tensors)
            or (torch.is_grad_enabled() and any(t.requires_grad for t in tensors if t is not None))
            or (modal and (log_poles.is_complex() != inner_state.is_complex()
                           or residues.dtype != log_poles.dtype or D is None))):
        return hyena_step_ref(*args)
    parts = [_f32(t) for t in (z[:, 0], weight, fir_state, inner_state)]
    parts.insert(2, _EMPTY if bias is None else _f32(bias))
    extra = [_f32(log_poles), _f32(residues)] if modal else [_f32(h)]
    Dskip = _EMPTY if D is None else _f32(D)
    if any(a is None for a in parts + extra) or Dskip is None or fir_state.dtype != torch.float32:
        return hyena_step_ref(*args)
    y = torch.empty(z.shape[0], z.shape[2] // 3, dtype=torch.float32)
    zz, w, b, fir, inner = parts
    kernel, args = (step_modal, (zz, w, b, fir, *extra, Dskip, inner, array(y))) if modal else \
        (step_fir, (zz, w, b, fir, *extra, Dskip, inner, array(y)))
    ready(kernel, args)
    kernel(*args)
    return y[:, None]
