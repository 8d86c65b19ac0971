"""numba CPU kernels (``kernels/<op>/cpu.py``) against their plain-PyTorch references on random inputs,
and the conditions under which they hand over to the reference."""

from __future__ import annotations

import pytest
import torch

from evo_cli import kernels as K

from .test_kernels_naive import _modal_params

pytest.importorskip("numba")

from evo_cli.kernels.linear import cpu as linear_cpu  # noqa: E402
from evo_cli.kernels.block import cpu as block_cpu  # noqa: E402
from evo_cli.kernels.step import cpu as step_cpu  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(7)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _close(out, ref, rel=2e-6):
    """Max error relative to the largest reference value: float32 rounding of reordered sums."""
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert (out - ref).abs().max() <= rel * ref.abs().max().clamp(min=1), (out - ref).abs().max()


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("rows,N,Kd,bias", [(1, 384, 128, False), (1, 1000, 300, True), (3, 70, 37, True),
                                            (8, 576, 512, False), (5, 1, 1, True)])
def test_linear(rows, N, Kd, bias, threads):
    """Every path of the loop (one row, several rows, bias, the parallel blocks with a partial last
    block) against F.linear; inputs of several leading dims and non-contiguous ones."""
    torch.set_num_threads(threads)
    x = torch.randn(Kd, rows).t()  # non-contiguous rows
    w, b = torch.randn(N, Kd), (torch.randn(N) if bias else None)
    assert linear_cpu.applies(x, w, b)
    with torch.inference_mode():
        _close(linear_cpu.linear(x, w, b), K.linear_ref(x, w, b))
        x3 = torch.randn(1, rows, Kd)
        _close(K.linear(x3, w, b, backend="numba"), K.linear_ref(x3, w, b))


def test_linear_parallel_equals_serial():
    """The parallel blocks split rows only: every output is the same dot product, bit for bit."""
    x, w, b = torch.randn(2, 512), torch.randn(1000, 512), torch.randn(1000)
    assert w.numel() >= linear_cpu._PARALLEL_ELEMS
    torch.set_num_threads(1)
    serial = linear_cpu.linear(x, w, b)
    torch.set_num_threads(2)
    assert torch.equal(linear_cpu.linear(x, w, b), serial)


def test_linear_hands_over_to_f_linear():
    """More rows than MAX_ROWS, bf16, a column-major weight, or a gradient to record: F.linear."""
    w = torch.randn(64, 32)
    many = torch.randn(linear_cpu.MAX_ROWS + 1, 32)
    assert not linear_cpu.applies(many, w, None)
    assert not linear_cpu.applies(many[:1].bfloat16(), w.bfloat16(), None)
    assert not linear_cpu.applies(many[:1], w.t().contiguous().t(), None)
    wg = w.clone().requires_grad_()
    assert not linear_cpu.applies(many[:1], wg, None)
    y = K.linear(many[:1], wg, backend="numba")
    assert y.grad_fn is not None
    with torch.no_grad():
        assert linear_cpu.applies(many[:1], wg, None)
    assert torch.equal(K.linear(many, w, backend="numba"), K.linear_ref(many, w))


def test_linear_propagates_nan_and_inf():
    x, w = torch.randn(1, 40), torch.randn(30, 40)
    x[0, 3] = float("nan")
    assert torch.isnan(K.linear(x, w, backend="numba")).all()
    x[0, 3] = float("inf")
    w[:, 3] = 1.0
    assert torch.isinf(K.linear(x, w, backend="numba")).all()


def _step_case(kind, B, C, bias):
    z = torch.randn(B, 1, 3 * C)
    w, b = torch.randn(3 * C, 3), (torch.randn(3 * C) if bias else None)
    fir = torch.randn(B, 2, 3 * C)
    if kind in ("hcs", "hcm"):
        G, Kh = (4, 7) if kind == "hcs" else (5, 128)
        inner = dict(h=torch.randn(G, Kh), D=torch.randn(C) if kind == "hcm" else None)
        state = torch.randn(B, Kh - 1, C)
    else:
        lp, r = _modal_params(C, 6, kind == "hyena")
        inner = dict(log_poles=lp, residues=r, D=torch.randn(C))
        state = torch.randn(B, C, 6, dtype=torch.complex64 if kind == "hyena" else torch.float32)
    return z, w, b, fir, state, inner


@pytest.mark.parametrize("kind", ["hcs", "hcm", "hcl", "hyena"])
@pytest.mark.parametrize("B,bias", [(1, False), (3, True)])
def test_hyena_step(kind, B, bias):
    """Several steps of the fused step against featurize + inner filter: outputs and both states."""
    z, w, b, fir, state, inner = _step_case(kind, B, 40, bias)
    ref_fir, ref_state = fir.clone(), state.clone()
    with torch.inference_mode():
        for _ in range(4):
            z = torch.randn_like(z)
            _close(K.hyena_step(z, w, b, fir, state, **inner, backend="numba"),
                   K.hyena_step_ref(z, w, b, ref_fir, ref_state, **inner), rel=1e-5)
    assert torch.equal(fir, ref_fir)
    assert torch.allclose(state, ref_state, rtol=1e-5, atol=1e-5)


