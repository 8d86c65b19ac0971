"""Hyena featurizer: short causal conv over the input projection, split into x2 / x1 / v, pre-gate."""

from __future__ import annotations

from ..fir.naive import causal_conv1d_ref


def hyena_featurize_ref(z, weight, bias=None, state=None):
    """z: [B, L, 3D] projection output with channels ordered ``[x2 | x1 | v]`` (loaders reorder the
    published interleaved / per-head layouts into this one); weight: [3D, K] short filter, current
    token last; bias: [3D] or None; state: [B, K-1, 3D] history of z, updated in place.
    Returns x2, x1v: [B, L, D] in z.dtype, with ``x1v = x1 * v``.
    """
    zc = causal_conv1d_ref(z, weight, bias, state)
    x2, x1, v = zc.chunk(3, dim=-1)
    return x2.to(z.dtype), (x1 * v).to(z.dtype)
