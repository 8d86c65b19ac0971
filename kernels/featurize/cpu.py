"""Hyena featurizer on a CPU for any number of tokens, compiled by numba: the short causal filter
over ``z = [x2 | x1 | v]``, its bias, the split and the pre-gate ``x1 * v`` in one pass over z (the
reference makes one pass per tap, one for the bias and one for the gate), four tokens at a time for
three taps (1.4-1.7x faster than a token at a time). Each output sums its taps
in the order of the decoding step (``step/cpu.py``), so a prefill continued by decoding gives the
numbers of one call."""

from __future__ import annotations

import numpy as np
import torch

from .._numba import NO_STATE, array, jit, over_channels, usable, vec
from ..fir.cpu import causal_taps, push_history, taps_by_channel
from .naive import hyena_featurize_ref


@jit
def _three_taps(e0, e1, e2, e3, e4, e5, w0, w1, w2, bias, i):
    """Channel i of four tokens from the six rows e0..e5 (oldest first) and taps w0..w2: each sum from
    zero, oldest tap first, then the bias (when ``bias`` has entries), as ``causal_taps`` adds them."""
    a, p, q = w0[i], w1[i], w2[i]
    s0 = np.float32(0.0) + e0[i] * a
    s0 += e1[i] * p
    s0 += e2[i] * q
    s1 = np.float32(0.0) + e1[i] * a
    s1 += e2[i] * p
    s1 += e3[i] * q
    s2 = np.float32(0.0) + e2[i] * a
    s2 += e3[i] * p
    s2 += e4[i] * q
    s3 = np.float32(0.0) + e3[i] * a
    s3 += e4[i] * p
    s3 += e5[i] * q
    if bias.shape[0]:
        return s0 + bias[i], s1 + bias[i], s2 + bias[i], s3 + bias[i]
    return s0, s1, s2, s3


@jit
def three_taps4(src, r, wt, bias, x2, x1v, b, t0, lo, hi):
    """Tokens t0..t0+3 of x2 and x1v [B, L, D], channels lo..hi-1, for three taps (every published
    model's short filter) from the six rows src[r:r+6] of z (3D channels each, the oldest first). One
    pass over the channels computes the four tokens' x2, x1 and v, adding the taps and then the bias
    in ``causal_taps``' order (the same bits), where a token at a time (``featurize`` for other filter
    lengths and the last L % 4 tokens) makes seven passes. The rows come from one array: from several,
    the loop did not vectorise (2x slower)."""
    D = x2.shape[2]
    ulo, uhi, uD, u2D = np.uint64(lo), np.uint64(hi), np.uint64(D), np.uint64(2 * D)
    w0, w1, w2 = wt[0], wt[1], wt[2]
    e0, e1, e2, e3, e4, e5 = src[r], src[r + 1], src[r + 2], src[r + 3], src[r + 4], src[r + 5]
    y0, y1, y2, y3 = x2[b, t0], x2[b, t0 + 1], x2[b, t0 + 2], x2[b, t0 + 3]
    g0, g1, g2, g3 = x1v[b, t0], x1v[b, t0 + 1], x1v[b, t0 + 2], x1v[b, t0 + 3]
    # two passes, x2 then x1v: one pass storing both did not vectorise
    for c in range(ulo, uhi):
        y0[c], y1[c], y2[c], y3[c] = _three_taps(e0, e1, e2, e3, e4, e5, w0, w1, w2, bias, c)
    for c in range(ulo, uhi):  # x1 and v: channels c + D and c + 2D
        u0, u1, u2, u3 = _three_taps(e0, e1, e2, e3, e4, e5, w0, w1, w2, bias, c + uD)
        v0, v1, v2, v3 = _three_taps(e0, e1, e2, e3, e4, e5, w0, w1, w2, bias, c + u2D)
        g0[c], g1[c], g2[c], g3[c] = u0 * v0, u1 * v1, u2 * v2, u3 * v3


@jit
def featurize(z, w, bias, state, carry, x2, x1v, lo, hi):
    """Output channels lo..hi-1 of: z [B, L, 3D]; w: [3D, K] (current token last); bias: [3D] or [0];
    state: [B, K-1, 3D] history of z, read and moved on when ``carry``; x2, x1v: [B, L, D]. Unsigned
    channel indices, as in ``fir/cpu.py``."""
    B, L, C3 = z.shape
    D = C3 // 3
    wt = taps_by_channel(w, C3)
    zc = np.empty(C3, dtype=np.float32)
    # unsigned (see fir/cpu.py); unsigned with signed would be float64 in numba
    ulo, uhi, uD, u2D = np.uint64(lo), np.uint64(hi), np.uint64(D), np.uint64(2 * D)
    K = wt.shape[0]
    head = np.zeros((6, C3), dtype=np.float32)  # the first four tokens' rows: the history (or zeros), then z
    for b in range(B):
        done = 0
        if K == 3:  # four tokens at a time (three_taps4), the last L % 4 below
            done = L // 4 * 4
            for t0 in range(0, done, 4):
                if t0 > 0:
                    three_taps4(z[b], t0 - 2, wt, bias, x2, x1v, b, t0, lo, hi)
                    continue
                for i in range(6):
                    for j in range(3):  # the x2, x1 and v channels of this range
                        for c in range(j * D + lo, j * D + hi):
                            if i >= 2:
                                head[i, c] = z[b, i - 2, c]
                            elif carry:
                                head[i, c] = state[b, i, c]
                            else:
                                head[i, c] = np.float32(0.0)
                three_taps4(head, 0, wt, bias, x2, x1v, b, 0, lo, hi)
        for t in range(done, L):
            if lo == 0 and hi == D:  # all channels: one pass over the three thirds
                causal_taps(z, wt, state, carry, b, t, 0, C3, zc)
            else:
                for j in range(3):  # the x2, x1 and v channels of this range
                    causal_taps(z, wt, state, carry, b, t, j * D + lo, j * D + hi, zc)
            if bias.shape[0]:
                for c in range(ulo, uhi):
                    zc[c] += bias[c]
                    zc[uD + c] += bias[uD + c]
                    zc[u2D + c] += bias[u2D + c]
            for c in range(ulo, uhi):
                x2[b, t, c] = zc[c]
                x1v[b, t, c] = zc[uD + c] * zc[u2D + c]
    if carry:
        for j in range(3):
            push_history(z, state, j * D + lo, j * D + hi)


def hyena_featurize(z, weight, bias=None, state=None):
    """As ``naive.hyena_featurize_ref``: z [B, L, 3D] -> x2, x1v [B, L, D]; state [B, K-1, 3D] updated
    in place. float32 CPU tensors with no gradient to record run here (weights and state contiguous),
    anything else runs the reference."""
    B, L, C3 = z.shape
    K = weight.shape[-1]
    z = z.contiguous()  # a strided z (a hook's output) gets the same numbers as a contiguous one
    if (not usable((z, weight, bias, state)) or C3 % 3 or weight.dim() != 2 or weight.shape[0] != C3
            or (bias is not None and bias.shape != (C3,))
            or (state is not None and state.shape != (B, K - 1, C3))):
        return hyena_featurize_ref(z, weight, bias, state)
    x2 = torch.empty(B, L, C3 // 3, dtype=torch.float32)
    x1v = torch.empty_like(x2)
    carry = state is not None
    args = (array(z), array(weight), vec(bias), array(state) if carry else NO_STATE,
            carry, array(x2), array(x1v))
    over_channels(featurize, args, C3 // 3, z.numel() * K)
    return x2, x1v
