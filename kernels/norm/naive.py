"""RMSNorm as StripedHyena defines it: eps is added to the RMS, outside the square root."""

from __future__ import annotations

import torch


def rms_norm_ref(x, scale, eps):
    """x: [..., D]; scale: [D] -> ``scale * x / (||x||_2 / sqrt(D) + eps)`` in x.dtype (fp32 inside)."""
    xf = x.float()
    # linalg.vector_norm directly: Tensor.norm's Python wrapper costs as much as the op on a decoding step.
    # The [..., 1] steps are out of place: autograd keeps the norm's output for its gradient
    rms = torch.linalg.vector_norm(xf, dim=-1, keepdim=True) * xf.shape[-1] ** -0.5 + eps
    y = xf / rms
    # the scale in place where no gradient is recorded (one [..., D] temporary fewer): the same numbers
    y = y * scale.float() if torch.is_grad_enabled() and (y.requires_grad or scale.requires_grad) else y.mul_(scale.float())
    return y.to(x.dtype)
