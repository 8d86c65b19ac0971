"""Causal attention of a chunk of queries over a KV cache, with bounded memory.

During chunked prefill query ``i`` of a chunk sits at absolute position ``offset + i`` and sees keys
``0 .. offset + i``. A dense mask for that is ``[Lq, Lk]``: gigabytes at 1 Mb. Here queries and keys
are taken in blocks with an online softmax, so memory stays ``O(B * H * q_block * k_block)``.
"""

from __future__ import annotations

import torch


def rotate_halves_ref(x, cos, sin):
    """GPT-NeoX rotary embedding: x [..., hd]; cos, sin broadcastable to [..., hd / 2] -> x with its
    halves (x0, x1) rotated to (x0 cos - x1 sin, x0 sin + x1 cos), in x.dtype (math in float32)."""
    x0, x1 = x.float().chunk(2, dim=-1)
    return torch.cat([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1).to(x.dtype)


def causal_attention_ref(q, k, v, offset: int, q_block: int = 1024, k_block: int = 4096):
    """q: [B, H, Lq, hd]; k, v: [B, H, Lk, hd] with Lk = offset + Lq -> [B, H, Lq, hd] in q.dtype.

    Softmax scale 1/sqrt(hd); accumulation in float32.
    """
    B, H, Lq, hd = q.shape
    if k.shape[2] != offset + Lq:
        raise ValueError(f"keys hold {k.shape[2]} positions, expected offset {offset} + {Lq} queries")
    scale = hd**-0.5
    out = torch.empty(B, H, Lq, hd, device=q.device, dtype=q.dtype)
    for qs in range(0, Lq, q_block):
        qe = min(Lq, qs + q_block)
        qb = q[:, :, qs:qe].float() * scale
        m = torch.full((B, H, qe - qs), float("-inf"), device=q.device)
        l = torch.zeros(B, H, qe - qs, device=q.device)
        acc = torch.zeros(B, H, qe - qs, hd, device=q.device)
        for ks in range(0, offset + qe, k_block):
            ke = min(offset + qe, ks + k_block)
            s = qb @ k[:, :, ks:ke].float().transpose(-1, -2)
            if ke > offset + qs + 1:
                # only blocks that reach past the first query's position need the causal mask
                qpos = torch.arange(offset + qs, offset + qe, device=q.device)[:, None]
                s.masked_fill_(torch.arange(ks, ke, device=q.device)[None, :] > qpos, float("-inf"))
            m_new = torch.maximum(m, s.amax(-1))
            p = torch.exp(s - m_new[..., None])
            corr = torch.exp(m - m_new)
            l = l * corr + p.sum(-1)
            acc = acc * corr[..., None] + p @ v[:, :, ks:ke].float()
            m = m_new
        out[:, :, qs:qe] = (acc / l[..., None]).to(q.dtype)
    return out
