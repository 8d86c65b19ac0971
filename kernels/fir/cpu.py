"""Gated Hyena-SE / Hyena-MR filter on a CPU for any number of tokens, compiled by numba:
``y = (causal_conv(x1v, h) + D * x1v) * x2`` in one pass, where the reference makes one pass per tap
(Hyena-SE) or a convolution call with transposed copies (Hyena-MR), then the skip term and the gate.
For Hyena-MR's 128 taps the loop is 1.3-2.4x faster than the convolution call from 2,048 tokens
up, and 1.4x slower on the quick start's [4, 256, 128] windows, where the call's data stay in cache
(benchmarks/README.md): one path for every size keeps a sequence's numbers independent of how it is
batched.
Each output sums its taps in the order of the decoding step (``step/cpu.py``), so a prefill continued
by decoding gives the numbers of one call. ``causal_taps`` and ``push_history`` also serve the
featurizer (``featurize/cpu.py``)."""

from __future__ import annotations

import numpy as np
import torch

from .._numba import NO_STATE, array, jit, over_channels, usable, vec
from .naive import hyena_fir_ref


@jit
def taps_by_channel(h, C):
    """h: [G, K] grouped taps (channel c uses row c // (C // G)) -> [K, C] float32, one row per tap:
    the inner loops then run over contiguous channels."""
    G, K = h.shape
    per = C // G
    out = np.empty((K, C), dtype=np.float32)
    for c in range(C):
        for k in range(K):
            out[k, c] = h[c // per, k]
    return out


# The kernels below take a channel range lo..hi-1 (``_numba.over_channels``) and loop over it with
# unsigned indices: numba would otherwise guard each index against wrapping around from the end of
# the array, which keeps the loop from vectorising (8x slower).


@jit
def causal_taps(x, wt, state, carry, b, t, lo, hi, out):
    """out[lo:hi] <- ``sum_k wt[k] * x[b, t - (K-1-k)]`` over channels lo..hi-1 (wt: [K, C], current
    token last), oldest token first as a convolution sums (and the decoding step, ``step/cpu.py``).
    Inputs before the sequence's start are ``state[b]`` ([B, K-1, C]) when ``carry``, else zero."""
    K = wt.shape[0]
    ulo, uhi = np.uint64(lo), np.uint64(hi)
    for c in range(ulo, uhi):
        out[c] = np.float32(0.0)
    for k in range(K):
        src = t - (K - 1 - k)
        if src >= 0:
            row = x[b, src]
        elif carry:
            row = state[b, state.shape[1] + src]
        else:
            continue
        for c in range(ulo, uhi):
            out[c] += row[c] * wt[k, c]


@jit
def push_history(x, state, lo, hi):
    """state[:, :, lo:hi] ([B, K-1, C]) <- the last K-1 rows of ``[state, x]`` (x: [B, L, C]), for the
    next call."""
    B, L = x.shape[0], x.shape[1]
    K1 = state.shape[1]
    ulo, uhi = np.uint64(lo), np.uint64(hi)
    for b in range(B):
        for i in range(K1):  # reads row L + i of [state, x]: at or after the row it writes
            src = L + i - K1
            row = x[b, src] if src >= 0 else state[b, K1 + src]
            for c in range(ulo, uhi):
                state[b, i, c] = row[c]


@jit
def fir_gate(x1v, x2, h, Dskip, state, carry, y, lo, hi):
    """Channels lo..hi-1 of: x1v, x2, y [B, L, C]; h: [G, K] taps (current token last); Dskip: [C]
    or [0]; state: [B, K-1, C] history of x1v, read and moved on when ``carry``."""
    B, L, C = x1v.shape
    wt = taps_by_channel(h, C)
    acc = np.empty(C, dtype=np.float32)
    ulo, uhi = np.uint64(lo), np.uint64(hi)
    for b in range(B):
        for t in range(L):
            causal_taps(x1v, wt, state, carry, b, t, lo, hi, acc)
            for c in range(ulo, uhi):
                v = acc[c] + Dskip[c] * x1v[b, t, c] if Dskip.shape[0] else acc[c]
                y[b, t, c] = v * x2[b, t, c]
    if carry:
        push_history(x1v, state, lo, hi)


def hyena_fir(x1v, x2, h, D=None, state=None):
    """As ``naive.hyena_fir_ref``: x1v, x2 [B, L, C] -> y [B, L, C]; state [B, K-1, C] updated in place.
    float32 CPU tensors with no gradient to record run here (weights and state contiguous); anything
    else runs the reference."""
    B, L, C = x1v.shape
    G, K = h.shape[0], h.shape[-1]
    x1v, x2 = x1v.contiguous(), x2.contiguous()  # strided inputs get the numbers of contiguous ones
    if (not usable((x1v, x2, h, D, state)) or h.dim() != 2 or x2.shape != x1v.shape
            or C % G  # groups must tile the channels (the reference raises)
            or (D is not None and D.shape != (C,)) or (state is not None and state.shape != (B, K - 1, C))):
        return hyena_fir_ref(x1v, x2, h, D, state)
    y = torch.empty_like(x1v)
    carry = state is not None
    args = (array(x1v), array(x2), array(h), vec(D),
            array(state) if carry else NO_STATE, carry, array(y))
    over_channels(fir_gate, args, C, x1v.numel() * K)
    return y
