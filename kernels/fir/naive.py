"""Causal grouped FIR convolution and the gated Hyena-SE / Hyena-MR filter, in plain PyTorch (fp32)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


# filters of up to this many taps run as shifted multiply-adds (the featurizer's 3, Hyena-SE's 7)
_SHIFTED_SUM_TAPS = 16


def causal_conv1d_ref(x, weight, bias=None, state=None):
    """Causal grouped convolution with optional carried history.

    x: [B, L, C]; weight: [G, K] with C % G == 0 (channel c uses row c // (C // G)); the last tap
    ``weight[:, K-1]`` multiplies the current token (F.conv1d / causal-conv1d order).
    bias: [C] or None, added after the convolution.
    state: [B, K-1, C] or None: the K-1 inputs before ``x`` (zeros at the start of a sequence).
    It is overwritten in place with the last K-1 inputs, so the next call continues the sequence.
    Returns y: [B, L, C] float32.
    """
    B, L, C = x.shape
    G, K = weight.shape
    if L == 0:  # nothing to filter; the history stays as it is
        return torch.zeros(B, 0, C, device=x.device, dtype=torch.float32)
    xf = x.float()
    short = L > 1 and K <= _SHIFTED_SUM_TAPS
    if state is not None and not short:
        ctx = torch.cat([state.float(), xf], dim=1)
    elif L == 1 or K > _SHIFTED_SUM_TAPS:
        ctx = F.pad(xf, (0, 0, K - 1, 0))
    if L == 1:
        # one decoding step: a dot product over the K-token window (a convolution call costs ~10x more)
        y = (ctx.view(B, K, G, C // G) * weight.float().T[None, :, :, None]).sum(1).view(B, 1, C)
    elif short:
        # short filters: one multiply-add per tap over the [B, L, C] window, in place; on CPU several
        # times faster than a depthwise F.conv1d, which transposes and copies its input and output.
        # The history enters only the first outputs, so the input is never copied behind it.
        # [K, C] contiguous: a strided tap row (weight.T when G == C) makes each broadcast
        # multiply several times slower
        w = weight.float().T.repeat_interleave(C // G, dim=1).contiguous()
        y = xf * w[K - 1]
        for s in range(1, K):  # input t - s, tap K-1-s
            if s < L:
                y[:, s:].addcmul_(xf[:, : L - s], w[K - 1 - s])
            if state is not None:  # outputs t < s read the history, state[:, K-1-s+t]
                m = min(s, L)
                y[:, :m].addcmul_(state[:, K - 1 - s : K - 1 - s + m].float(), w[K - 1 - s])
    else:
        w = weight.float().repeat_interleave(C // G, dim=0)
        y = F.conv1d(ctx.transpose(1, 2), w[:, None, :], groups=C).transpose(1, 2)
    if bias is not None:
        y.add_(bias.float())
    if state is not None and K > 1:
        if L == 1 or not short:
            state.copy_(ctx[:, ctx.shape[1] - (K - 1):])
        elif L >= K - 1:
            state.copy_(xf[:, L - (K - 1):])
        else:
            state.copy_(torch.cat([state[:, L:].float(), xf], dim=1))
    return y


def hyena_fir_ref(x1v, x2, h, D=None, state=None):
    """Gated explicit Hyena filter: ``y = (causal_conv(x1v, h) + D * x1v) * x2``.

    x1v, x2: [B, L, C] (pre-gated value and output gate); h: [G, K] grouped taps, current token last;
    D: [C] skip weights or None (Hyena-SE has none); state: [B, K-1, C] history of x1v, updated in place.
    Returns y: [B, L, C] in x1v.dtype.
    """
    y = causal_conv1d_ref(x1v, h, state=state)  # a new float32 tensor: updated in place below
    if D is not None:
        y.addcmul_(x1v.float(), D.float())
    return y.mul_(x2.float()).to(x1v.dtype)
