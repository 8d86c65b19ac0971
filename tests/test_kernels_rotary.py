"""The numba rotary embedding (``kernels/rotary/cpu.py``) against its PyTorch reference, and the
inputs it hands over to the reference."""

from __future__ import annotations

import pytest
import torch

from evo_cli import kernels as K

pytest.importorskip("numba")

from evo_cli.kernels.rotary import cpu as rotary_cpu  # noqa: E402


def _angles(L, half, pos=0):
    ang = torch.arange(pos, pos + L, dtype=torch.float32)[:, None] * torch.rand(half)
    return ang.cos()[None, :, None], ang.sin()[None, :, None]


@pytest.mark.parametrize("B,L,H,hd", [(2, 37, 4, 32), (1, 1, 2, 8), (3, 5, 1, 128)])
def test_rotary_gives_the_reference_bits_on_views_of_the_projection(B, L, H, hd):
    """q and k as MHA passes them, views of the QKV projection's output with a row stride of the whole
    projection: each output is the reference's two products and their sum or difference, bit for bit."""
    torch.manual_seed(B * L)
    qkv = torch.randn(B, L, 3 * H * hd)
    q, k, _ = qkv.split([H * hd, H * hd, H * hd], dim=-1)
    cos, sin = _angles(L, hd // 2, pos=100)
    with torch.inference_mode():
        for x in (q.view(B, L, H, hd), k.view(B, L, H, hd), torch.randn(B, L, H, hd)):
            got = rotary_cpu.rotate_halves(x, cos, sin)
            assert got.is_contiguous() and torch.equal(got, K.rotate_halves_ref(x, cos, sin))
            assert torch.equal(K.rotate_halves(x, cos, sin, backend="numba"), got)


def test_rotary_hands_over_what_it_cannot_take():
    """A gradient to record, bf16, angles that broadcast over the tokens and a strided last dim run the
    reference (and give its numbers)."""
    x, (cos, sin) = torch.randn(2, 6, 2, 16), _angles(6, 8)
    xg = x.clone().requires_grad_()
    y = rotary_cpu.rotate_halves(xg, cos, sin)
    assert y.grad_fn is not None and torch.equal(y.detach(), K.rotate_halves_ref(x, cos, sin))
    cases = [(x.bfloat16(), cos, sin), (x, cos[:, :1], sin[:, :1]),
             (torch.randn(2, 6, 2, 32)[..., ::2], cos, sin)]
    with torch.inference_mode():
        for xi, c, s in cases:
            assert torch.equal(rotary_cpu.rotate_halves(xi, c, s), K.rotate_halves_ref(xi, c, s))