def test_hyena_step_hands_over_to_the_reference():
    """A bf16 token or a non-contiguous state runs the reference (the same numbers as it)."""
    z, w, b, fir, state, inner = _step_case("hcm", 2, 20, False)
    for args in ((z.bfloat16(), fir.clone(), state.clone()),
                 (z, fir.clone(), state.clone().transpose(0, 1).contiguous().transpose(0, 1))):
        zz, f, s = args
        f2, s2 = f.clone(), s.clone()
        assert torch.equal(step_cpu.hyena_step(zz, w, b, f, s, **inner), K.hyena_step_ref(zz, w, b, f2, s2, **inner))
        assert torch.equal(s, s2)


def _block_weights(kind, C, I, bias, activation):
    z, w, b, fir, state, inner = _step_case(kind, 2, C, bias)
    rnd = lambda *shape: torch.randn(*shape) / shape[-1] ** 0.5  # noqa: E731
    return fir, state, dict(eps=1e-6, pre_scale=torch.randn(C), proj_w=rnd(3 * C, C), proj_b=torch.randn(3 * C) if bias else None,
                            short_w=w, short_b=b, **inner, out_w=rnd(C, C), out_b=torch.randn(C) if bias else None,
                            post_scale=torch.randn(C), l1=rnd(I, C), l2=rnd(I, C), l3=rnd(C, I), activation=activation)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("kind,bias,activation", [("hcs", False, "gelu"), ("hcm", True, "identity"),
                                                   ("hcl", False, "silu"), ("hyena", True, "gelu")])
def test_hyena_block_step(kind, bias, activation, threads):
    """A whole block's step in one call against the block's ops, over several tokens: outputs and
    states; wide enough (C = 160) for the parallel matrix-vector blocks with two threads."""
    torch.set_num_threads(threads)
    fir, state, weights = _block_weights(kind, 160, 420, bias, activation)
    ref_fir, ref_state = fir.clone(), state.clone()
    with torch.inference_mode():
        for _ in range(3):
            x = torch.randn(2, 1, 160)
            _close(K.hyena_block_step(x, fir, state, **weights, backend="numba"),
                   K.hyena_block_step_ref(x, ref_fir, ref_state, **weights), rel=1e-5)
    assert torch.allclose(fir, ref_fir, rtol=1e-5, atol=1e-5)  # projections: sums in another order
    assert torch.allclose(state, ref_state, rtol=1e-5, atol=1e-5)


def test_hyena_block_step_hands_over_to_the_reference():
    """A non-contiguous state, more tokens than MAX_ROWS, or weights that record a gradient: the
    block's ops."""
    fir, state, weights = _block_weights("hcs", 16, 40, False, "identity")
    x = torch.randn(2, 1, 16)
    state = state.transpose(0, 1).contiguous().transpose(0, 1)
    f2, s2 = fir.clone(), state.clone()
    want = K.hyena_block_step_ref(x, f2, s2, **weights)
    assert torch.equal(block_cpu.hyena_block_step(x, fir, state, **weights), want)
    assert torch.equal(state, s2)
    B = linear_cpu.MAX_ROWS + 1
    fir, state = torch.randn(B, *fir.shape[1:]), torch.randn(B, *state.shape[1:])
    x, f2, s2 = torch.randn(B, 1, 16), fir.clone(), state.clone()
    assert torch.equal(block_cpu.hyena_block_step(x, fir, state, **weights), K.hyena_block_step_ref(x, f2, s2, **weights))
    weights["l3"].requires_grad_()
    assert block_cpu.hyena_block_step(x, fir, state, **weights).grad_fn is not None


def test_decoding_with_numba_kernels_equals_the_reference_ops():
    """A small model decodes the same logits with numba kernels (a Hyena block in one call) as with the
    reference ops, and both equal the full forward at every position; a forward hook on a block's
    module makes that block run its modules."""
    from evo_cli.model.init import motif_config, random_model

    model = random_model(motif_config("evo2", hidden_size=32, num_layers=7, head_dim=16, inner_mlp_size=80), seed=1)
    ids = torch.randint(0, 512, (2, 10))
    with torch.inference_mode():
        full = model.set_kernels("torch")(ids)
        steps = {}
        for backend in ("torch", "numba"):
            model.set_kernels(backend)
            state = model.new_state(2, 10)
            steps[backend] = torch.cat([model(ids[:, t : t + 1], state) for t in range(10)], 1)
        seen = []
        model.blocks[1].mlp.l3.register_forward_hook(lambda m, i, o: seen.append(o.shape))
        assert model.blocks[0]._one_call_step(ids[:, :1]) and not model.blocks[1]._one_call_step(ids[:, :1])
        state = model.new_state(2, 10)
        hooked = torch.cat([model(ids[:, t : t + 1], state) for t in range(10)], 1)
    assert seen == [(2, 1, 32)] * 10
    _close(steps["numba"], steps["torch"], rel=1e-5)
    _close(steps["numba"], full, rel=1e-5)
    _close(hooked, full, rel=1e-5)
