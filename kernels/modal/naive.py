"""Hyena long filter in modal form, in plain PyTorch.

``h[d, t] = Re(sum_n R[d, n] * exp(log_p[d, n] * t))``: real poles for Evo 2 (``log_p`` real), complex
for Evo 1. The convolution runs as a channel-blocked FFT and never builds the ``[D, S, L]`` tensor
that makes the reference run out of memory at 128 kb. A carried modal state makes the same op serve
the full forward, chunked prefill and one-token decoding (see README.md beside this file).
"""

from __future__ import annotations

import torch

# complex / real elements per FFT block: bounds the temporaries of one block to a few hundred MB
_FFT_BLOCK_ELEMS = 1 << 24


def modal_filter_ref(log_poles, residues, L):
    """log_poles, residues: [D, S] (both real or both complex) -> h: [D, L] float32."""
    t = torch.arange(L, device=log_poles.device, dtype=torch.float32)
    h = torch.zeros(log_poles.shape[0], L, device=log_poles.device, dtype=torch.float32)
    for n in range(log_poles.shape[1]):
        term = residues[:, n, None] * torch.exp(log_poles[:, n, None] * t)
        h += term.real if term.is_complex() else term
    return h


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
    t = torch.arange(L, device=x.device, dtype=torch.float32)
    new_state = torch.empty_like(state)
    for n in range(log_poles.shape[1]):
        lp = log_poles[:, n]
        # the past enters output t through p^(t+1) * s
        past = residues[:, n] * torch.exp(lp * (t[:, None] + 1)) * state[:, None, :, n]
        y += past.real if past.is_complex() else past
        # s' = p^L s + sum_k p^(L-1-k) x_k
        decay = torch.exp(lp * (L - 1 - t[:, None]))
        new_state[..., n] = torch.exp(lp * L) * state[..., n] + (decay * xf).sum(1)
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
