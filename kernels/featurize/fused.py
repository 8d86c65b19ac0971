"""Hyena featurizer in Triton: the short causal conv over the projection ``z = [x2 | x1 | v]``, the
column split and the pre-gate ``x1 * v`` in one pass, so the convolved [B, L, 3D] tensor is never
written. The loaders put the published (interleaved / per-head) rows in ``[x2 | x1 | v]`` order, so
the de-interleave costs nothing here.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._triton import autotune, placeholder, push_history, size_class
from ..fir.fused import load_rows
from .naive import hyena_featurize_ref


@triton.jit
def _short_conv(z_ptr, s_ptr, w_ptr, b_ptr, o_l, o_c, m_c, L, stride_zl, stride_zc, stride_sl, stride_sc,
                stride_wc, stride_wk, K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_STATE: tl.constexpr,
                BL: tl.constexpr, BC: tl.constexpr):
    """Causal K-tap conv of channels ``o_c`` [BC] at rows ``o_l`` [BL]: float32 [BL, BC]."""
    acc = tl.zeros([BL, BC], dtype=tl.float32)
    for k in tl.static_range(K):
        w_k = tl.load(w_ptr + o_c * stride_wc + k * stride_wk, mask=m_c, other=0.0).to(tl.float32)
        acc += w_k[None, :] * load_rows(z_ptr, s_ptr, o_l - (K - 1 - k), o_c, m_c, L, K - 1,
                                        stride_zl, stride_zc, stride_sl, stride_sc, HAS_STATE)
    if HAS_BIAS:
        acc += tl.load(b_ptr + o_c, mask=m_c, other=0.0).to(tl.float32)[None, :]
    return acc


@autotune([
    triton.Config({"BL": 64, "BD": 64}, num_warps=8),
    triton.Config({"BL": 32, "BD": 64}, num_warps=4),
    triton.Config({"BL": 32, "BD": 128}, num_warps=8),
    triton.Config({"BL": 16, "BD": 128}, num_warps=4),
], key=["D", "K", "TOKENS"])
@triton.jit
def featurize_fwd_kernel(z_ptr, w_ptr, b_ptr, s_ptr, x2_ptr, x1v_ptr, L, D, TOKENS,
                         stride_zb, stride_zl, stride_zc, stride_wc, stride_wk, stride_sb, stride_sl, stride_sc,
                         stride_ob, stride_ol, stride_oc,
                         K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_STATE: tl.constexpr,
                         BL: tl.constexpr, BD: tl.constexpr):
    """Grid (cdiv(L, BL), cdiv(D, BD), B); x2 and x1v share strides (both allocated here). TOKENS:
    ``size_class(B * L)``, read by the autotuner only."""
    i_l, i_d, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    o_l = i_l * BL + tl.arange(0, BL)
    o_d = i_d * BD + tl.arange(0, BD)
    m_d = o_d < D
    z_ptr += i_b.to(tl.int64) * stride_zb
    s_ptr += i_b.to(tl.int64) * stride_sb
    x2 = _short_conv(z_ptr, s_ptr, w_ptr, b_ptr, o_l, o_d, m_d, L, stride_zl, stride_zc, stride_sl, stride_sc,
                     stride_wc, stride_wk, K, HAS_BIAS, HAS_STATE, BL, BD)
    x1 = _short_conv(z_ptr, s_ptr, w_ptr, b_ptr, o_l, o_d + D, m_d, L, stride_zl, stride_zc, stride_sl, stride_sc,
                     stride_wc, stride_wk, K, HAS_BIAS, HAS_STATE, BL, BD)
    v = _short_conv(z_ptr, s_ptr, w_ptr, b_ptr, o_l, o_d + 2 * D, m_d, L, stride_zl, stride_zc, stride_sl, stride_sc,
                    stride_wc, stride_wk, K, HAS_BIAS, HAS_STATE, BL, BD)
    off = i_b.to(tl.int64) * stride_ob + o_l.to(tl.int64)[:, None] * stride_ol + o_d.to(tl.int64)[None, :] * stride_oc
    m = (o_l < L)[:, None] & m_d[None, :]
    tl.store(x2_ptr + off, x2.to(x2_ptr.dtype.element_ty), mask=m)
    tl.store(x1v_ptr + off, (x1 * v).to(x1v_ptr.dtype.element_ty), mask=m)


def hyena_featurize(z, weight, bias=None, state=None):
    """Fused ``hyena_featurize_ref``: z [B, L, 3D] (any strides); weight [3D, K]; bias [3D] or None;
    state [B, K-1, 3D] float32, updated in place. Returns x2, x1v: [B, L, D] in z.dtype."""
    B, L, C3 = z.shape
    K = weight.shape[1]
    D = C3 // 3
    if L == 0:
        return hyena_featurize_ref(z, weight, bias, state)
    x2 = torch.empty(B, L, D, device=z.device, dtype=z.dtype)
    x1v = torch.empty_like(x2)
    dummy = placeholder(z.device)
    grid = lambda meta: (triton.cdiv(L, meta["BL"]), triton.cdiv(D, meta["BD"]), B)  # noqa: E731
    featurize_fwd_kernel[grid](
        z, weight, bias.contiguous() if bias is not None else dummy, state if state is not None else dummy,
        x2, x1v, L, D, size_class(B * L), *z.stride(), *weight.stride(), *(state.stride() if state is not None else (0, 0, 0)),
        *x2.stride(), K=K, HAS_BIAS=bias is not None, HAS_STATE=state is not None,
    )
    if state is not None:
        push_history(state, z)
    return x2, x1v
