"""numba CPU kernels (``kernels/<op>/cpu.py``) against their plain-PyTorch references on random inputs,
and the conditions under which they hand over to the reference."""

from __future__ import annotations

import pytest
import torch

from evo_cli import kernels as K

from .test_kernels_naive import _inner_filter_case, _modal_params

pytest.importorskip("numba")

from evo_cli.kernels.linear import cpu as linear_cpu  # noqa: E402
from evo_cli.kernels.block import cpu as block_cpu  # noqa: E402
from evo_cli.kernels.featurize import cpu as featurize_cpu  # noqa: E402
from evo_cli.kernels.fir import cpu as fir_cpu  # noqa: E402
from evo_cli.kernels.modal import cpu as modal_cpu  # noqa: E402
from evo_cli.kernels.step import cpu as step_cpu  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(7)
    yield


def _close(out, ref, rel=2e-6):
    """Max error relative to the largest reference value: float32 rounding of reordered sums."""
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert (out - ref).abs().max() <= rel * ref.abs().max().clamp(min=1), (out - ref).abs().max()


def _column_major(*shape):
    """A random [N, K] float32 weight stored column-major, as decoding lays weights out for the loop."""
    return torch.randn(*reversed(shape)).t()


@pytest.mark.parametrize("rows,N,Kd,bias", [(1, 384, 128, False), (1, 1000, 300, True), (3, 70, 37, True),
                                            (8, 576, 512, False), (5, 1, 1, True)])
def test_linear(rows, N, Kd, bias):
    """The loop (one row, several rows, bias) against F.linear; inputs of several leading dims and
    non-contiguous ones."""
    x = torch.randn(Kd, rows).t()  # non-contiguous rows
    w, b = _column_major(N, Kd), (torch.randn(N) if bias else None)
    assert linear_cpu.applies(x, w, b)
    with torch.inference_mode():
        _close(linear_cpu.linear(x, w, b), K.linear_ref(x, w, b))
        x3 = torch.randn(1, rows, Kd)
        _close(K.linear(x3, w, b, backend="numba"), K.linear_ref(x3, w, b))


def test_linear_rows_do_not_depend_on_the_batch():
    """Each output is summed in input order whatever the number of rows: a row gives the same bits
    alone or in a batch (a distributed run splits batches differently from a single process)."""
    x, w, b = torch.randn(6, 300), _column_major(700, 300), torch.randn(700)
    batch = linear_cpu.linear(x, w, b)
    for r in range(6):
        assert torch.equal(linear_cpu.linear(x[r : r + 1], w, b), batch[r : r + 1])


def test_gemm_rows_do_not_depend_on_the_batch():
    """Past the loop's rows, the GEMM gives a row the same bits in a batch of any size (a distributed or
    resumed run batches windows differently from a single process)."""
    x, w, b = torch.randn(300, 200), _column_major(352, 200), torch.randn(352)
    with torch.inference_mode():
        batch = linear_cpu.linear(x, w, b)
        for rows in (linear_cpu.MAX_ROWS + 1, 17, 100, 256):
            assert torch.equal(linear_cpu.linear(x[:rows], w, b), batch[:rows])


def test_linear_hands_over_to_a_gemm():
    """More rows than MAX_ROWS: oneDNN's GEMM (F.linear where torch lacks it); bf16, a row-major
    weight, or a gradient to record: F.linear."""
    w = _column_major(64, 32)
    many = torch.randn(linear_cpu.MAX_ROWS + 1, 32)
    assert linear_cpu.applies(many[:1], w, None)
    assert not linear_cpu.applies(many, w, None)
    assert not linear_cpu.applies(many[:1].bfloat16(), w.bfloat16(), None)
    assert not linear_cpu.applies(many[:1], w.contiguous(), None)
    wg = w.clone().requires_grad_()
    assert not linear_cpu.applies(many[:1], wg, None)
    y = K.linear(many[:1], wg, backend="numba")
    assert y.grad_fn is not None
    with torch.no_grad():
        assert linear_cpu.applies(many[:1], wg, None)
    _close(K.linear(many, w, backend="numba"), K.linear_ref(many, w))
    assert linear_cpu.gemm_applies(many, w, None) == (linear_cpu._ONEDNN is not None)


def test_gemm_takes_a_strided_bias():
    """oneDNN reads a bias as if it were contiguous: a strided or broadcast one (a view of a larger
    tensor) gave wrong numbers or read past its storage."""
    x, w = torch.randn(linear_cpu.MAX_ROWS + 5, 48), _column_major(64, 48)
    with torch.inference_mode():
        for b in (torch.randn(128)[::2], torch.randn(1).expand(64)):
            _close(linear_cpu.linear(x, w, b), K.linear_ref(x, w, b))


