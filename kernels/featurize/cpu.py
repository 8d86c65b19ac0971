"""Hyena featurizer on a CPU for any number of tokens, compiled by numba: the short causal filter
over ``z = [x2 | x1 | v]``, its bias, the split and the pre-gate ``x1 * v`` in one pass over z (the
reference makes one pass per tap, one for the bias and one for the gate). Each output sums its taps
in the order of the decoding step (``step/cpu.py``), so a prefill continued by decoding gives the
numbers of one call."""

from __future__ import annotations

import numpy as np
import torch

from .._numba import array, jit, ready, usable, vec
from ..fir.cpu import causal_taps, push_history, taps_by_channel
from .naive import hyena_featurize_ref


@jit
def featurize(z, w, bias, state, carry, x2, x1v):
    """z: [B, L, 3D]; w: [3D, K] (current token last); bias: [3D] or [0]; state: [B, K-1, 3D] history
    of z, read and moved on when ``carry``. Writes x2, x1v: [B, L, D]."""
    B, L, C3 = z.shape
    D = C3 // 3
    wt = taps_by_channel(w, C3)
    zc = np.empty(C3, dtype=np.float32)
    for b in range(B):
        for t in range(L):
            causal_taps(z, wt, state, carry, b, t, zc)
            if bias.shape[0]:
                for c in range(C3):
                    zc[c] += bias[c]
            for c in range(D):
                x2[b, t, c] = zc[c]
                x1v[b, t, c] = zc[D + c] * zc[2 * D + c]
    if carry:
        push_history(z, state)


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
    ready(featurize, args)
    featurize(*args)
    return x2, x1v
