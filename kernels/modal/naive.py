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

    x: [B, L, D] float32; log_poles: [D, S]. Real poles: the factorisation of ``modal_sum`` on the
    reversed input; complex poles: every power evaluated directly, as the reference does.
    """
    B, L, D = x.shape
    if log_poles.is_complex():
        return _modal_project_direct(log_poles, x)
    T, rows = _split(L)
    xr = torch.nn.functional.pad(x.flip(1), (0, 0, 0, rows * T - L))
    xr = xr.view(B, rows, T, D).permute(0, 3, 1, 2)
    j = torch.arange(T, device=x.device, dtype=torch.float32)
    i = torch.arange(rows, device=x.device, dtype=torch.float32) * T
    inner = torch.exp(log_poles[:, :, None] * j).transpose(-1, -2)
    return ((xr @ inner) * torch.exp(log_poles[:, None, :] * i[None, :, None])).sum(-2)


# elements of one block of directly evaluated powers: a few MB, so the temporaries stay in cache
_POWER_BLOCK_ELEMS = 1 << 20


def _direct_powers(log_poles, t):
    """Real and imaginary parts of ``exp(log_p * t)`` as the reference evaluates them: the float32
    products ``Re(log_p) * t`` and ``Im(log_p) * t`` first (the phase error of the second grows with
    t, and the reference's numbers carry it), then exp, cos and sin. log_poles: [D, S] complex; t: [n]
    float32 -> two [D, S, n] float32 tensors (real transcendentals: several times faster than
    complex exp on a CPU)."""
    magnitude = torch.exp(log_poles.real[..., None] * t)
    phase = log_poles.imag[..., None] * t
    return magnitude * torch.cos(phase), magnitude * torch.sin(phase)


def _t_blocks(log_poles, L):
    D, S = log_poles.shape
    block = max(1, _POWER_BLOCK_ELEMS // (D * S))
    return [(t0, min(L, t0 + block)) for t0 in range(0, L, block)]


def _modal_project_direct(log_poles, x):
    """``modal_project`` for complex poles with every power evaluated as the reference's prefill does
    (``_direct_powers``), in blocks of t. x: [B, L, D] float32 -> [B, D, S] complex64."""
    B, L, D = x.shape
    re = torch.zeros(B, D, log_poles.shape[1], device=x.device)
    im = torch.zeros_like(re)
    for k0, k1 in _t_blocks(log_poles, L):
        t = torch.arange(L - 1 - k0, L - 1 - k1, -1, dtype=torch.float32, device=x.device)  # L-1-k
        pr, pi = _direct_powers(log_poles, t)
        xk = x[:, k0:k1]
        re += torch.einsum("dsn,bnd->bds", pr, xk)
        im += torch.einsum("dsn,bnd->bds", pi, xk)
    return torch.complex(re, im)


def modal_filter_ref(log_poles, residues, L):
    """log_poles, residues: [D, S] (both real or both complex) -> h: [D, L] float32.

    Complex poles (Evo 1) are evaluated as the reference does, ``exp(log_p * t)`` for every t
    (``_direct_powers``): on the 512-token conformance case the factorised ``modal_sum``, though closer
    to exact arithmetic, puts the logits 6.7e-5 from the reference's, this form 2.5e-5, and the
    prefill's modal state follows the reference within 5e-5 instead of 1.5e-4. It costs several times
    the factorised sum (2.6 s against under 1 s for D = 4096, S = 8, L = 8192 on 2 CPU cores). Real
    poles (Evo 2) decay without a phase, so the factorised sum matches as well."""
    if not log_poles.is_complex():
        return modal_sum(log_poles, residues, L)
    h = torch.empty(log_poles.shape[0], L, dtype=torch.float32, device=log_poles.device)
    rr, ri = residues.real[..., None], residues.imag[..., None]
    for t0, t1 in _t_blocks(log_poles, L):
        pr, pi = _direct_powers(log_poles, torch.arange(t0, t1, dtype=torch.float32, device=log_poles.device))
        h[:, t0:t1] = (rr * pr - ri * pi).sum(-2)
    return h


def fft_length(m: int) -> int:
    """The smallest ``2^a 3^b 5^c >= m``. Any FFT length of at least ``2 L - 1`` gives the causal
    convolution, but a length with a large prime factor is several times slower (on one CPU core an
    rfft + irfft at 2,070 points takes 8.2 ms against 3.5 ms at 2,160, benchmarks/README.md): an odd
    window or suffix length, such as a variant's suffix, would otherwise get one."""
    best = 1 << max(0, (m - 1).bit_length())  # the next power of two is an upper bound
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            n = p35
            while n < m:
                n *= 2
            best = min(best, n)
            p35 *= 3
        p5 *= 5
    return best


def fftconv_ref(x, h):
    """Causal convolution ``y[t] = sum_{k<=t} h[:, t-k] * x[k]`` by FFT.

    x: [B, L, D] float32; h: [D, L] float32 -> y: [B, L, D] float32 (a new tensor).
    The transforms run directly along the token axis of x (no [B, D, L] transposed copies in and
    out: 7-25% faster on CPU, the same numbers there), on blocks of channels that bound the temporaries.
    """
    B, L, D = x.shape
    n = fft_length(2 * L)
    block = max(1, min(D, _FFT_BLOCK_ELEMS // (B * n)))
    if block == D:
        X = torch.fft.rfft(x, n=n, dim=1).mul_(torch.fft.rfft(h, n=n).t())
        return torch.fft.irfft(X, n=n, dim=1)[:, :L].contiguous()
    y = torch.empty_like(x)
    for d0 in range(0, D, block):
        d1 = min(D, d0 + block)
        X = torch.fft.rfft(x[:, :, d0:d1], n=n, dim=1).mul_(torch.fft.rfft(h[d0:d1], n=n).t())
        y[:, :, d0:d1] = torch.fft.irfft(X, n=n, dim=1)[:, :L]
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
    y = modal_conv_ref(x1v, log_poles, residues, state)  # a new float32 tensor: updated in place below
    y.addcmul_(x1v.float(), D.float())
    return y.mul_(x2.float()).to(x1v.dtype)
