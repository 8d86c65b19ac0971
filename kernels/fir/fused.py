"""Gated Hyena-SE / Hyena-MR filter in Triton: ``y = (causal_conv(x1v, h) + D * x1v) * x2``.

Two kernels, picked by filter shape:
- ``fir_taps_fwd_kernel``: one FMA per tap on [BL, BC] tiles (Hyena-SE, K = 7, and long filters
  with fewer than 4 channels per group);
- ``fir_toeplitz_fwd_kernel``: the 128-tap Hyena-MR filter as blocked Toeplitz products on tensor
  cores. Output rows ``t0 .. t0+BT`` of one channel group are ``sum_j T_j @ x[t0 - j*BT : t0 - j*BT + BT]``
  with ``T_j[t, s] = h[lag]`` at ``lag = t - s + j*BT`` (zero outside ``0 <= lag < K``): with BT = 64
  and K = 128, three [64, 64] x [64, BC] dots per block, the channels of one group sharing ``T_j``.
Both read the K-1 tokens before the chunk from the float32 history ``state``; the wrapper then moves
the history forward with ``push_history`` (programs of later blocks cannot write it while earlier
blocks still read it).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._triton import autotune, dot_precision, placeholder, push_history, size_class
from .naive import hyena_fir_ref

# narrower groups cost the Toeplitz kernel one dot and one filter gather per group in a channel block:
# from 4 channels per group down, the tap loop does less work for a 128-tap filter
_MIN_TOEPLITZ_GROUP = 4


@triton.jit
def load_rows(x_ptr, s_ptr, o_l, o_c, m_c, L, K1, stride_xl, stride_xc, stride_sl, stride_sc,
              HAS_STATE: tl.constexpr):
    """Rows ``o_l`` [BL] (may be negative) of channels ``o_c`` [BC] of a sequence as float32 [BL, BC].

    Row t >= 0 is ``x[t]``; row t in [-K1, 0) is history row ``K1 + t`` of the state when there is
    one; everything else is zero (causal padding)."""
    # int64 offsets: a transposed [B, L, C] view has channel stride L
    o_l64, o_c64 = o_l.to(tl.int64), o_c.to(tl.int64)
    m_x = (o_l >= 0) & (o_l < L)
    v = tl.load(x_ptr + o_l64[:, None] * stride_xl + o_c64[None, :] * stride_xc,
                mask=m_x[:, None] & m_c[None, :], other=0.0).to(tl.float32)
    if HAS_STATE:
        m_s = (o_l < 0) & (o_l >= -K1)
        v += tl.load(s_ptr + (o_l64 + K1)[:, None] * stride_sl + o_c[None, :] * stride_sc,
                     mask=m_s[:, None] & m_c[None, :], other=0.0).to(tl.float32)
    return v


@triton.jit
def _gate_store(acc, x_ptr, g_ptr, y_ptr, d_ptr, o_l, o_c, m_c, L, stride_xl, stride_xc, stride_gl, stride_gc,
                stride_yl, stride_yc, HAS_D: tl.constexpr):
    """Epilogue: ``y = (acc + D * x) * g`` stored in y's dtype for rows ``o_l`` [BL]."""
    o_l64, o_c64 = o_l.to(tl.int64), o_c.to(tl.int64)
    m = (o_l < L)[:, None] & m_c[None, :]
    if HAS_D:
        x = tl.load(x_ptr + o_l64[:, None] * stride_xl + o_c64[None, :] * stride_xc, mask=m, other=0.0).to(tl.float32)
        acc += tl.load(d_ptr + o_c, mask=m_c, other=0.0).to(tl.float32)[None, :] * x
    g = tl.load(g_ptr + o_l64[:, None] * stride_gl + o_c64[None, :] * stride_gc, mask=m, other=0.0).to(tl.float32)
    tl.store(y_ptr + o_l64[:, None] * stride_yl + o_c64[None, :] * stride_yc, (acc * g).to(y_ptr.dtype.element_ty),
             mask=m)


_TAPS_CONFIGS = [
    triton.Config({"BL": 64, "BC": 64}, num_warps=4),
    triton.Config({"BL": 64, "BC": 32}, num_warps=4),
    triton.Config({"BL": 32, "BC": 128}, num_warps=4),
    triton.Config({"BL": 128, "BC": 64}, num_warps=8),
]