def test_gemm_rows_do_not_depend_on_the_input_layout():
    """A strided input (a slice of a batch, a hook's output) gets the bits of a contiguous one: it went
    to F.linear's MKL GEMM while a contiguous one went to oneDNN."""
    x, w, b = torch.randn(2, 300, 200)[:, 20:], _column_major(352, 200), torch.randn(352)
    with torch.inference_mode():
        assert torch.equal(linear_cpu.linear(x, w, b), linear_cpu.linear(x.contiguous(), w, b))


def test_decoding_rows_stay_off_the_gemm():
    """Up to MAX_ROWS rows with a weight too large for the loop (a 7B model's decoding) go to F.linear:
    its matrix-vector product streams a column-major weight 2.5x faster than oneDNN's GEMM for one
    row ([11008, 4096]: 9.4 against 23.4 ms, one core)."""
    w = _column_major(linear_cpu.MAX_ELEMS // 1024 + 1, 1024)
    for rows in (1, linear_cpu.MAX_ROWS):
        x = torch.randn(rows, 1024)
        assert not linear_cpu.applies(x, w, None) and not linear_cpu.gemm_applies(x, w, None)
    assert linear_cpu.gemm_applies(torch.randn(linear_cpu.MAX_ROWS + 1, 1024), w, None) == (
        linear_cpu._ONEDNN is not None)


def test_gemm_respects_torch_turning_onednn_off():
    """``torch.backends.mkldnn.enabled = False`` (torch's switch to work around a oneDNN problem on some
    build or CPU) sends the products to F.linear."""
    x, w = torch.randn(linear_cpu.MAX_ROWS + 1, 32), _column_major(64, 32)
    was = torch.backends.mkldnn.enabled
    try:
        torch.backends.mkldnn.enabled = False
        assert not linear_cpu.gemm_applies(x, w, None)
        with torch.inference_mode():
            assert torch.equal(linear_cpu.linear(x, w), K.linear_ref(x, w))
    finally:
        torch.backends.mkldnn.enabled = was


def test_linear_propagates_nan_and_inf():
    x, w = torch.randn(1, 40), _column_major(30, 40)
    x[0, 3] = float("nan")
    assert torch.isnan(K.linear(x, w, backend="numba")).all()
    x[0, 3] = float("inf")
    w[:, 3] = 1.0
    assert torch.isinf(K.linear(x, w, backend="numba")).all()


def _step_case(kind, B, C, bias):
    z = torch.randn(B, 1, 3 * C)
    w, b = torch.randn(3 * C, 3), (torch.randn(3 * C) if bias else None)
    fir = torch.randn(B, 2, 3 * C)
    inner, state = _inner_filter_case(kind, B, C, {"hcs": 4, "hcm": 5}, 6)
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


def test_filter_groups_that_do_not_tile_the_channels_are_refused():
    """The kernels would leave the channels past the last whole group unwritten: they hand over to the
    reference, which refuses such a filter."""
    z, w, b, fir, state, inner = _step_case("hcm", 1, 42, False)  # 42 channels, 5 groups
    with pytest.raises(RuntimeError):
        step_cpu.hyena_step(z, w, b, fir, state, **inner)
    fir, state, weights = _block_weights("hcm", 42, 40, False, "identity")
    assert block_cpu.bind_hyena_block(torch.empty(2, 42), torch.empty(2, 42), fir, state, **weights) is None


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
    rnd = lambda *shape: _column_major(*shape) / shape[-1] ** 0.5  # noqa: E731
    return fir, state, dict(eps=1e-6, pre_scale=torch.randn(C), proj_w=rnd(3 * C, C), proj_b=torch.randn(3 * C) if bias else None,
                            short_w=w, short_b=b, **inner, out_w=rnd(C, C), out_b=torch.randn(C) if bias else None,
                            post_scale=torch.randn(C), l1=rnd(I, C), l2=rnd(I, C), l3=rnd(C, I), activation=activation)


@pytest.mark.parametrize("kind,bias,activation", [("hcs", False, "gelu"), ("hcm", True, "identity"),
                                                   ("hcl", False, "silu"), ("hyena", True, "gelu")])
def test_hyena_block_step(kind, bias, activation):
    """A whole block's step in one call against the block's ops, over several tokens: outputs and states."""
    fir, state, weights = _block_weights(kind, 160, 420, bias, activation)
    ref_fir, ref_state = fir.clone(), state.clone()
    with torch.inference_mode():
        filt = dict(h=None, log_poles=None, residues=None, D=None) | weights  # the kernel runs, not the reference
        assert block_cpu._hyena_call(torch.empty(2, 160), torch.empty(2, 160), fir, state, filt) is not None
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


def _attention_weights(C, H, Hkv, hd, I, bias, activation):
    rnd = lambda *shape: _column_major(*shape) / shape[-1] ** 0.5  # noqa: E731
    return dict(eps=1e-6, pre_scale=torch.randn(C), wqkv=rnd((H + 2 * Hkv) * hd, C),
                bqkv=torch.randn((H + 2 * Hkv) * hd) if bias else None,
                inv_freq=1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd)), scaling=2.0, num_heads=H,
                out_w=rnd(C, H * hd), out_b=torch.randn(C) if bias else None, post_scale=torch.randn(C),
                l1=rnd(I, C), l2=rnd(I, C), l3=rnd(C, I), activation=activation)


