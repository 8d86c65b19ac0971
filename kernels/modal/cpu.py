"""Hyena-LR's gated long filter on a CPU, for any number of tokens, compiled by numba.

It runs the modal recurrence that decoding runs, token after token: ``s_n <- p_n s_n + x1v``,
``y = (sum_n R_n s_n + D x1v) * x2``, vectorised over the channels. With Evo 2's real poles
(S = 16) that is 2S multiply-adds per element in one pass over x1v and x2, where the reference
builds the filter, runs two FFTs and projects the state (about 25 PyTorch ops; 5-17x slower,
benchmarks/README.md). The states and sums are float64 within a call, so the result is nearer exact
arithmetic than the FFT's; the state goes back to float32 between calls.

Complex poles (Evo 1) run the reference: its powers follow the reference code's float32 phase
error (``naive.py``), which a recurrence would not reproduce.
"""

from __future__ import annotations

import numpy as np
import torch

from .._numba import NO_STATE, array, jit, over_channels, usable
from .naive import hyena_modal_ref


@jit
def modal_scan(x1v, x2, log_poles, residues, Dskip, state, carry, y, lo, hi):
    """Channels lo..hi-1 of: x1v, x2, y [B, L, D] float32; log_poles, residues: [D, S] real; Dskip:
    [D]; state: [B, D, S], read and overwritten when ``carry`` (else the recurrence starts from zero
    and state is untouched). The states and sums are float64: in float32 a slowly decaying mode
    accumulates rounding over its memory (1e-2 at 8,192 tokens with p = 0.9999, where the FFT loses
    3e-5 and this 7e-6). Unsigned channel indices, as in ``fir/cpu.py``."""
    B, L, D = x1v.shape
    S = log_poles.shape[1]
    W = hi - lo
    ulo, uW = np.uint64(lo), np.uint64(W)  # unsigned + signed would be float64 in numba
    # [S, W]: the inner loops run over contiguous channels
    p = np.empty((S, W), dtype=np.float64)
    r = np.empty((S, W), dtype=np.float64)
    for j in range(uW):
        for n in range(S):
            p[n, j] = np.exp(np.float64(log_poles[ulo + j, n]))
            r[n, j] = residues[ulo + j, n]
    s = np.empty((S, W), dtype=np.float64)
    acc = np.empty(W, dtype=np.float64)
    xt = np.empty(W, dtype=np.float64)
    for b in range(B):
        for n in range(S):
            for j in range(uW):
                s[n, j] = state[b, ulo + j, n] if carry else 0.0
        for t in range(L):
            for j in range(uW):
                xt[j] = x1v[b, t, ulo + j]
                acc[j] = 0.0
            for n in range(S):
                for j in range(uW):
                    v = s[n, j] * p[n, j] + xt[j]
                    s[n, j] = v
                    acc[j] += r[n, j] * v
            for j in range(uW):
                y[b, t, ulo + j] = np.float32((acc[j] + Dskip[ulo + j] * xt[j]) * x2[b, t, ulo + j])
        if carry:
            for n in range(S):
                for j in range(uW):
                    state[b, ulo + j, n] = s[n, j]


def hyena_modal(x1v, x2, log_poles, residues, D, state=None):
    """As ``naive.hyena_modal_ref``: x1v, x2 [B, L, C] -> y [B, L, C]; state [B, C, S] updated in place.
    Real poles on float32 CPU tensors with no gradient to record run here (filter and state
    contiguous); complex poles and anything else run the reference."""
    x1v, x2 = x1v.contiguous(), x2.contiguous()  # strided inputs get the numbers of contiguous ones
    if (log_poles.is_complex() or D is None or log_poles.dim() != 2 or x1v.dim() != 3
            or not usable((x1v, x2, log_poles, residues, D, state))
            or x2.shape != x1v.shape or log_poles.shape != residues.shape or log_poles.shape[0] != x1v.shape[2]
            or D.shape != (x1v.shape[2],)
            or (state is not None and state.shape != (x1v.shape[0], *log_poles.shape))):
        return hyena_modal_ref(x1v, x2, log_poles, residues, D, state)
    y = torch.empty_like(x1v)
    carry = state is not None
    args = (array(x1v), array(x2), array(log_poles), array(residues), array(D),
            array(state) if carry else NO_STATE, carry, array(y))
    over_channels(modal_scan, args, x1v.shape[2], x1v.numel() * log_poles.shape[1])
    return y
