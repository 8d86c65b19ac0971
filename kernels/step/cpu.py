"""One decoding step of a whole Hyena operator on a CPU, compiled by numba: the featurizer's short
filter and pre-gate, the inner filter (explicit taps, or the modal recurrence with real or complex
poles) and the output gate in one call, with both states updated in place. The reference
(``step/naive.py``) is about twenty PyTorch ops for one token, each costing more than its arithmetic.

The explicit filters add their taps in the order of the window kernels (``featurize/cpu.py``,
``fir/cpu.py``), so a window and steps give the same bits, but do not call them: those lay the taps
out per channel on every call (128 x D floats for Hyena-MR), a copy one token should not pay for."""

from __future__ import annotations

import numpy as np
import torch

from .._numba import array, jit, ready, usable, vec
from .naive import hyena_step_ref


@jit
def _featurize(z, w, bias, fir, x1v, x2):
    """z: [B, 3D]; w: [3D, K]; bias: [3D] or [0]; fir: [B, K-1, 3D] (shifted in place).
    Writes x2 [B, D] and x1v [B, D]."""
    B, C3 = z.shape
    K = w.shape[1]
    D = C3 // 3
    zc = np.empty(C3, dtype=np.float32)
    for b in range(B):
        for c in range(C3):  # oldest token first, as a convolution sums
            s = np.float32(0.0)
            for k in range(K - 1):
                s += fir[b, k, c] * w[c, k]
            s += z[b, c] * w[c, K - 1]
            zc[c] = s + bias[c] if bias.shape[0] else s
        for k in range(K - 2):
            fir[b, k, :] = fir[b, k + 1, :]
        if K > 1:
            fir[b, K - 2, :] = z[b, :]
        for c in range(D):
            x2[b, c] = zc[c]
            x1v[b, c] = zc[D + c] * zc[2 * D + c]


@jit
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
        y[b, :] = np.float32(0.0)
        for k in range(Kh - 1):  # oldest token first, as a convolution sums
            for g in range(G):
                hk = h[g, k]
                for c in range(g * per, (g + 1) * per):
                    y[b, c] += inner[b, k, c] * hk
        for g in range(G):
            hk = h[g, Kh - 1]
            for c in range(g * per, (g + 1) * per):
                y[b, c] += x1v[b, c] * hk
        for k in range(Kh - 2):
            inner[b, k, :] = inner[b, k + 1, :]
        if Kh > 1:
            inner[b, Kh - 2, :] = x1v[b, :]
        for c in range(D):
            v = y[b, c] + Dskip[c] * x1v[b, c] if Dskip.shape[0] else y[b, c]
            y[b, c] = v * x2[b, c]


@jit
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


def hyena_step(z, weight, bias, fir_state, inner_state, h=None, log_poles=None, residues=None, D=None):
    """As ``step/naive.py``: z [B, 1, 3D] -> y [B, 1, D]; fir_state [B, K-1, 3D] and inner_state
    ([B, Kh-1, D] or [B, D, S]) are updated in place. Contiguous float32 CPU tensors (a complex64
    modal state and poles) with no gradient to record run here, anything else runs the reference."""
    modal = h is None
    filt = (log_poles, residues, D) if modal else (h, D)
    complex_ok = (inner_state, log_poles, residues) if modal else ()
    B, C3 = z.shape[0], z.shape[2]
    if (not usable((z, weight, bias, fir_state, inner_state, *filt), complex_ok) or z.shape[1] != 1 or C3 % 3
            or weight.dim() != 2 or weight.shape[0] != C3 or (bias is not None and bias.shape != (C3,))
            or (modal and log_poles.dim() != 2) or (not modal and h.dim() != 2)
            or fir_state.shape != (B, weight.shape[1] - 1, C3)
            or (D is not None and D.shape != (C3 // 3,))
            or (modal and (D is None or not log_poles.dtype == residues.dtype == inner_state.dtype
                           or log_poles.shape != residues.shape or log_poles.shape[0] != C3 // 3
                           or inner_state.shape != (B, *log_poles.shape)))
            or (not modal and ((C3 // 3) % h.shape[0]  # groups must tile the channels (the reference raises)
                               or inner_state.shape != (B, h.shape[1] - 1, C3 // 3)))):
        # the kernel has no bounds checks: any other shape goes to the reference, which raises on it
        return hyena_step_ref(z, weight, bias, fir_state, inner_state, h, log_poles, residues, D)
    y = torch.empty(z.shape[0], z.shape[2] // 3, dtype=torch.float32)
    kernel = step_modal if modal else step_fir
    args = (array(z[:, 0]), array(weight), vec(bias), array(fir_state), *(vec(t) for t in filt), array(inner_state),
            array(y))
    ready(kernel, args)
    kernel(*args)
    return y[:, None]
