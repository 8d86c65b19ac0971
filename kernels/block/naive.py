"""One decoding step of a whole Hyena block (``HyenaBlock.forward`` for one token), as the ops the
block's modules run: the reference for ``block/cpu.py``."""

from __future__ import annotations

import torch.nn.functional as F

from ..linear.naive import linear_ref
from ..norm.naive import rms_norm_ref
from ..step.naive import hyena_step_ref

ACTIVATIONS = {"gelu": F.gelu, "silu": F.silu, "identity": lambda x: x}  # gelu: exact (erf), as nn.GELU()


def hyena_block_step_ref(x, fir_state, inner_state, *, eps, pre_scale, proj_w, proj_b, short_w, short_b, h=None,
                         log_poles=None, residues=None, D=None, out_w, out_b, post_scale, l1, l2, l3, activation):
    """x: [B, 1, D] -> [B, 1, D]; ``fir_state`` and ``inner_state`` as in ``hyena_step`` (updated in place).

    ``u = out(step(proj(norm(x)))) + x``, then ``u + l3(act(l1 n) * l2 n)`` with ``n = norm(u)``:
    pre_scale, post_scale [D]; proj_w [3D, D], proj_b [3D] or None; short_w [3D, K], short_b; the inner
    filter's ``h`` (and ``D``) or ``log_poles``, ``residues``, ``D``; out_w [D, D], out_b [D] or None;
    l1, l2 [I, D], l3 [D, I]; activation ``gelu``, ``silu`` or ``identity``."""
    z = linear_ref(rms_norm_ref(x, pre_scale, eps), proj_w, proj_b)
    y = hyena_step_ref(z, short_w, short_b, fir_state, inner_state, h, log_poles, residues, D)
    u = linear_ref(y, out_w, out_b) + x
    n = rms_norm_ref(u, post_scale, eps)
    return u + linear_ref(ACTIVATIONS[activation](linear_ref(n, l1)) * linear_ref(n, l2), l3)