@pytest.mark.parametrize("H,Hkv,bias,activation", [(4, 4, False, "gelu"), (6, 2, True, "identity")])
def test_bound_attention_block(H, Hkv, bias, activation):
    """The bound attention step against the block's ops at successive positions (rotary at each, the
    cache written at each, grouped kv heads), out aliasing x as the decoder uses it."""
    B, C, hd, T = 3, 48, 16, 9
    weights = _attention_weights(C, H, Hkv, hd, 100, bias, activation)
    kc, vc = torch.zeros(B, Hkv, T, hd), torch.zeros(B, Hkv, T, hd)
    rk, rv = kc.clone(), vc.clone()
    x, pos = torch.empty(B, C), torch.zeros(1, dtype=torch.long)
    step = block_cpu.bind_attention_block(x, x, kc, vc, pos, **weights)
    assert step is not None
    for p in range(T):
        token = torch.randn(B, 1, C)
        x.copy_(token[:, 0])
        pos[0] = p
        step()
        want = K.attention_block_step_ref(token, rk, rv, p, **weights)
        _close(x, want[:, 0], rel=1e-5)
    assert torch.allclose(kc, rk, atol=1e-5) and torch.allclose(vc, rv, atol=1e-5)


def test_binders_refuse_what_the_kernels_cannot_take():
    """bf16 or row-major weights, a non-contiguous cache, more tokens than MAX_ROWS: None (the caller
    runs the modules)."""
    w = _attention_weights(16, 2, 2, 8, 20, False, "gelu")
    kc = torch.zeros(1, 2, 4, 8)
    pos = torch.zeros(1, dtype=torch.long)
    x = torch.empty(1, 16)
    assert block_cpu.bind_attention_block(x, x, kc, kc.clone(), pos, **w) is not None
    assert block_cpu.bind_attention_block(x, x, kc.transpose(2, 3), kc.clone(), pos, **w) is None
    assert block_cpu.bind_attention_block(x, x, kc, kc.clone(), pos, **dict(w, l3=w["l3"].bfloat16())) is None
    assert block_cpu.bind_attention_block(x, x, kc, kc.clone(), pos, **dict(w, l3=w["l3"].contiguous())) is None
    many = torch.empty(linear_cpu.MAX_ROWS + 1, 16)
    assert block_cpu.bind_head(many, torch.empty(len(many), 30), eps=1e-6, scale=torch.ones(16),
                               weight=torch.randn(30, 16)) is None
    logits = torch.empty(1, 30)
    scale, emb = torch.randn(16), torch.randn(30, 16)
    x.normal_()
    block_cpu.bind_head(x, logits, eps=1e-6, scale=scale, weight=emb)()
    _close(logits, K.linear_ref(K.rms_norm_ref(x, scale, 1e-6), emb))


@pytest.mark.parametrize("family,kv_heads", [("evo2", None), ("evo2", 2), ("evo1", None)])
def test_cpu_decoder_equals_the_model_steps(family, kv_heads):
    """CpuDecoder (one bound kernel per block) continues a prefilled state with the logits and the
    state of model(token, state) under the reference ops, for Evo 2 (grouped kv heads too) and Evo 1."""
    import dataclasses

    from evo_cli.model.cpu_decode import CpuDecoder
    from evo_cli.model.init import motif_config, random_model

    config = motif_config(family, hidden_size=32, num_layers=7, head_dim=8, inner_mlp_size=80)
    if kv_heads:
        config = dataclasses.replace(config, num_kv_heads=kv_heads)
    model = random_model(config, seed=3, kernels="numba")
    ids = torch.randint(0, 512, (3, 12))
    with torch.inference_mode():
        states = {}
        for name in ("torch", "bound"):
            model.set_kernels("numba" if name == "bound" else "torch")
            state = states[name] = model.new_state(3, 12)
            model(ids[:, :5], state)
            decoder = CpuDecoder.build(model, state)
            assert (decoder is None) == (name == "torch")
            step = decoder.step if decoder else lambda t: model(t, state)  # noqa: B023
            states[name + "_logits"] = torch.cat([step(ids[:, t : t + 1]) for t in range(5, 12)], 1)
        with pytest.raises(ValueError, match="all are used"):
            decoder.step(ids[:, :1])
    _close(states["bound_logits"], states["torch_logits"], rel=1e-5)
    assert states["bound"].seqlen == states["torch"].seqlen == 12
    for a, b in zip(states["bound"].layers, states["torch"].layers):
        for name in vars(a):
            assert torch.allclose(getattr(a, name), getattr(b, name), rtol=1e-4, atol=1e-5), name


