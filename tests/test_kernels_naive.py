"""The plain-PyTorch ops against direct float64 definitions, and state carrying across chunks."""

from __future__ import annotations

import pytest
import torch

from evo_cli import kernels as K


def _direct_conv(x, h):
    """y[b, t, d] = sum_{k<=t} h[d, t-k] x[b, k, d] in float64, O(L^2)."""
    B, L, D = x.shape
    y = torch.zeros(B, L, D, dtype=torch.float64)
    for t in range(L):
        y[:, t] = (x[:, : t + 1].double() * h[:, : t + 1].double().flip(-1).t()).sum(1)
    return y


def _modal_params(D, S, complex_poles, seed=0):
    g = torch.Generator().manual_seed(seed)
    mag = torch.rand(D, S, generator=g) * 0.5 + 0.45
    if complex_poles:
        ang = (torch.rand(D, S, generator=g) - 0.5) * 6
        return torch.log(torch.polar(mag, ang)), torch.complex(torch.randn(D, S, generator=g), torch.randn(D, S, generator=g))
    return torch.log(mag), torch.randn(D, S, generator=g)


def _inner_filter_case(kind, B, C, groups, S, modal_params=_modal_params):
    """(inner filter arguments, random decoding state [B, ...]) of a Hyena operator of ``kind``: grouped
    taps (7 for hcs, 128 with a D skip for hcm; ``groups[kind]`` groups) or S modal poles (complex for
    Evo 1's ``hyena``) with a D skip. ``modal_params`` draws the poles and residues."""
    if kind in ("hcs", "hcm"):
        G, K_ = (groups["hcs"], 7) if kind == "hcs" else (groups["hcm"], 128)
        inner = dict(h=torch.randn(G, K_), D=torch.randn(C) if kind == "hcm" else None)
        return inner, torch.randn(B, K_ - 1, C)
    lp, r = modal_params(C, S, kind == "hyena")
    inner = dict(log_poles=lp, residues=r, D=torch.randn(C))
    return inner, torch.randn(B, C, S, dtype=torch.complex64 if kind == "hyena" else torch.float32)


@pytest.mark.parametrize("complex_poles", [False, True])
@pytest.mark.parametrize("L", [1, 5, 64, 129])
def test_modal_conv_matches_direct_sum(complex_poles, L):
    lp, r = _modal_params(6, 4, complex_poles)
    x = torch.randn(2, L, 6)
    h = K.modal_filter_ref(lp, r, L)
    t = torch.arange(L, dtype=torch.float64)
    h64 = (r.to(torch.complex128)[:, :, None] * torch.exp(lp.to(torch.complex128)[:, :, None] * t)).sum(1).real
    assert torch.allclose(h.double(), h64, atol=1e-5)
    assert torch.allclose(K.modal_conv_ref(x, lp, r).double(), _direct_conv(x, h64), atol=1e-4)


@pytest.mark.parametrize("block_elems", [1 << 24, 600])
def test_fft_convolution_in_channel_blocks(monkeypatch, block_elems):
    """The FFT convolution gives the direct sum whether all channels go in one transform or in blocks
    (a small bound on the temporaries forces blocks of 1 to 4 channels here), for one and several rows."""
    from evo_cli.kernels.modal import naive

    monkeypatch.setattr(naive, "_FFT_BLOCK_ELEMS", block_elems)
    for B in (1, 3):
        x, h = torch.randn(B, 70, 7), torch.randn(7, 70)
        y = naive.fftconv_ref(x, h)
        assert y.is_contiguous() and torch.allclose(y.double(), _direct_conv(x, h), atol=1e-4)


def test_fft_length_is_the_next_5_smooth_length():
    from evo_cli.kernels.modal.naive import fft_length

    def smooth(n):
        for p in (2, 3, 5):
            while n % p == 0:
                n //= p
        return n == 1

    for m in range(1, 3000):
        n = fft_length(m)
        assert n >= m and smooth(n) and not any(smooth(k) for k in range(m, n)), m
    assert [fft_length(m) for m in (678, 2048, 2070)] == [720, 2048, 2160]


