"""RMSNorm as StripedHyena defines it: eps is added to the RMS, outside the square root."""

from __future__ import annotations

import torch


def rms_norm_ref(x, scale, eps):
    """x: [..., D]; scale: [D] -> ``scale * x / (||x||_2 / sqrt(D) + eps)`` in x.dtype (fp32 inside)."""
    xf = x.float()
    # linalg.vector_norm directly: Tensor.norm's Python wrapper costs as much as the op on a decoding step
    rms = torch.linalg.vector_norm(xf, dim=-1, keepdim=True).mul_(xf.shape[-1] ** -0.5)
    return (xf / rms.add_(eps)).mul_(scale.float()).to(x.dtype)