def test_cpu_decoder_stands_aside_for_hooks_fp8_and_large_batches():
    from evo_cli.model.cpu_decode import CpuDecoder
    from evo_cli.model.init import motif_config, random_model

    model = random_model(motif_config("evo2", hidden_size=32, num_layers=7, head_dim=8, inner_mlp_size=80), seed=3,
                         kernels="numba")
    with torch.inference_mode():
        assert CpuDecoder.build(model, model.new_state(2, 4)) is not None
        assert CpuDecoder.build(model, model.new_state(linear_cpu.MAX_ROWS + 1, 4)) is None
        assert CpuDecoder.build(model, model.new_state(2, 4, last_block=3)) is None
        handle = model.blocks[2].mlp.register_forward_hook(lambda m, i, o: None)
        assert CpuDecoder.build(model, model.new_state(2, 4)) is None
        handle.remove()
        model.add_fp8_state().set_fp8("emulate")
        assert CpuDecoder.build(model, model.new_state(2, 4)) is None


def test_a_slow_first_compilation_says_so_once(monkeypatch, caplog):
    """ready() compiles before the first call; when that is slow, one line says why, once per process."""
    import numba
    import numpy as np

    from evo_cli.kernels import _numba

    monkeypatch.setattr(_numba, "_NOTICE_AFTER", 0.0)
    monkeypatch.setattr(_numba, "_noticed", __import__("threading").Event())
    def fresh(k):  # a new, uncached kernel
        return numba.njit(lambda a: a.sum() + k)

    kernels = [fresh(0), fresh(1)]
    args = (np.ones(3, dtype=np.float32),)
    with caplog.at_level("WARNING", logger="evo_cli.kernels._numba"):
        for kernel in kernels:
            _numba.ready(kernel, args)
            assert kernel.overloads and kernel(*args) == 3.0 + kernels.index(kernel)
    assert [r.getMessage() for r in caplog.records] == [
        "preparing the CPU kernels (numba compiles them on the first run on a machine, 10-20 s; later runs load "
        "them from its cache)"]


_FRESH_OR_CACHED = """
import hashlib, torch
from tests.test_kernels_cpu import _attention_weights, _block_weights
from evo_cli.kernels.block import cpu as block_cpu
torch.manual_seed(0)
fir, state, w = _block_weights("hcm", 60, 160, True, "gelu")
x, out = torch.randn(2, 60), torch.empty(2, 60)
block_cpu.bind_hyena_block(x, out, fir, state, **w)()
w = _attention_weights(60, 4, 2, 16, 160, True, "gelu")
kc, vc, pos = torch.randn(2, 2, 8, 16), torch.randn(2, 2, 8, 16), torch.tensor([5])
block_cpu.bind_attention_block(x, x, kc, vc, pos, **w)()
from evo_cli import kernels as K
z, lp, r = torch.randn(2, 40, 3 * 60), -torch.rand(60, 4), torch.randn(60, 4)
x2, x1v = K.hyena_featurize(z, torch.randn(3 * 60, 3), None, torch.randn(2, 2, 3 * 60), backend="numba")
y = K.hyena_fir(x1v, x2, torch.randn(6, 128), torch.randn(60), torch.randn(2, 127, 60), backend="numba")
y = K.hyena_modal(y, x2, lp, r, torch.randn(60), torch.randn(2, 60, 4), backend="numba")
print(hashlib.md5(out.numpy().tobytes() + x.numpy().tobytes() + y.numpy().tobytes()).hexdigest())
"""


