"""RMSNorm as StripedHyena defines it: eps is added to the RMS, outside the square root."""

from __future__ import annotations


def rms_norm_ref(x, scale, eps):
    """x: [..., D]; scale: [D] -> ``scale * x / (||x||_2 / sqrt(D) + eps)`` in x.dtype (fp32 inside)."""
    xf = x.float()
    rms = xf.norm(dim=-1, keepdim=True) * xf.shape[-1] ** -0.5
    return (xf / rms.add_(eps)).mul_(scale.float()).to(x.dtype)
