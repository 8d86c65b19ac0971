"""Hyena-LR / Evo 1 long filter in Triton: a chunked linear recurrence over the modal state.

One program owns BD channels of one sequence and walks the sequence in chunks of T tokens, holding
the modal state ``s`` [BD, S] in registers. Per chunk (see README.md beside this file for the math):

    y[t]  = sum_{k<=t in chunk} h[t-k] x[k]  +  Re(sum_n R_n p_n^(t+1) s_n)     (t = 0 .. T-1)
    s_n  <- p_n^T s_n + sum_k p_n^(T-1-k) x[k]

with the intra-chunk Toeplitz [T, T, BD], the past-to-output map [T, BD, S] and the state update
[T, BD, S] built once per program from the poles and residues. Nothing of size [D, S, L] or [D, L]
exists; the work is O(L * D * (T + 2S)), the memory traffic one read of x1v and x2 and one write of
y, and the final state (needed to decode after a prefill) falls out at the end. Complex poles (Evo 1)
run the same recurrence on (real, imag) pairs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._triton import autotune, placeholder, size_class
from .naive import hyena_modal_ref


@triton.jit
def _pow(lr, li, e, IS_COMPLEX: tl.constexpr):
    """(re, im) of ``p^e`` for ``log p = lr + i li`` (im is re's placeholder for real poles)."""
    re = tl.exp(lr * e)
    im = re
    if IS_COMPLEX:
        im = re * tl.sin(li * e)
        re = re * tl.cos(li * e)
    return re, im


@triton.jit
def _modal_chunk(x_ptr, g_ptr, y_ptr, d, t0, nv, o_t, o_c, m_c, stride_xl, stride_xc, stride_gl, stride_gc,
                 stride_yl, stride_yc, tm, vr, vi, wr, wi, pr, pi, sr, si, IS_COMPLEX: tl.constexpr):
    """Outputs of tokens ``t0 .. t0+nv-1`` and the state after them (nv <= T); returns (sr, si)."""
    o_l, o_c64 = (t0 + o_t).to(tl.int64), o_c.to(tl.int64)
    m = (o_t < nv)[:, None] & m_c[None, :]
    x = tl.load(x_ptr + o_l[:, None] * stride_xl + o_c64[None, :] * stride_xc, mask=m, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + o_l[:, None] * stride_gl + o_c64[None, :] * stride_gc, mask=m, other=0.0).to(tl.float32)
    # [T, T, BD] x [1, T, BD] -> [T, BD]: the chunk's own tokens
    y = tl.sum(tm * x[None, :, :], axis=1)
    # [T, BD, S] x [1, BD, S] -> [T, BD]: every token before the chunk, through the state
    y += tl.sum(vr * sr[None, :, :], axis=2)
    if IS_COMPLEX:
        y -= tl.sum(vi * si[None, :, :], axis=2)
    y = (y + d[None, :] * x) * g
    tl.store(y_ptr + o_l[:, None] * stride_yl + o_c64[None, :] * stride_yc, y.to(y_ptr.dtype.element_ty), mask=m)
    xs = x[:, :, None]
    nr = pr * sr + tl.sum(wr * xs, axis=0)
    ni = si
    if IS_COMPLEX:
        nr -= pi * si
        ni = pr * si + pi * sr + tl.sum(wi * xs, axis=0)
    return nr, ni


@triton.jit
def _update_maps(lr, li, e3, nv, IS_COMPLEX: tl.constexpr):
    """State update of a chunk of nv tokens: W[t] = p^(nv-1-t) (zero for t >= nv) [T, BD, S], P = p^nv [BD, S]."""
    wr, wi = _pow(lr[None, :, :], li[None, :, :], nv - 1 - e3, IS_COMPLEX)
    valid = e3 < nv
    wr = tl.where(valid, wr, 0.0)
    wi = tl.where(valid, wi, 0.0)
    pr, pi = _pow(lr, li, nv * 1.0, IS_COMPLEX)
    return wr, wi, pr, pi


@autotune([
    triton.Config({"T": 16, "BD": 32}, num_warps=8),
    triton.Config({"T": 16, "BD": 16}, num_warps=8),
    triton.Config({"T": 8, "BD": 32}, num_warps=4),
    triton.Config({"T": 8, "BD": 16}, num_warps=4),
    triton.Config({"T": 8, "BD": 32}, num_warps=8),
], key=["C", "S", "IS_COMPLEX", "ROWS", "LENGTH"], restore_value=["s_ptr"])
@triton.jit
def modal_fwd_kernel(x_ptr, g_ptr, y_ptr, lp_ptr, r_ptr, d_ptr, s_ptr, L, C, S, ROWS, LENGTH,
                     stride_xb, stride_xl, stride_xc, stride_gb, stride_gl, stride_gc, stride_yb, stride_yl, stride_yc,
                     stride_pc, stride_pn, stride_pi, stride_rc, stride_rn, stride_ri,
                     stride_sb, stride_sc, stride_sn, stride_si,
                     IS_COMPLEX: tl.constexpr, HAS_STATE: tl.constexpr, SP: tl.constexpr,
                     T: tl.constexpr, BD: tl.constexpr):
    """Grid (cdiv(C, BD), B). Poles, residues and state come as (…, re[, im]) float32 views. ROWS, LENGTH:
    ``size_class`` of B and of L (the grid's rows and each program's loop), read by the autotuner only."""
    i_c, i_b = tl.program_id(0), tl.program_id(1)
    o_c = i_c * BD + tl.arange(0, BD)
    m_c = o_c < C
    o_n = tl.arange(0, SP)
    m_cn = m_c[:, None] & (o_n < S)[None, :]
    o_t = tl.arange(0, T)
    e3 = o_t.to(tl.float32)[:, None, None]

    # padded modes get residue 0 (no output) and log-pole 0 (a bounded, never stored state)
    p_lp = lp_ptr + o_c[:, None] * stride_pc + o_n[None, :] * stride_pn
    p_r = r_ptr + o_c[:, None] * stride_rc + o_n[None, :] * stride_rn
    lr = tl.load(p_lp, mask=m_cn, other=0.0)
    rr = tl.load(p_r, mask=m_cn, other=0.0)
    li, ri = lr, rr
    if IS_COMPLEX:
        li = tl.load(p_lp + stride_pi, mask=m_cn, other=0.0)
        ri = tl.load(p_r + stride_ri, mask=m_cn, other=0.0)

    # past-to-output map V[t] = R p^(t+1)
    cr, ci = _pow(lr[None, :, :], li[None, :, :], e3 + 1.0, IS_COMPLEX)
    vr = cr * rr[None, :, :]
    vi = vr
    if IS_COMPLEX:
        vr -= ci * ri[None, :, :]
        vi = cr * ri[None, :, :] + ci * rr[None, :, :]
    wr, wi, pr, pi = _update_maps(lr, li, e3, T, IS_COMPLEX)

    # intra-chunk Toeplitz tm[t, k] = h[t - k] = Re(sum_n R_n p_n^(t-k)) for k <= t
    lag = o_t[:, None] - o_t[None, :]
    e_lag = tl.maximum(lag, 0).to(tl.float32)[:, :, None]
    tm = tl.zeros([T, T, BD], dtype=tl.float32)
    for n in tl.static_range(SP):
        m_n = m_c & (tl.full([BD], n, tl.int32) < S)
        lr_n = tl.load(lp_ptr + o_c * stride_pc + n * stride_pn, mask=m_n, other=0.0)[None, None, :]
        rr_n = tl.load(r_ptr + o_c * stride_rc + n * stride_rn, mask=m_n, other=0.0)[None, None, :]
        if IS_COMPLEX:
            li_n = tl.load(lp_ptr + o_c * stride_pc + n * stride_pn + stride_pi, mask=m_n, other=0.0)[None, None, :]
            ri_n = tl.load(r_ptr + o_c * stride_rc + n * stride_rn + stride_ri, mask=m_n, other=0.0)[None, None, :]
            hr, hi = _pow(lr_n, li_n, e_lag, IS_COMPLEX)
            tm += hr * rr_n - hi * ri_n
        else:
            tm += tl.exp(lr_n * e_lag) * rr_n
    tm = tl.where((lag >= 0)[:, :, None], tm, 0.0)

    d = tl.load(d_ptr + o_c, mask=m_c, other=0.0).to(tl.float32)
    p_s = s_ptr + i_b.to(tl.int64) * stride_sb + o_c[:, None] * stride_sc + o_n[None, :] * stride_sn
    if HAS_STATE:
        sr = tl.load(p_s, mask=m_cn, other=0.0)
        si = sr
        if IS_COMPLEX:
            si = tl.load(p_s + stride_si, mask=m_cn, other=0.0)
    else:
        sr = tl.zeros([BD, SP], dtype=tl.float32)
        si = sr

    x_ptr += i_b.to(tl.int64) * stride_xb
    g_ptr += i_b.to(tl.int64) * stride_gb
    y_ptr += i_b.to(tl.int64) * stride_yb
    n_full = L // T
    for c in range(0, n_full):
        sr, si = _modal_chunk(x_ptr, g_ptr, y_ptr, d, c * T, T, o_t, o_c, m_c, stride_xl, stride_xc,
                              stride_gl, stride_gc, stride_yl, stride_yc, tm, vr, vi, wr, wi, pr, pi, sr, si,
                              IS_COMPLEX)
    nv = L - n_full * T
    if nv > 0:
        wr, wi, pr, pi = _update_maps(lr, li, e3, nv, IS_COMPLEX)
        sr, si = _modal_chunk(x_ptr, g_ptr, y_ptr, d, n_full * T, nv, o_t, o_c, m_c, stride_xl, stride_xc,
                              stride_gl, stride_gc, stride_yl, stride_yc, tm, vr, vi, wr, wi, pr, pi, sr, si,
                              IS_COMPLEX)
    if HAS_STATE:
        # every thread has read its initial state long before; the barrier makes that explicit
        tl.debug_barrier()
        tl.store(p_s, sr, mask=m_cn)
        if IS_COMPLEX:
            tl.store(p_s + stride_si, si, mask=m_cn)


def as_pairs(t):
    """A [..., 2] float32 (re, im) view of a complex tensor, or a [..., 1] view of a real one."""
    return torch.view_as_real(t) if t.is_complex() else t.unsqueeze(-1)


def hyena_modal(x1v, x2, log_poles, residues, D, state=None):
    """Fused ``hyena_modal_ref``: x1v, x2 [B, L, C] (any strides); log_poles, residues [C, S], both real
    (float32) or both complex (complex64); D [C]; state [B, C, S] (float32 / complex64), updated in place.
    Returns y [B, L, C] in x1v.dtype."""
    B, L, C = x1v.shape
    S = log_poles.shape[1]
    is_complex = log_poles.is_complex()
    if L == 0 or residues.is_complex() != is_complex or log_poles.dtype not in (torch.float32, torch.complex64):
        return hyena_modal_ref(x1v, x2, log_poles, residues, D, state)
    y = torch.empty(B, L, C, device=x1v.device, dtype=x1v.dtype)
    lp, r = as_pairs(log_poles), as_pairs(residues.to(log_poles.dtype))
    s = as_pairs(state) if state is not None else placeholder(x1v.device)
    s_strides = s.stride() if state is not None else (0, 0, 0, 0)
    grid = lambda meta: (triton.cdiv(C, meta["BD"]), B)  # noqa: E731
    modal_fwd_kernel[grid](
        x1v, x2, y, lp, r, D.contiguous(), s, L, C, S, size_class(B), size_class(L), *x1v.stride(), *x2.stride(), *y.stride(), *lp.stride(),
        *r.stride(), *s_strides, IS_COMPLEX=is_complex, HAS_STATE=state is not None, SP=triton.next_power_of_2(S),
    )
    return y