def test_kernels_give_the_same_bits_compiled_or_cached(tmp_path):
    """A process that compiles the kernels and one that loads them from numba's cache compute the same
    bytes (with fast-math reassociation the attention kernel did not: a run's numbers depended on
    whether it had compiled the kernels)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    root = Path(__file__).resolve().parent.parent
    runs = [subprocess.run([sys.executable, "-c", _FRESH_OR_CACHED], cwd=root, env=env, capture_output=True,
                           text=True, check=True).stdout for _ in range(2)]
    assert any(tmp_path.rglob("*.nbi")), "the first run left no cache"
    assert runs[0] == runs[1] and len(runs[0].strip()) == 32


def test_weights_past_max_elems_go_to_mkl(monkeypatch):
    """Past MAX_ELEMS MKL streams a weight faster: the product is F.linear's, a block runs its ops and
    the decoder binds nothing."""
    monkeypatch.setattr(linear_cpu, "MAX_ELEMS", 120)
    monkeypatch.setattr(block_cpu, "MAX_ELEMS", 120)
    x, w = torch.randn(1, 20), _column_major(6, 20)
    assert linear_cpu.applies(x, w, None)  # 120 elements
    assert linear_cpu.applies(x[:, :16], _column_major(6, 16), None)  # 96
    assert not linear_cpu.applies(x, _column_major(10, 20), None)  # 200
    fir, state, weights = _block_weights("hcs", 16, 40, False, "identity")
    x = torch.randn(2, 1, 16)
    f2, s2 = fir.clone(), state.clone()
    assert torch.equal(K.hyena_block_step(x, fir, state, **weights, backend="numba"),
                       K.hyena_block_step_ref(x, f2, s2, **weights))
    assert block_cpu.bind_hyena_block(x[:, 0], x[:, 0].clone(), fir, state, **weights) is None


def test_the_kernel_cache_folder_follows_every_kernel_source(tmp_path):
    """numba checks a cached kernel against its own file only; the folder the kernels are cached in
    is keyed by all their sources, so an edit to a kernel another one inlines compiles afresh."""
    import shutil
    from pathlib import Path

    from evo_cli.kernels import _numba

    root = Path(_numba.__file__).resolve().parent
    copy = tmp_path / "kernels"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert _numba.sources_digest(copy) == _numba.sources_digest(root)
    assert _numba._CACHE_DIR.endswith("kernels-" + _numba.sources_digest(root))
    step = copy / "step" / "cpu.py"
    step.write_text(step.read_text() + "\n# an edit\n")
    assert _numba.sources_digest(copy) != _numba.sources_digest(root)


def test_shape_mistakes_are_python_errors_not_memory_reads():
    """The kernels run without bounds checks: a bias of the wrong length goes to F.linear (which
    raises), and the decoder refuses tokens that are not one per sequence of its state."""
    from evo_cli.model.cpu_decode import CpuDecoder
    from evo_cli.model.init import motif_config, random_model

    x, w = torch.randn(1, 20), _column_major(8, 20)
    assert not linear_cpu.applies(x, w, torch.randn(3))
    with pytest.raises(RuntimeError):
        K.linear(x, w, torch.randn(3), backend="numba")
    model = random_model(motif_config("evo2", hidden_size=32, num_layers=7, head_dim=8, inner_mlp_size=80), seed=3,
                         kernels="numba")
    with torch.inference_mode():
        decoder = CpuDecoder.build(model, model.new_state(3, 4))
        for tokens in (torch.zeros(2, 1, dtype=torch.long), torch.zeros(4, 1, dtype=torch.long),
                       torch.zeros(3, 2, dtype=torch.long)):
            with pytest.raises(ValueError, match=r"tokens must be \[3, 1\]"):
                decoder.step(tokens)


def test_cpu_decoder_stands_aside_for_global_hooks():
    from evo_cli.model.cpu_decode import CpuDecoder
    from evo_cli.model.init import motif_config, random_model

    model = random_model(motif_config("evo2", hidden_size=32, num_layers=7, head_dim=8, inner_mlp_size=80), seed=3,
                         kernels="numba")
    handle = torch.nn.modules.module.register_module_forward_hook(lambda m, i, o: None)
    try:
        with torch.inference_mode():
            assert CpuDecoder.build(model, model.new_state(1, 4)) is None
            assert not model.blocks[0]._one_call_step(torch.zeros(1, 1, 32))
    finally:
        handle.remove()
    with torch.inference_mode():
        assert CpuDecoder.build(model, model.new_state(1, 4)) is not None


@pytest.mark.parametrize("L", [1, 2, 37])
@pytest.mark.parametrize("bias,carry", [(False, False), (True, True), (False, True)])
@pytest.mark.parametrize("Kf", [3, 4])  # 3: four tokens per pass (three_taps4); any other: one
def test_featurize_window(L, bias, carry, Kf):
    """The featurizer over L tokens against the reference, with windows shorter than the history."""
    B, D = 3, 24
    z, w, b = torch.randn(B, L, 3 * D), torch.randn(3 * D, Kf), (torch.randn(3 * D) if bias else None)
    state = torch.randn(B, Kf - 1, 3 * D) if carry else None
    ref_state = None if state is None else state.clone()
    with torch.inference_mode():
        got = featurize_cpu.hyena_featurize(z, w, b, state)
        want = K.hyena_featurize_ref(z, w, b, ref_state)
    for g, r in zip(got, want):
        _close(g, r)
    assert state is None or torch.equal(state, ref_state)


@pytest.mark.parametrize("L", [1, 5, 40, 263])  # 263: past one tile of fir_gate (256 tokens), not a multiple of 4
@pytest.mark.parametrize("G,Kh,skip,carry", [(20, 7, False, True), (4, 7, True, False), (5, 128, True, True),
                                             (2, 128, True, False)])
def test_fir_window(L, G, Kh, skip, carry):
    """The gated explicit filter (7 or 128 taps) over L tokens against the reference: grouped taps, skip
    term, history."""
    B, C = 2, 20
    x1v, x2, h = torch.randn(B, L, C), torch.randn(B, L, C), torch.randn(G, Kh)
    D = torch.randn(C) if skip else None
    state = torch.randn(B, Kh - 1, C) if carry else None
    ref_state = None if state is None else state.clone()
    with torch.inference_mode():
        _close(fir_cpu.hyena_fir(x1v, x2, h, D, state), K.hyena_fir_ref(x1v, x2, h, D, ref_state), rel=1e-5)
    assert state is None or torch.equal(state, ref_state)


@pytest.mark.parametrize("Kh", [7, 128])
def test_fir_window_rows_side_by_side_give_each_rows_bits(Kh):
    """The filter runs several batch rows side by side (up to 512 columns: here 2 rows of 200 channels
    per tile, then the fifth row alone): every row gets the bits it gets alone, and the reference's
    numbers."""
    B, L, C = 5, 37, 200
    x1v, x2, h, D = torch.randn(B, L, C), torch.randn(B, L, C), torch.randn(8, Kh), torch.randn(C)
    state = torch.randn(B, Kh - 1, C)
    rows = [state[i : i + 1].clone() for i in range(B)]
    ref_state = state.clone()
    with torch.inference_mode():
        together = fir_cpu.hyena_fir(x1v, x2, h, D, state)
        alone = torch.cat([fir_cpu.hyena_fir(x1v[i : i + 1], x2[i : i + 1], h, D, rows[i]) for i in range(B)])
        _close(together, K.hyena_fir_ref(x1v, x2, h, D, ref_state), rel=1e-5)
    assert torch.equal(together, alone) and torch.equal(state, torch.cat(rows)) and torch.equal(state, ref_state)


@pytest.mark.parametrize("skip,Kh,L", [(False, 7, 9), (True, 128, 9), (True, 128, 301), (False, 5, 301)])
def test_window_then_steps_equals_decoding_from_the_start(skip, Kh, L):
    """Featurizer + explicit filter over a window give the bits of the decoding step token after token
    (both sum the taps in a convolution's order), states included; 301 tokens span two of the filter's
    tiles and end inside a group of four tokens."""
    B, D = 2, 16
    z, w, b, h = torch.randn(B, L, 3 * D), torch.randn(3 * D, 3), torch.randn(3 * D), torch.randn(4, Kh)
    Dk = torch.randn(D) if skip else None
    fir, inner = torch.randn(B, 2, 3 * D), torch.randn(B, Kh - 1, D)
    fir2, inner2 = fir.clone(), inner.clone()
    with torch.inference_mode():
        x2, x1v = K.hyena_featurize(z, w, b, fir, backend="numba")
        window = K.hyena_fir(x1v, x2, h, Dk, inner, backend="numba")
        steps = torch.cat([K.hyena_step(z[:, t : t + 1].contiguous(), w, b, fir2, inner2, h=h, D=Dk, backend="numba")
                           for t in range(L)], 1)
    assert torch.equal(window, steps) and torch.equal(fir, fir2) and torch.equal(inner, inner2)


def _modal_case(B, L, C, S):
    lp, r = _modal_params(C, S, False)
    lp[:, 0] = -1e-4  # a mode that decays over 10,000 tokens: the hard case for a recurrence
    return torch.randn(B, L, C), torch.randn(B, L, C), lp, r, torch.randn(C), torch.randn(B, C, S)


def _modal_exact(x1v, x2, lp, r, D, state):
    """The modal filter as a float64 recurrence: (y [B, L, C], final state)."""
    s, p, r, D = state.double(), lp.double().exp(), r.double(), D.double()
    y = torch.empty(x1v.shape, dtype=torch.float64)
    for t in range(x1v.shape[1]):
        x = x1v[:, t].double()
        s = s * p + x[..., None]
        y[:, t] = ((s * r).sum(-1) + D * x) * x2[:, t].double()
    return y, s


@pytest.mark.parametrize("B,L", [(1, 1), (3, 50), (1, 3000)])
def test_modal_window_against_exact_arithmetic(B, L):
    """The recurrence (float64 inside a call) against float64 arithmetic, no less accurate than the
    reference's FFT; its state against the float64 state."""
    x1v, x2, lp, r, D, state = _modal_case(B, L, 12, 16)
    want, want_state = _modal_exact(x1v, x2, lp, r, D, state)
    ref_state = state.clone()
    with torch.inference_mode():
        got = modal_cpu.hyena_modal(x1v, x2, lp, r, D, state)
        ref = K.hyena_modal_ref(x1v, x2, lp, r, D, ref_state)
    scale = want.abs().max()
    err, ref_err = (got.double() - want).abs().max() / scale, (ref.double() - want).abs().max() / scale
    assert err <= max(ref_err, 1e-7) and err < 1e-6, (err, ref_err)
    assert (state.double() - want_state).abs().max() <= 1e-6 * want_state.abs().max()


def test_modal_window_without_state_and_split_into_calls():
    """No state is a zero state, left untouched; a sequence split into calls gives the numbers of one
    call (the state goes through float32 between calls)."""
    x1v, x2, lp, r, D, _ = _modal_case(2, 60, 8, 4)
    zero = torch.zeros(2, 8, 4)
    with torch.inference_mode():
        whole = modal_cpu.hyena_modal(x1v, x2, lp, r, D)
        assert torch.equal(whole, modal_cpu.hyena_modal(x1v, x2, lp, r, D, zero.clone()))
        parts = [modal_cpu.hyena_modal(x1v[:, a:b], x2[:, a:b], lp, r, D, zero) for a, b in ((0, 1), (1, 23), (23, 60))]
    _close(torch.cat(parts, 1), whole, rel=1e-6)


def test_window_kernels_take_strided_inputs_and_hand_over():
    """A strided input (a hook's output, a column slice) gives the bits of a contiguous one; complex
    poles (Evo 1) and bf16 inputs run the reference."""
    x1v, x2, lp, r, D, state = _modal_case(2, 30, 8, 4)
    strided = torch.cat([x2, x2], -1)[..., :8]
    with torch.inference_mode():
        assert torch.equal(modal_cpu.hyena_modal(x1v, strided, lp, r, D), modal_cpu.hyena_modal(x1v, x2, lp, r, D))
        h = torch.randn(8, 7)
        assert torch.equal(fir_cpu.hyena_fir(x1v, strided, h), fir_cpu.hyena_fir(x1v, x2, h))
        z = torch.randn(2, 30, 48)
        zs = torch.cat([z, z], -1)[..., :24]
        assert not zs.is_contiguous()
        w = torch.randn(24, 3)
        for g, want in zip(featurize_cpu.hyena_featurize(zs, w), featurize_cpu.hyena_featurize(zs.contiguous(), w)):
            assert torch.equal(g, want)
        clp, cr = _modal_params(8, 4, True)
        cstate = torch.randn(2, 8, 4, dtype=torch.complex64)
        c2 = cstate.clone()
        assert torch.equal(modal_cpu.hyena_modal(x1v, x2, clp, cr, D, cstate), K.hyena_modal_ref(x1v, x2, clp, cr, D, c2))
        b16 = x1v.bfloat16()
        assert torch.equal(modal_cpu.hyena_modal(b16, x2.bfloat16(), lp, r, D), K.hyena_modal_ref(b16, x2.bfloat16(), lp, r, D))


def test_window_kernels_split_over_threads_give_the_same_bits(monkeypatch):
    """With several torch threads a large window's channels are split among threads: every output
    and state is the bytes of one call (channels are independent, each summed in the same order)."""
    from evo_cli.kernels import _native

    monkeypatch.setattr(_native, "MIN_PART_WORK", 1)  # split even these small shapes
    pools = []
    monkeypatch.setattr(_native, "pool", lambda pool=_native.pool: pools.append(1) or pool())
    x1v, x2, lp, r, D, state = _modal_case(2, 33, 56, 4)
    z, w, b, h = torch.randn(2, 33, 3 * 56), torch.randn(3 * 56, 3), torch.randn(3 * 56), torch.randn(8, 128)
    fir, hist = torch.randn(2, 2, 3 * 56), torch.randn(2, 127, 56)

    def run():
        states = [state.clone(), fir.clone(), hist.clone()]
        outs = [modal_cpu.hyena_modal(x1v, x2, lp, r, D, states[0]), *featurize_cpu.hyena_featurize(z, w, b, states[1]),
                fir_cpu.hyena_fir(x1v, x2, h, D, states[2])]
        return outs + states

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run()
        torch.set_num_threads(3)  # 56 channels: ranges of 16, 16 and 24
        split = run()
    finally:
        torch.set_num_threads(threads)
    assert len(pools) == 3  # the second run split each of its three kernel calls, the first none
    assert all(torch.equal(a, b) for a, b in zip(one, split))


def test_shapes_the_kernels_cannot_take_go_to_the_reference():
    """The kernels have no bounds checks: a skip term of another length, or a decoding state of the
    wrong shape, runs the reference, which broadcasts or raises, instead of reading past an array."""
    x1v, x2, lp, r, _, state = _modal_case(2, 9, 8, 4)
    one = torch.randn(1)
    assert torch.equal(modal_cpu.hyena_modal(x1v, x2, lp, r, one), K.hyena_modal_ref(x1v, x2, lp, r, one))
    z, w, b, fir, inner_state, inner = _step_case("hcs", 2, 8, True)
    with pytest.raises(RuntimeError):
        step_cpu.hyena_step(z, w, b, fir, inner_state[:, :2].contiguous(), **inner)
    z, w, b, fir, inner_state, inner = _step_case("hcl", 2, 8, True)
    with pytest.raises(RuntimeError):
        step_cpu.hyena_step(z, w, b, fir, inner_state, **dict(inner, D=torch.randn(3)))


def test_a_forked_child_splits_windows_too(monkeypatch):
    """A process forked after the window kernels started their threads (a data loader, a launcher)
    gets threads of its own instead of waiting forever on its parent's."""
    import os
    import time

    from evo_cli.kernels import _native

    monkeypatch.setattr(_native, "MIN_PART_WORK", 1)
    x1v, x2, lp, r, D, _ = _modal_case(1, 20, 48, 4)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        want = modal_cpu.hyena_modal(x1v, x2, lp, r, D)  # the parent's pool now exists
        pid = os.fork()
        if pid == 0:  # the child: exit 0 only if a split call returns the parent's numbers
            torch.set_num_threads(2)  # torch resets a forked child to one thread
            split = []
            _native.pool = lambda pool=_native.pool: split.append(1) or pool()
            ok = torch.equal(modal_cpu.hyena_modal(x1v, x2, lp, r, D), want) and split == [1]
            os._exit(0 if ok else 1)
        for _ in range(600):  # 60 s at most: a child waiting on threads it does not have never exits
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.1)
        else:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung")
    finally:
        torch.set_num_threads(threads)
    assert os.waitstatus_to_exitcode(status) == 0