@autotune(_TAPS_CONFIGS, key=["C", "K", "TOKENS"])
@triton.jit
def fir_taps_fwd_kernel(x_ptr, g_ptr, h_ptr, d_ptr, s_ptr, y_ptr, L, C, GS, TOKENS,
                        stride_xb, stride_xl, stride_xc, stride_gb, stride_gl, stride_gc,
                        stride_hg, stride_hk, stride_sb, stride_sl, stride_sc, stride_yb, stride_yl, stride_yc,
                        K: tl.constexpr, HAS_D: tl.constexpr, HAS_STATE: tl.constexpr,
                        BL: tl.constexpr, BC: tl.constexpr):
    """Grid (cdiv(L, BL), cdiv(C, BC), B). Channel c uses filter row c // GS; tap K-1 is the current token.
    TOKENS: ``size_class(B * L)``, read by the autotuner only."""
    i_l, i_c, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    o_l = i_l * BL + tl.arange(0, BL)
    o_c = i_c * BC + tl.arange(0, BC)
    m_c = o_c < C
    x_ptr += i_b.to(tl.int64) * stride_xb
    s_ptr += i_b.to(tl.int64) * stride_sb
    p_h = h_ptr + (o_c // GS) * stride_hg
    acc = tl.zeros([BL, BC], dtype=tl.float32)
    for k in range(K):
        h_k = tl.load(p_h + k * stride_hk, mask=m_c, other=0.0).to(tl.float32)
        acc += h_k[None, :] * load_rows(x_ptr, s_ptr, o_l - (K - 1 - k), o_c, m_c, L, K - 1,
                                        stride_xl, stride_xc, stride_sl, stride_sc, HAS_STATE)
    _gate_store(acc, x_ptr, g_ptr + i_b.to(tl.int64) * stride_gb, y_ptr + i_b.to(tl.int64) * stride_yb, d_ptr,
                o_l, o_c, m_c, L, stride_xl, stride_xc, stride_gl, stride_gc, stride_yl, stride_yc, HAS_D)


_TOEPLITZ_CONFIGS = [
    triton.Config({"BT": 64, "BC": 32}, num_warps=8, num_stages=2),
    triton.Config({"BT": 64, "BC": 16}, num_warps=4, num_stages=2),
    triton.Config({"BT": 64, "BC": 16}, num_warps=8, num_stages=3),
]


@autotune(_TOEPLITZ_CONFIGS, key=["C", "K", "GS", "TOKENS"])
@triton.jit
def fir_toeplitz_fwd_kernel(x_ptr, g_ptr, h_ptr, d_ptr, s_ptr, y_ptr, L, C, GS, TOKENS,
                            stride_xb, stride_xl, stride_xc, stride_gb, stride_gl, stride_gc,
                            stride_hg, stride_hk, stride_sb, stride_sl, stride_sc, stride_yb, stride_yl, stride_yc,
                            K: tl.constexpr, HAS_D: tl.constexpr, HAS_STATE: tl.constexpr, PREC: tl.constexpr,
                            BT: tl.constexpr, BC: tl.constexpr):
    """Grid (cdiv(L, BT), cdiv(C, BC), B). A channel block that straddles groups gets one dot per group
    with the other groups' columns zeroed (1B: 15 channels per group). TOKENS as in ``fir_taps_fwd_kernel``."""
    i_t, i_c, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    o_i = tl.arange(0, BT)
    o_t = i_t * BT + o_i
    o_c = i_c * BC + tl.arange(0, BC)
    m_c = o_c < C
    g_c = o_c // GS
    g_first = (i_c * BC) // GS
    g_last = (tl.minimum(i_c * BC + BC, C) - 1) // GS
    x_ptr += i_b.to(tl.int64) * stride_xb
    s_ptr += i_b.to(tl.int64) * stride_sb
    acc = tl.zeros([BT, BC], dtype=tl.float32)
    for j in tl.static_range((K - 1 + BT - 1) // BT + 1):
        x_j = load_rows(x_ptr, s_ptr, o_t - j * BT, o_c, m_c, L, K - 1,
                        stride_xl, stride_xc, stride_sl, stride_sc, HAS_STATE)
        lag = o_i[:, None] - o_i[None, :] + j * BT
        m_lag = (lag >= 0) & (lag < K)
        for g in range(g_first, g_last + 1):
            t_j = tl.load(h_ptr + g * stride_hg + (K - 1 - lag) * stride_hk, mask=m_lag, other=0.0).to(tl.float32)
            acc = tl.dot(t_j, tl.where((g_c == g)[None, :], x_j, 0.0), acc, input_precision=PREC)
    _gate_store(acc, x_ptr, g_ptr + i_b.to(tl.int64) * stride_gb, y_ptr + i_b.to(tl.int64) * stride_yb, d_ptr,
                o_t, o_c, m_c, L, stride_xl, stride_xc, stride_gl, stride_gc, stride_yl, stride_yc, HAS_D)


def uses_toeplitz(C: int, G: int, K: int) -> bool:
    """Whether a [G, K] filter over C channels runs as Toeplitz products (long filter, wide groups)."""
    return K > 16 and C // G >= _MIN_TOEPLITZ_GROUP


def hyena_fir(x1v, x2, h, D=None, state=None):
    """Fused ``hyena_fir_ref``: x1v, x2 [B, L, C] (any strides); h [G, K]; D [C] or None;
    state [B, K-1, C] float32, updated in place. Returns y [B, L, C] in x1v.dtype."""
    B, L, C = x1v.shape
    G, K = h.shape
    if L == 0:
        return hyena_fir_ref(x1v, x2, h, D, state)
    y = torch.empty(B, L, C, device=x1v.device, dtype=x1v.dtype)
    dummy = placeholder(x1v.device)
    s = state if state is not None else dummy
    s_strides = state.stride() if state is not None else (0, 0, 0)
    d = D.contiguous() if D is not None else dummy
    args = (x1v, x2, h, d, s, y, L, C, C // G, size_class(B * L), *x1v.stride(), *x2.stride(), *h.stride(), *s_strides, *y.stride())
    if uses_toeplitz(C, G, K):
        grid = lambda meta: (triton.cdiv(L, meta["BT"]), triton.cdiv(C, meta["BC"]), B)  # noqa: E731
        fir_toeplitz_fwd_kernel[grid](*args, K=K, HAS_D=D is not None, HAS_STATE=state is not None,
                                      PREC=dot_precision(x1v.dtype))
    else:
        grid = lambda meta: (triton.cdiv(L, meta["BL"]), triton.cdiv(C, meta["BC"]), B)  # noqa: E731
        fir_taps_fwd_kernel[grid](*args, K=K, HAS_D=D is not None, HAS_STATE=state is not None)
    if state is not None:
        push_history(state, x1v)
    return y
