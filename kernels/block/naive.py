"""One decoding step of a whole block (``HyenaBlock.forward`` / ``AttentionBlock.forward`` for one
token), as the ops the block's modules run: the references for ``block/cpu.py``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..attention.naive import rotate_halves_ref as rotate_halves
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
    return _mlp_residual(linear_ref(y, out_w, out_b) + x, eps, post_scale, l1, l2, l3, activation)


def attention_block_step_ref(x, k_cache, v_cache, pos: int, *, eps, pre_scale, wqkv, bqkv, inv_freq, scaling,
                             num_heads, out_w, out_b, post_scale, l1, l2, l3, activation):
    """x: [B, 1, D], one token at position ``pos`` -> [B, 1, D]; its key and value are written into
    k_cache, v_cache [B, Hkv, T, hd] at ``pos`` and the queries attend over positions 0..pos.

    wqkv [(H + 2 Hkv) hd, D] with rows ``[Q | K | V]``, bqkv or None; rotary (GPT-NeoX halves) at angles
    ``pos / scaling * inv_freq`` [hd / 2]; the rest as in ``hyena_block_step_ref``."""
    B = x.shape[0]
    H, Hkv, hd = num_heads, k_cache.shape[1], k_cache.shape[3]
    q, k, v = linear_ref(rms_norm_ref(x, pre_scale, eps), wqkv, bqkv).split([H * hd, Hkv * hd, Hkv * hd], dim=-1)
    ang = torch.tensor([float(pos)]) / scaling * inv_freq.float()
    cos, sin = ang.cos(), ang.sin()
    k_cache[:, :, pos] = rotate_halves(k.view(B, Hkv, hd), cos, sin)
    v_cache[:, :, pos] = v.view(B, Hkv, hd)
    o = F.scaled_dot_product_attention(rotate_halves(q.view(B, H, hd), cos, sin)[:, :, None], k_cache[:, :, : pos + 1],
                                       v_cache[:, :, : pos + 1], enable_gqa=Hkv != H)
    u = linear_ref(o.reshape(B, 1, H * hd), out_w, out_b) + x
    return _mlp_residual(u, eps, post_scale, l1, l2, l3, activation)


def _mlp_residual(u, eps, post_scale, l1, l2, l3, activation):
    """``u + l3(act(l1 n) * l2 n)``, ``n = norm(u)``: the second half of every block."""
    n = rms_norm_ref(u, post_scale, eps)
    return u + linear_ref(ACTIVATIONS[activation](linear_ref(n, l1)) * linear_ref(n, l2), l3)