# torch's forward AD loads its decompositions through torch.jit.script, which warns in torch 2.13
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_forward_mode_derivatives_run_the_reference_ops():
    """Under forward-mode AD (a dual level open) the kernels, which have no derivatives, hand over to
    the reference ops: the tangents are the reference's, where the kernels would silently drop them."""
    import torch.autograd.forward_ad as fwAD

    B, L, C = 2, 12, 16
    x, w = torch.randn(B, L, C), _column_major(24, C)
    z, zw = torch.randn(B, L, 3 * C), torch.randn(3 * C, 3)
    h, cos, sin = torch.randn(4, 7), torch.rand(1, L, 1, 4), torch.rand(1, L, 1, 4)
    calls = {
        "linear, loop": lambda t: K.linear(t[:1, :3], w, backend="numba"),
        "linear, GEMM": lambda t: K.linear(t, w, backend="numba"),
        "featurize": lambda t: K.hyena_featurize(torch.cat([t, t, t], -1) * z, zw, backend="numba")[1],
        "fir": lambda t: K.hyena_fir(t, t, h, backend="numba"),
        "rotary": lambda t: K.rotate_halves(t.view(B, L, 2, 8), cos, sin, backend="numba"),
    }
    for name, fn in calls.items():
        with fwAD.dual_level():
            got = fwAD.unpack_dual(fn(fwAD.make_dual(x, torch.ones_like(x)))).tangent
            want = fwAD.unpack_dual(_reference(fn, fwAD.make_dual(x, torch.ones_like(x)))).tangent
        assert got is not None, name
        _close(got, want, rel=1e-5)


def _reference(fn, t):
    """``fn`` with the reference ops (a model's ``--kernels torch``)."""
    import evo_cli.kernels as kernels

    original = kernels.resolve_backend
    kernels.resolve_backend = lambda backend, device: "torch"
    try:
        return fn(t)
    finally:
        kernels.resolve_backend = original
