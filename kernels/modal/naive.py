"""Hyena long filter in modal form, in plain PyTorch.

``h[d, t] = Re(sum_n R[d, n] * exp(log_p[d, n] * t))``: real poles for Evo 2 (``log_p`` real), complex
for Evo 1. The convolution runs as a channel-blocked FFT and never builds the ``[D, S, L]`` tensor
that makes the reference run out of memory at 128 kb. A carried modal state makes the same op serve
the full forward, chunked prefill and one-token decoding (see README.md beside this file).
"""

from __future__ import annotations

import math

import torch

# complex / real elements per FFT block: bounds the temporaries of one block to a few hundred MB
_FFT_BLOCK_ELEMS = 1 << 24


def _split(L):
    """``t = T * i + j`` with T ~ sqrt(L): returns (T, rows) with rows * T >= L."""
    T = max(1, math.isqrt(L))
    return T, -(-L // T)


def modal_sum(log_poles, coeffs, L, t0=0):
    """``Re sum_n coeffs[..., d, n] * exp(log_p[d, n] * (t0 + t))`` for t < L -> [..., D, L] float32.

    log_poles: [D, S]; coeffs: [..., D, S] (real or complex). With ``t = T * i + j`` the exponential
    factors into ``exp(log_p * (t0 + T * i)) * exp(log_p * j)``, so the sum is one batched matmul
    ``[..., D, L/T, S] @ [D, S, T]`` and needs ``D * S * (L/T + T)`` exponentials, not ``D * S * L``.
    """
    D, S = log_poles.shape
    T, rows = _split(L)
    j = torch.arange(T, device=log_poles.device, dtype=torch.float32)
    i = t0 + torch.arange(rows, device=log_poles.device, dtype=torch.float32) * T
    outer = coeffs[..., :, None, :] * torch.exp(log_poles[:, None, :] * i[None, :, None])
    inner = torch.exp(log_poles[:, :, None] * j)
    h = (outer @ inner).reshape(*coeffs.shape[:-2], D, rows * T)[..., :L]
    return (h.real if h.is_complex() else h).contiguous()


def modal_project(log_poles, x):
    """``sum_k x[b, k, d] * exp(log_p[d, n] * (L-1-k))`` -> [B, D, S]: the modal state of ``x`` alone.

    x: [B, L, D] float32; log_poles: [D, S]. Same factorisation as ``modal_sum``, on the reversed input.
    """
    B, L, D = x.shape
    T, rows = _split(L)
    xr = torch.nn.functional.pad(x.flip(1), (0, 0, 0, rows * T - L))
    xr = xr.view(B, rows, T, D).permute(0, 3, 1, 2)
    if log_poles.is_complex():
        xr = xr.to(log_poles.dtype)
    j = torch.arange(T, device=x.device, dtype=torch.float32)
    i = torch.arange(rows, device=x.device, dtype=torch.float32) * T
    inner = torch.exp(log_poles[:, :, None] * j).transpose(-1, -2)
    return ((xr @ inner) * torch.exp(log_poles[:, None, :] * i[None, :, None])).sum(-2)


def modal_filter_ref(log_poles, residues, L):
    """log_poles, residues: [D, S] (both real or both complex) -> h: [D, L] float32."""
    return modal_sum(log_poles, residues, L)


def fftconv_ref(x, h):
    """Causal convolution ``y[t] = sum_{k<=t} h[:, t-k] * x[k]`` by FFT.

    x: [B, L, D] float32; h: [D, L] float32 -> y: [B, L, D] float32.
    """
    B, L, D = x.shape
    n = 2 * L
    y = torch.empty_like(x)
    block = max(1, min(D, _FFT_BLOCK_ELEMS // (B * n)))
    for d0 in range(0, D, block):
        d1 = min(D, d0 + block)
        H = torch.fft.rfft(h[d0:d1], n=n)
        X = torch.fft.rfft(x[:, :, d0:d1].transpose(1, 2), n=n)
        y[:, :, d0:d1] = torch.fft.irfft(X * H, n=n)[..., :L].transpose(1, 2)
    return y


def modal_conv_ref(x, log_poles, residues, state=None):
    """Long modal convolution with an optional carried state.

    x: [B, L, D]; log_poles, residues: [D, S] (real or complex).
    state: [B, D, S] (float32, or complex64 for complex poles) or None. It holds
    ``s[n] = sum_{k<0} p[n]^(-1-k) x[k]`` over the tokens before ``x`` and is updated in place.
    Returns y: [B, L, D] float32.
    """
    B, L, D = x.shape
    xf = x.float()
    if state is not None and L == 1:
        # one decoding step: s <- p*s + x_t, y_t = Re(sum_n R_n s_n)
        state.mul_(torch.exp(log_poles)).add_(xf[:, 0, :, None])
        y = (residues * state).sum(-1)
        return (y.real if y.is_complex() else y)[:, None, :]
    y = fftconv_ref(xf, modal_filter_ref(log_poles, residues, L))
    if state is None:
        return y
    # the past enters output t through Re(sum_n R_n p_n^(t+1) s_n); the new state is p^L s + proj(x)
    y += modal_sum(log_poles, residues * state, L, t0=1).transpose(1, 2)
    new_state = torch.exp(log_poles * L) * state + modal_project(log_poles, xf)
    state.copy_(new_state)
    return y


def hyena_modal_ref(x1v, x2, log_poles, residues, D, state=None):
    """Gated Hyena-LR / Evo 1 Hyena filter: ``y = (modal_conv(x1v) + D * x1v) * x2``.

    x1v, x2: [B, L, C]; log_poles, residues: [C, S]; D: [C]; state as in ``modal_conv_ref``.
    Returns y: [B, L, C] in x1v.dtype.
    """
    y = modal_conv_ref(x1v, log_poles, residues, state)
    y = y + D.float() * x1v.float()
    return (y * x2.float()).to(x1v.dtype)
