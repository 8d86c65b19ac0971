"""Causal attention of a chunk over a KV cache on CPU, with torch's fused flash kernel.

The keys split in two: the ``offset`` cached positions, which every query of the chunk sees, and
the chunk's own, seen causally. Torch's CPU flash kernel does each part without a mask (bounded
memory) and returns the log-sum-exp of its softmax, so the two partial outputs merge exactly:
``o = (o1 * e^lse1 + o2 * e^lse2) / (e^lse1 + e^lse2)``. The kernel is a private aten op: where a
torch build lacks it, ``causal_attention_ref`` (the blocked reference) is used instead.
"""

from __future__ import annotations

import torch

from .naive import causal_attention_ref

_FLASH = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def causal_attention_cpu(q, k, v, offset: int):
    """q: [B, H, Lq, hd]; k, v: [B, H, offset + Lq, hd] -> [B, H, Lq, hd] in q.dtype."""
    if _FLASH is None or offset == 0:
        return causal_attention_ref(q, k, v, offset)
    o1, lse1 = _FLASH(q, k[:, :, :offset], v[:, :, :offset], 0.0, False)[:2]
    o2, lse2 = _FLASH(q, k[:, :, offset:], v[:, :, offset:], 0.0, True)[:2]
    m = torch.maximum(lse1, lse2)
    w1, w2 = torch.exp(lse1 - m)[..., None], torch.exp(lse2 - m)[..., None]
    return ((o1.float() * w1 + o2.float() * w2) / (w1 + w2)).to(q.dtype)
