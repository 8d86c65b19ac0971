"""Hyena featurizer on a CPU for any number of tokens, compiled by numba: the short causal filter
over ``z = [x2 | x1 | v]``, its bias, the split and the pre-gate ``x1 * v`` in one pass over z (the
reference makes one pass per tap, one for the bias and one for the gate). Each output sums its taps
in the order of the decoding step (``step/cpu.py``), so a prefill continued by decoding gives the
numbers of one call."""

from __future__ import annotations

import numpy as np
import torch

from .._numba import array, jit, over_channels, usable, vec
from ..fir.cpu import causal_taps, push_history, taps_by_channel
from .naive import hyena_featurize_ref


@jit
def featurize(z, w, bias, state, carry, x2, x1v, lo, hi):
    """Output channels lo..hi-1 of: z [B, L, 3D]; w: [3D, K] (current token last); bias: [3D] or [0];
    state: [B, K-1, 3D] history of z, read and moved on when ``carry``; x2, x1v: [B, L, D]. Loops
    over slices, as in ``fir/cpu.py``."""
    B, L, C3 = z.shape
    D = C3 // 3
    n = hi - lo
    wt = taps_by_channel(w, C3)
    zc = np.empty(C3, dtype=np.float32)
    g2, g1, gv = zc[lo:hi], zc[D + lo : D + hi], zc[2 * D + lo : 2 * D + hi]
    for b in range(B):
        for t in range(L):
            for j in range(3):  # the x2, x1 and v channels of this range
                causal_taps(z, wt, state, carry, b, t, j * D + lo, j * D + hi, zc)
                if bias.shape[0]:
                    part, bj = zc[j * D + lo : j * D + hi], bias[j * D + lo : j * D + hi]
                    for c in range(n):
                        part[c] += bj[c]
            o2, o1v = x2[b, t, lo:hi], x1v[b, t, lo:hi]
            for c in range(n):
                o2[c] = g2[c]
                o1v[c] = g1[c] * gv[c]
    if carry:
        for j in range(3):
            push_history(z, state, j * D + lo, j * D + hi)


def hyena_featurize(z, weight, bias=None, state=None):
    """As ``naive.hyena_featurize_ref``: z [B, L, 3D] -> x2, x1v [B, L, D]; state [B, K-1, 3D] updated
    in place. float32 CPU tensors with no gradient to record run here (weights and state contiguous),
    anything else runs the reference."""
    B, L, C3 = z.shape
    K = weight.shape[1]
    z = z.contiguous()  # a strided z (a hook's output) gets the same numbers as a contiguous one
    if (not usable((z, weight, bias, state)) or C3 % 3 or weight.shape[0] != C3
            or (bias is not None and bias.shape != (C3,))
            or (state is not None and state.shape != (B, K - 1, C3))):
        return hyena_featurize_ref(z, weight, bias, state)
    x2 = torch.empty(B, L, C3 // 3, dtype=torch.float32)
    x1v = torch.empty_like(x2)
    carry = state is not None
    args = (array(z), array(weight), vec(bias), array(state) if carry else np.zeros((1, 1, 1), dtype=np.float32),
            carry, array(x2), array(x1v))
    over_channels(featurize, args, C3 // 3, z.numel() * K)
    return x2, x1v