@pytest.mark.parametrize("complex_poles", [False, True])
def test_modal_state_carries_across_chunks(complex_poles):
    """Any split of a sequence into chunks (and single steps) equals one pass."""
    lp, r = _modal_params(5, 3, complex_poles, seed=1)
    x = torch.randn(2, 50, 5)
    full = K.modal_conv_ref(x, lp, r)
    state = torch.zeros(2, 5, 3, dtype=torch.complex64 if complex_poles else torch.float32)
    pieces, start = [], 0
    for n in (1, 7, 1, 1, 20, 13, 1, 6):
        pieces.append(K.modal_conv_ref(x[:, start : start + n], lp, r, state))
        start += n
    assert torch.allclose(torch.cat(pieces, 1), full, atol=1e-5)
    # the state equals its definition: s[n] = sum_k p^(L-1-k) x_k
    t = torch.arange(50, dtype=torch.float64)
    powers = torch.exp(lp.to(torch.complex128)[:, :, None] * (49 - t))
    expected = torch.einsum("bkd,dnk->bdn", x.to(torch.complex128), powers)
    got = state.to(torch.complex128)
    assert torch.allclose(got if complex_poles else got.real, expected if complex_poles else expected.real, atol=1e-4)


@pytest.mark.parametrize("groups,K_", [(6, 3), (3, 7), (2, 128)])
def test_causal_conv1d_grouped_and_chunked(groups, K_):
    C = 6
    x = torch.randn(2, 40, C)
    w = torch.randn(groups, K_)
    # channel c uses filter c // (C // groups); current token is the last tap
    h = w.repeat_interleave(C // groups, 0).flip(-1)
    h_full = torch.zeros(C, 40)
    h_full[:, : min(K_, 40)] = h[:, :40]
    bias = torch.randn(C)
    full = K.causal_conv1d_ref(x, w, bias)
    assert torch.allclose(full.double(), _direct_conv(x, h_full) + bias.double(), atol=1e-4)
    # an input shorter than the filter, without a history
    assert torch.allclose(K.causal_conv1d_ref(x[:, :2], w, bias), full[:, :2], atol=1e-5)
    # single tokens take the decoding branch (a dot product over the window)
    state = torch.zeros(2, K_ - 1, C)
    pieces = [K.causal_conv1d_ref(x[:, a:b], w, bias, state) for a, b in ((0, 1), (1, 3), (3, 30), (30, 31), (31, 40))]
    assert torch.allclose(torch.cat(pieces, 1), full, atol=1e-5)
    assert torch.equal(state, torch.cat([torch.zeros(2, K_ - 1, C), x], 1)[:, -(K_ - 1):])


def test_featurize_split_and_gate():
    D = 4
    z = torch.randn(1, 9, 3 * D)
    w = torch.randn(3 * D, 3)
    b = torch.randn(3 * D)
    x2, x1v = K.hyena_featurize(z, w, b, backend="torch")
    zc = K.causal_conv1d_ref(z, w, b)
    assert torch.allclose(x2, zc[..., :D]) and torch.allclose(x1v, zc[..., D : 2 * D] * zc[..., 2 * D :])


def test_rms_norm_eps_outside_sqrt():
    x = torch.randn(3, 8)
    scale = torch.randn(8)
    expected = scale * x / (x.pow(2).mean(-1, keepdim=True).sqrt() + 1e-2)
    assert torch.allclose(K.rms_norm(x, scale, 1e-2, backend="torch"), expected, atol=1e-6)



def test_the_test_environment_has_every_cpu_backend():
    """The numba and Triton kernel tests skip where their package is missing (an install without the
    extras; Triton off Linux). ``pip install -e ".[test]"`` installs numba, and Linux installs Triton:
    there a missing or broken package (numba built against another numpy fails at import) must fail
    here, not silently skip every comparison of those kernels with their references."""
    import sys

    assert K.numba_available(), 'numba does not import: pip install -e ".[test]" (the CPU kernels go untested)'
    if sys.platform == "linux":
        assert K.triton_available(), "triton does not import (the fused kernels go untested)"

def test_backend_names(monkeypatch):
    cpu = torch.device("cpu")
    assert K.resolve_backend("torch", cpu) == "torch"
    assert K.resolve_backend("auto", cpu) == ("numba" if K.numba_available() else "torch")
    assert K.resolve_backend("auto", "meta") == "torch"
    with pytest.raises(ValueError):
        K.resolve_backend("cuda", cpu)
    monkeypatch.setattr(K, "numba_available", lambda: False)
    assert K.resolve_backend("auto", cpu) == "torch"
    with pytest.raises(RuntimeError, match=r'pip install "evo-cli\[cpu\]"$'):
        K.resolve_backend("numba", cpu)


@pytest.mark.parametrize("offset,Lq", [(0, 9), (5, 1), (37, 20), (3000, 70)])
def test_blocked_causal_attention(offset, Lq):
    """The blocked online softmax equals dense masked attention (small blocks to cross boundaries)."""
    from evo_cli.kernels.attention.naive import causal_attention_ref

    q = torch.randn(2, 3, Lq, 8)
    k, v = torch.randn(2, 3, offset + Lq, 8), torch.randn(2, 3, offset + Lq, 8)
    mask = torch.arange(offset + Lq)[None, :] <= torch.arange(offset, offset + Lq)[:, None]
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    got = causal_attention_ref(q, k, v, offset, q_block=16, k_block=32)
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.allclose(K.causal_attention(q, k, v, offset), expected, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("offset,Lq", [(5, 3), (37, 20), (300, 70)])
def test_cpu_flash_merge_equals_reference(dtype, offset, Lq):
    """The CPU path (two flash-kernel calls merged by log-sum-exp) against the blocked reference."""
    from evo_cli.kernels.attention.cpu import causal_attention_cpu
    from evo_cli.kernels.attention.naive import causal_attention_ref

    q = torch.randn(2, 3, Lq, 16).to(dtype)
    k, v = torch.randn(2, 3, offset + Lq, 16).to(dtype), torch.randn(2, 3, offset + Lq, 16).to(dtype)
    expected = causal_attention_ref(q, k, v, offset).float()
    atol = 1e-5 if dtype == torch.float32 else 2e-2
    assert torch.allclose(causal_attention_cpu(q, k, v, offset).float(), expected, atol=atol)


def test_fused_ops_launch_with_their_tensors_device_current(monkeypatch):
    """Triton launches on the current CUDA device: a fused op on a cuda:1 tensor must make cuda:1 current
    (without it, a single-device run on --device cuda:1 launches on cuda:0). No GPU here: the guard is
    checked with a recording stand-in for torch.cuda.device and a CPU-side check that it is a no-op."""
    import contextlib

    from evo_cli import kernels

    made = []

    @contextlib.contextmanager
    def device(d):
        made.append(d)
        yield

    monkeypatch.setattr(torch.cuda, "device", device)

    class OnGpu1:
        device = torch.device("cuda", 1)

    with kernels._on(OnGpu1()):
        pass
    assert made == [torch.device("cuda", 1)]
    with kernels._on(torch.zeros(1)):
        pass
    assert made == [torch.device("cuda", 1)]  # CPU tensors: nothing made current


@pytest.mark.parametrize("family", ["evo1", "evo2"])
def test_gradients_flow_through_the_reference_ops(family):
    """Training (examples/train_demo_model.py) and gradient attributions run the reference ops under
    autograd: the gradient of a loss reaches every parameter and agrees with central differences.
    RMSNorm scaled its norm in place, which autograd keeps for the backward pass."""
    from evo_cli.model.init import motif_config, random_model

    config = motif_config(family, hidden_size=16, num_layers=4 if family == "evo1" else 7, head_dim=8,
                          inner_mlp_size=32)
    model = random_model(config, seed=0, kernels="torch").train()
    model.requires_grad_(True)
    ids = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(0)) % 4 + 65

    def loss():
        return torch.nn.functional.cross_entropy(model(ids)[:, :-1].flatten(0, 1), ids[:, 1:].flatten())

    loss().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    missing = [n for n, g in grads.items() if g is None and not n.endswith("inv_freq")]
    assert not missing and all(torch.isfinite(g).all() for g in grads.values() if g is not None)
    with torch.no_grad():
        for name in ["blocks.0.pre_norm.scale", "blocks.1.mlp.l3.weight", "norm.scale"]:
            p = model.get_parameter(name)
            i = (0,) * p.dim()
            h, x0 = 1e-2, p[i].item()
            p[i] = x0 + h
            up = loss().item()
            p[i] = x0 - h
            down = loss().item()
            p[i] = x0
            assert abs((up - down) / (2 * h) - grads[name][i].item()) < 2e-3 + 2e-2 * abs(grads[name][i].item()), name
