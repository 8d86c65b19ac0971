"""One decoding step of a Hyena operator in one Triton kernel.

Every part of the operator is channel-local (depthwise featurizer, grouped or per-channel inner
filter), so a program owning BC channels of one sequence reads the token's three projection columns,
shifts the featurizer's history, runs the inner filter (shifting its FIR history or advancing the modal
state ``s <- p s + x1v``) and writes the gated output: one launch per block per token instead of the
dozen small ops of the unfused path.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._triton import autotune, placeholder
from ..modal.fused import as_pairs
from .naive import hyena_step_ref


@triton.jit
def _history(s_ptr, x, o_c, m_c, stride_sl, stride_sc, K: tl.constexpr, KP: tl.constexpr):
    """[KP, BC] float32: the K-1 stored inputs of channels ``o_c`` followed by the new input ``x`` [BC]."""
    o_k = tl.arange(0, KP)
    hist = tl.load(s_ptr + o_k[:, None] * stride_sl + o_c[None, :] * stride_sc,
                   mask=(o_k < K - 1)[:, None] & m_c[None, :], other=0.0).to(tl.float32)
    return tl.where((o_k == K - 1)[:, None], x[None, :], hist)


@triton.jit
def _taps(w_ptr, rows, o_c, m_c, stride_wr, stride_wk, K: tl.constexpr, KP: tl.constexpr):
    """[KP, BC] float32 filter taps of rows ``rows`` [BC] (zero past tap K-1)."""
    o_k = tl.arange(0, KP)
    return tl.load(w_ptr + rows[None, :] * stride_wr + o_k[:, None] * stride_wk,
                   mask=(o_k < K)[:, None] & m_c[None, :], other=0.0).to(tl.float32)


@triton.jit
def _shift_store(s_ptr, hist, o_c, m_c, stride_sl, stride_sc, K: tl.constexpr, KP: tl.constexpr):
    """Store rows 1..K-1 of ``hist`` as the new history (rows 0..K-2)."""
    o_k = tl.arange(0, KP)
    tl.store(s_ptr + (o_k - 1)[:, None] * stride_sl + o_c[None, :] * stride_sc, hist,
             mask=((o_k >= 1) & (o_k < K))[:, None] & m_c[None, :])


@autotune([
    triton.Config({"BC": 64}, num_warps=4),
    triton.Config({"BC": 32}, num_warps=2),
    triton.Config({"BC": 128}, num_warps=8),
], key=["C", "KI", "S"], restore_value=["fs_ptr", "is_ptr"])
@triton.jit
def hyena_step_kernel(z_ptr, fw_ptr, fb_ptr, fs_ptr, h_ptr, lp_ptr, r_ptr, d_ptr, is_ptr, y_ptr, C, GS, S,
                      stride_zb, stride_zc, stride_fwc, stride_fwk, stride_fsb, stride_fsl, stride_fsc,
                      stride_hg, stride_hk, stride_pc, stride_pn, stride_pi, stride_rc, stride_rn, stride_ri,
                      stride_ib, stride_i1, stride_i2, stride_i3, stride_yb, stride_yc,
                      KF: tl.constexpr, KI: tl.constexpr, MODAL: tl.constexpr, IS_COMPLEX: tl.constexpr,
                      HAS_BIAS: tl.constexpr, HAS_D: tl.constexpr, KFP: tl.constexpr, KIP: tl.constexpr,
                      SP: tl.constexpr, BC: tl.constexpr):
    """Grid (cdiv(C, BC), B). Inner state strides (i1, i2, i3): (row, channel, -) of a FIR history
    [B, KI-1, C], or (channel, mode, re/im) of a modal state [B, C, S, 1|2]."""
    i_c, i_b = tl.program_id(0), tl.program_id(1)
    o_c = i_c * BC + tl.arange(0, BC)
    m_c = o_c < C
    z_ptr += i_b.to(tl.int64) * stride_zb
    fs_ptr += i_b.to(tl.int64) * stride_fsb
    is_ptr += i_b.to(tl.int64) * stride_ib

    # featurizer: the [x2 | x1 | v] thirds of the projection, each with its own history
    hist2 = _history(fs_ptr, tl.load(z_ptr + o_c * stride_zc, mask=m_c, other=0.0).to(tl.float32),
                     o_c, m_c, stride_fsl, stride_fsc, KF, KFP)
    hist1 = _history(fs_ptr, tl.load(z_ptr + (o_c + C) * stride_zc, mask=m_c, other=0.0).to(tl.float32),
                     o_c + C, m_c, stride_fsl, stride_fsc, KF, KFP)
    histv = _history(fs_ptr, tl.load(z_ptr + (o_c + 2 * C) * stride_zc, mask=m_c, other=0.0).to(tl.float32),
                     o_c + 2 * C, m_c, stride_fsl, stride_fsc, KF, KFP)
    x2 = tl.sum(_taps(fw_ptr, o_c, o_c, m_c, stride_fwc, stride_fwk, KF, KFP) * hist2, axis=0)
    x1 = tl.sum(_taps(fw_ptr, o_c + C, o_c, m_c, stride_fwc, stride_fwk, KF, KFP) * hist1, axis=0)
    v = tl.sum(_taps(fw_ptr, o_c + 2 * C, o_c, m_c, stride_fwc, stride_fwk, KF, KFP) * histv, axis=0)
    if HAS_BIAS:
        x2 += tl.load(fb_ptr + o_c, mask=m_c, other=0.0).to(tl.float32)
        x1 += tl.load(fb_ptr + o_c + C, mask=m_c, other=0.0).to(tl.float32)
        v += tl.load(fb_ptr + o_c + 2 * C, mask=m_c, other=0.0).to(tl.float32)
    # the unfused path hands x2 and x1v to the inner filter in the activation dtype: round the same way
    x2 = x2.to(y_ptr.dtype.element_ty).to(tl.float32)
    x1v = (x1 * v).to(y_ptr.dtype.element_ty).to(tl.float32)

    if MODAL:
        o_n = tl.arange(0, SP)
        m_cn = m_c[:, None] & (o_n < S)[None, :]
        p_lp = lp_ptr + o_c[:, None] * stride_pc + o_n[None, :] * stride_pn
        p_r = r_ptr + o_c[:, None] * stride_rc + o_n[None, :] * stride_rn
        p_s = is_ptr + o_c[:, None] * stride_i1 + o_n[None, :] * stride_i2
        lr = tl.load(p_lp, mask=m_cn, other=0.0)
        sr = tl.load(p_s, mask=m_cn, other=0.0)
        if IS_COMPLEX:
            li = tl.load(p_lp + stride_pi, mask=m_cn, other=0.0)
            si = tl.load(p_s + stride_i3, mask=m_cn, other=0.0)
            mag = tl.exp(lr)
            pr, pi = mag * tl.cos(li), mag * tl.sin(li)
            sr, si = pr * sr - pi * si + x1v[:, None], pr * si + pi * sr
            y = tl.sum(tl.load(p_r, mask=m_cn, other=0.0) * sr - tl.load(p_r + stride_ri, mask=m_cn, other=0.0) * si,
                       axis=1)
        else:
            sr = tl.exp(lr) * sr + x1v[:, None]
            y = tl.sum(tl.load(p_r, mask=m_cn, other=0.0) * sr, axis=1)
    else:
        hist_i = _history(is_ptr, x1v, o_c, m_c, stride_i1, stride_i2, KI, KIP)
        y = tl.sum(_taps(h_ptr, o_c // GS, o_c, m_c, stride_hg, stride_hk, KI, KIP) * hist_i, axis=0)
    if HAS_D:
        y += tl.load(d_ptr + o_c, mask=m_c, other=0.0).to(tl.float32) * x1v
    y = y * x2
    tl.store(y_ptr + i_b.to(tl.int64) * stride_yb + o_c * stride_yc, y.to(y_ptr.dtype.element_ty), mask=m_c)

    # histories shift by one row in place: every warp must have read its rows before any is overwritten
    tl.debug_barrier()
    _shift_store(fs_ptr, hist2, o_c, m_c, stride_fsl, stride_fsc, KF, KFP)
    _shift_store(fs_ptr, hist1, o_c + C, m_c, stride_fsl, stride_fsc, KF, KFP)
    _shift_store(fs_ptr, histv, o_c + 2 * C, m_c, stride_fsl, stride_fsc, KF, KFP)
    if MODAL:
        tl.store(p_s, sr, mask=m_cn)
        if IS_COMPLEX:
            tl.store(p_s + stride_i3, si, mask=m_cn)
    else:
        _shift_store(is_ptr, hist_i, o_c, m_c, stride_i1, stride_i2, KI, KIP)


def hyena_step(z, weight, bias, fir_state, inner_state, h=None, log_poles=None, residues=None, D=None):
    """Fused ``hyena_step_ref`` (same arguments; z [B, 1, 3D]). Returns y [B, 1, D] in z.dtype."""
    B, L, C3 = z.shape
    C = C3 // 3
    modal = h is None
    if L != 1 or (modal and (log_poles.is_complex() != residues.is_complex()
                             or log_poles.dtype not in (torch.float32, torch.complex64))):
        return hyena_step_ref(z, weight, bias, fir_state, inner_state, h, log_poles, residues, D)
    y = torch.empty(B, 1, C, device=z.device, dtype=z.dtype)
    dummy = placeholder(z.device)
    KF = weight.shape[1]
    if modal:
        lp, r, st = as_pairs(log_poles), as_pairs(residues.to(log_poles.dtype)), as_pairs(inner_state)
        S, KI, GS = log_poles.shape[1], 1, 1
        h_arg, h_strides, p_strides, r_strides = dummy, (0, 0), lp.stride(), r.stride()
        i_strides = st.stride()
    else:
        st, lp, r = inner_state, dummy, dummy
        S, KI, GS = 1, h.shape[1], C // h.shape[0]
        h_arg, h_strides, p_strides, r_strides = h, h.stride(), (0, 0, 0), (0, 0, 0)
        i_strides = (*st.stride(), 0)
    grid = lambda meta: (triton.cdiv(C, meta["BC"]), B)  # noqa: E731
    hyena_step_kernel[grid](
        z, weight, bias.contiguous() if bias is not None else dummy, fir_state, h_arg, lp, r,
        D.contiguous() if D is not None else dummy, st, y, C, GS, S,
        z.stride(0), z.stride(2), *weight.stride(), *fir_state.stride(), *h_strides, *p_strides, *r_strides,
        *i_strides, y.stride(0), y.stride(2),
        KF=KF, KI=KI, MODAL=modal, IS_COMPLEX=modal and log_poles.is_complex(), HAS_BIAS=bias is not None,
        HAS_D=D is not None, KFP=triton.next_power_of_2(KF), KIP=triton.next_power_of_2(KI),
        SP=triton.next_power_of_2(S),
    )
    return y
