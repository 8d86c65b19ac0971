"""Causal attention of a chunk over a KV cache on CPU: the C++ kernel (``cpu.cpp``) where it can be
built, else torch's fused flash kernel.

``native_attention`` runs ``cpu.cpp`` (compiled on first use, ``_native.py``): at head size 32 it takes
0.7x the flash kernel's time over a KV cache and 0.5x on a chunk alone (benchmarks/README.md, tenth
round). With the flash kernel, the keys split in two: the ``offset`` cached positions, which every query of the chunk sees, and
the chunk's own, seen causally. Torch's CPU flash kernel does each part without a mask (bounded
memory) and returns the log-sum-exp of its softmax, so the two partial outputs merge exactly:
``o = (o1 * e^lse1 + o2 * e^lse2) / (e^lse1 + e^lse2)``. The kernel is a private aten op: where a
torch build lacks it, ``causal_attention_ref`` (the blocked reference) is used instead.
"""

from __future__ import annotations

import ctypes

import torch

from .. import _native
from .naive import causal_attention_ref

_FLASH = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
# the head sizes cpu.cpp has a kernel for (at 128 torch's flash kernel is 5% faster)
HEAD_SIZES = (16, 32, 64)
_ARGS = [ctypes.c_void_p] * 4 + [ctypes.c_int] * 5 + [ctypes.c_float, ctypes.POINTER(ctypes.c_int64)] + [ctypes.c_int] * 2


def native_attention(q, k, v, offset: int):
    """q: [B, H, Lq, hd]; k, v: [B, H, offset + Lq, hd] -> [B, H, Lq, hd] (a view of a [B, Lq, H, hd]
    tensor, so that the heads merge back without a copy), by ``cpu.cpp``; None where the kernel does
    not apply (not float32 CPU tensors, a head size it has no kernel for, a derivative to record) or
    cannot be built here. Any strides but a strided last axis (then copied) go to the kernel as they are."""
    B, H, Lq, hd = q.shape
    Lk = k.shape[2]
    # key positions are compared as floats in the kernel: exact below 2^24
    if not (hd in HEAD_SIZES and k.shape == v.shape == (B, H, Lk, hd) and Lk == offset + Lq and 0 < Lq and Lk < 1 << 24
            and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in (q, k, v))
            and not (torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)))):
        return None
    fn = _native.function("attention", "causal_attention", _ARGS, ctypes.c_int)
    if fn is None:
        return None
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    out = torch.empty(B, Lq, H, hd, dtype=torch.float32).transpose(1, 2)
    strides = (ctypes.c_int64 * 12)(*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3])
    args = (q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), H, Lq, Lk, hd, offset, hd**-0.5, strides)

    def run(lo: int, hi: int) -> None:
        if fn(*args, lo, hi) != 0:
            raise MemoryError(f"no memory for the attention kernel's keys ({Lk} x {hd} floats)")

    heads = B * H
    # each head's numbers are the same however the heads are split among threads
    _native.over_ranges(run, heads, heads * Lq * (offset + (Lq + 1) // 2) * hd * 2, torch.get_num_threads())
    return out


def causal_attention_cpu(q, k, v, offset: int):
    """q: [B, H, Lq, hd]; k, v: [B, H, offset + Lq, hd] -> [B, H, Lq, hd] in q.dtype."""
    if _FLASH is None or offset == 0:
        return causal_attention_ref(q, k, v, offset)
    o1, lse1 = _FLASH(q, k[:, :, :offset], v[:, :, :offset], 0.0, False)[:2]
    o2, lse2 = _FLASH(q, k[:, :, offset:], v[:, :, offset:], 0.0, True)[:2]
    m = torch.maximum(lse1, lse2)
    w1, w2 = torch.exp(lse1 - m)[..., None], torch.exp(lse2 - m)[..., None]
    return ((o1.float() * w1 + o2.float() * w2) / (w1 + w2)).to(q.dtype)
