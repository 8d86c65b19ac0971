"""Rotary embedding on a CPU, compiled by numba: one pass over the queries or keys, where the
reference makes seven (split, four products, a difference, a sum and the concatenation), each paying
an op's fixed cost. Each output is the reference's two products and their sum or difference, rounded
alike: the same bits."""

from __future__ import annotations

import numpy as np
import torch

from .._numba import array, jit, ready, recording, usable
from ..attention.naive import rotate_halves_ref


@jit
def rope(x, cos, sin, out):
    """out[b, t, h] <- x[b, t, h] with its halves (x0, x1) turned to (x0 cos - x1 sin, x0 sin + x1 cos):
    x [B, L, H, hd] (any strides, e.g. a view of the QKV projection), cos, sin [L, hd / 2], out
    [B, L, H, hd] contiguous."""
    B, L, H, hd = x.shape
    half = hd // 2
    for b in range(B):
        for t in range(L):
            c, s = cos[t], sin[t]
            for h in range(H):
                xr, o = x[b, t, h], out[b, t, h]
                for j in range(half):
                    x0, x1 = xr[j], xr[half + j]
                    o[j] = x0 * c[j] - x1 * s[j]
                    o[half + j] = x0 * s[j] + x1 * c[j]


def rotate_halves(x, cos, sin):
    """As ``rotate_halves_ref`` for x [B, L, H, hd] float32 with a contiguous last dim (a view of the
    QKV projection is fine) and cos, sin [1, L, 1, hd / 2] contiguous, with no derivative to record;
    anything else runs the reference."""
    if (x.dim() != 4 or x.shape[-1] % 2 or x.stride(-1) != 1 or x.dtype != torch.float32 or x.device.type != "cpu"
            or cos.shape != (1, x.shape[1], 1, x.shape[-1] // 2) or sin.shape != cos.shape
            or not usable((cos, sin)) or recording((x,))):
        return rotate_halves_ref(x, cos, sin)
    out = torch.empty(x.shape, dtype=torch.float32)
    args = (x.detach().numpy(), array(cos[0, :, 0]), array(sin[0, :, 0]), array(out))
    ready(rope, args)
    rope(*args)
    return out
