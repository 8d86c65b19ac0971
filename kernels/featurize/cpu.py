"""Hyena featurizer on a CPU for any number of tokens, compiled by numba: the short causal filter
over ``z = [x2 | x1 | v]``, its bias, the split and the pre-gate ``x1 * v`` in one pass over z (the
reference makes one pass per tap, one for the bias and one for the gate). Each output sums its taps
in the order of the decoding step (``step/cpu.py``), so a prefill continued by decoding gives the
numbers of one call."""

from __future__ import annotations

import numpy as np
import torch

from .._numba import NO_STATE, array, jit, over_channels, usable, vec
from ..fir.cpu import causal_taps, push_history, taps_by_channel
from .naive import hyena_featurize_ref


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
    for b in range(B):
        for t in range(L):
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
