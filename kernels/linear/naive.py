"""A dense layer, ``x @ weight.T + bias``: the reference for ``linear/cpu.py``."""

from __future__ import annotations

import torch.nn.functional as F


def linear_ref(x, weight, bias=None):
    """x: [..., K]; weight: [N, K]; bias: [N] or None -> [..., N] (``F.linear``)."""
    return F.linear(x, weight, bias)
