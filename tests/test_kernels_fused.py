"""Fused Triton ops against their plain-PyTorch references on random inputs.

Without a GPU these run under the Triton interpreter (conftest sets TRITON_INTERPRET=1), which costs
about a millisecond per op per program: shapes stay tiny, yet cross every tile boundary the GPU
configs have (lengths 1, 63, 129, 1000 against 64-row tiles and 16-token chunks; channel counts that
leave partial channel blocks; filter groups that straddle a channel block). With
``EVO_TEST_DEVICE=cuda`` on a GPU machine the same comparisons run with the compiled kernels.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from safetensors.torch import load_file  # noqa: E402

import evo_cli  # noqa: E402
from evo_cli import kernels as K  # noqa: E402
from evo_cli.kernels.featurize.fused import hyena_featurize  # noqa: E402
from evo_cli.kernels.fir.fused import hyena_fir, uses_toeplitz  # noqa: E402
from evo_cli.kernels.modal.fused import hyena_modal  # noqa: E402
from evo_cli.kernels.norm.fused import rms_norm  # noqa: E402
from evo_cli.kernels.step.fused import hyena_step  # noqa: E402

from .conftest import CONFORMANCE  # noqa: E402
from .test_kernels_naive import _inner_filter_case  # noqa: E402
from .test_kernels_naive import _modal_params as _cpu_modal_params  # noqa: E402

DEVICE = torch.device(os.environ.get("EVO_TEST_DEVICE", "cpu"))

# max error relative to the largest reference value: float32 rounding; bf16 allows a few last-place
# flips where fp32 sums in another order round x1v or y to the neighbouring bf16 value
TOL = {torch.float32: 1e-5, torch.bfloat16: 1.6e-2}
F32, BF16 = torch.float32, torch.bfloat16


@pytest.fixture(autouse=True)
def _seed_and_device():
    torch.manual_seed(42)
    with torch.device(DEVICE):
        yield


def _modal_params(C, S, complex_poles):
    with torch.device("cpu"):  # drawn from a CPU generator
        return tuple(t.to(DEVICE) for t in _cpu_modal_params(C, S, complex_poles))


def _vectors(case):
    return {k: t.to(DEVICE) for k, t in load_file(str(case / "vectors.safetensors")).items()}


def _close(out, ref, dtype=F32):
    assert out.shape == ref.shape and out.dtype == ref.dtype
    err = ((out.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1)).item()
    assert err <= TOL[dtype], f"relative max error {err:.3g} > {TOL[dtype]}"


def _act(B, L, C, dtype, layout):
    """[B, L, C] activations: contiguous, a transposed view (token stride 1), or a channel slice."""
    if layout == "transposed":
        return torch.randn(B, C, L).to(dtype).transpose(1, 2)
    if layout == "sliced":
        return torch.randn(B, L, C + 24).to(dtype)[..., 8 : 8 + C]
    return torch.randn(B, L, C).to(dtype)


def _clone(state):
    return None if state is None else state.clone()


@pytest.mark.parametrize("dtype,L,layout,with_state,bias", [
    pytest.param(F32, 129, "contiguous", False, True, id="fp32-L129-bias"),
    pytest.param(F32, 63, "transposed", True, False, id="fp32-L63-transposed-state"),
    pytest.param(F32, 1, "sliced", True, True, id="fp32-L1-sliced-state"),
    pytest.param(BF16, 1000, "contiguous", False, False, id="bf16-L1000"),
    pytest.param(BF16, 129, "sliced", True, True, id="bf16-L129-sliced-state"),
    pytest.param(BF16, 1, "transposed", True, False, id="bf16-L1-transposed-state"),
])
def test_featurize(dtype, L, layout, with_state, bias):
    D, B = 40 if L < 1000 else 16, 2 if L < 1000 else 1
    z = _act(B, L, 3 * D, dtype, layout)
    w, b = torch.randn(3 * D, 3), torch.randn(3 * D) if bias else None
    state = torch.randn(B, 2, 3 * D) if with_state else None
    ref_state = _clone(state)
    x2, x1v = hyena_featurize(z, w, b, state)
    r2, r1v = K.hyena_featurize_ref(z, w, b, ref_state)
    _close(x2, r2, dtype)
    _close(x1v, r1v, dtype)
    if with_state:
        assert torch.equal(state, ref_state)


# (channels, groups, taps): Hyena-SE, a per-channel 3-tap filter, Hyena-MR with 16 and 15 channels per
# group (7B-like, and 1B-like straddling a 32-channel block) on the Toeplitz kernel, and a 128-tap
# filter with 2 channels per group on the tap loop
FIR_SHAPES = {"se": (40, 8, 7), "k3": (24, 24, 3), "mr16": (32, 2, 128), "mr15": (30, 2, 128), "taps128": (8, 4, 128)}


@pytest.mark.parametrize("shape,dtype,L,layout,with_state", [
    pytest.param("se", F32, 129, "transposed", True, id="se-fp32-L129-transposed-state"),
    pytest.param("se", BF16, 1000, "contiguous", False, id="se-bf16-L1000"),
    pytest.param("se", BF16, 1, "sliced", True, id="se-bf16-L1-sliced-state"),
    pytest.param("k3", F32, 63, "sliced", False, id="k3-fp32-L63-sliced"),
    pytest.param("mr16", F32, 129, "sliced", True, id="mr16-fp32-L129-sliced-state"),
    pytest.param("mr16", BF16, 63, "transposed", False, id="mr16-bf16-L63-transposed"),
    pytest.param("mr16", F32, 1, "contiguous", True, id="mr16-fp32-L1-state"),
    pytest.param("mr15", BF16, 129, "contiguous", True, id="mr15-bf16-L129-state"),
    pytest.param("taps128", F32, 63, "transposed", True, id="taps128-fp32-L63-transposed-state"),
])
def test_fir(shape, dtype, L, layout, with_state):
    C, G, K_ = FIR_SHAPES[shape]
    B = 1 if L == 1000 else 2
    x1v, x2 = _act(B, L, C, dtype, layout), _act(B, L, C, dtype, "contiguous")
    h = torch.randn(G, K_)
    D = torch.randn(C) if K_ > 7 else None
    state = torch.randn(B, K_ - 1, C) if with_state else None
    ref_state = _clone(state)
    _close(hyena_fir(x1v, x2, h, D, state), K.hyena_fir_ref(x1v, x2, h, D, ref_state), dtype)
    if with_state:
        assert torch.equal(state, ref_state)


def test_fir_kernel_choice():
    """Published shapes: Hyena-MR of every Evo 2 model on tensor cores, Hyena-SE on the tap loop."""
    assert uses_toeplitz(4096, 256, 128) and uses_toeplitz(8192, 512, 128) and uses_toeplitz(1920, 128, 128)
    assert not uses_toeplitz(4096, 256, 7) and not uses_toeplitz(8, 4, 128)


@pytest.mark.parametrize("complex_poles,dtype,L,layout,with_state", [
    pytest.param(False, F32, 63, "transposed", False, id="real-fp32-L63-transposed"),
    pytest.param(False, F32, 1000, "contiguous", True, id="real-fp32-L1000-state"),
    pytest.param(False, BF16, 129, "sliced", True, id="real-bf16-L129-sliced-state"),
    pytest.param(False, BF16, 1, "contiguous", True, id="real-bf16-L1-state"),
    pytest.param(True, F32, 129, "sliced", True, id="complex-fp32-L129-sliced-state"),
    pytest.param(True, BF16, 63, "transposed", False, id="complex-bf16-L63-transposed"),
    pytest.param(True, F32, 1, "contiguous", True, id="complex-fp32-L1-state"),
])
def test_modal(complex_poles, dtype, L, layout, with_state):
    C, S = (16, 16) if L == 1000 else (40, 5)
    B = 1 if L == 1000 else 2
    lp, r = _modal_params(C, S, complex_poles)
    x1v, x2 = _act(B, L, C, dtype, layout), _act(B, L, C, dtype, "contiguous")
    D = torch.randn(C)
    state = None
    if with_state:
        state = torch.randn(B, C, S, dtype=torch.complex64) if complex_poles else torch.randn(B, C, S)
    ref_state = _clone(state)
    _close(hyena_modal(x1v, x2, lp, r, D, state), K.hyena_modal_ref(x1v, x2, lp, r, D, ref_state), dtype)
    if with_state:
        # the recurrence and the reference's FFT + decay sums round differently
        assert torch.allclose(state, ref_state, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op", ["featurize", "featurize_bias", "se", "mr16", "modal", "modal_complex"])
def test_chunks_continue_the_sequence(op):
    """Chunks of 1, 50, 1 and 77 tokens with a carried state equal one pass of the reference (gates 1)."""
    B, L, C = 2, 129, 32
    if op.startswith("featurize"):
        x, state = torch.randn(B, L, 3 * C), torch.zeros(B, 2, 3 * C)
        w, b = torch.randn(3 * C, 3), (torch.randn(3 * C) if op == "featurize_bias" else None)
        run = lambda a, s: torch.cat(hyena_featurize(a, w, b, s), -1)  # noqa: E731
        ref = torch.cat(K.hyena_featurize_ref(x, w, b), -1)
    elif op.startswith("modal"):
        complex_poles = op == "modal_complex"
        x = torch.randn(B, L, C)
        state = torch.zeros(B, C, 4, dtype=torch.complex64 if complex_poles else torch.float32)
        lp, r = _modal_params(C, 4, complex_poles)
        D = torch.randn(C)
        run = lambda a, s: hyena_modal(a, torch.ones_like(a), lp, r, D, s)  # noqa: E731
        ref = K.hyena_modal_ref(x, torch.ones_like(x), lp, r, D)
    else:
        _, G, K_ = FIR_SHAPES[op]
        x, state = torch.randn(B, L, C), torch.zeros(B, K_ - 1, C)
        h, D = torch.randn(G, K_), torch.randn(C)
        run = lambda a, s: hyena_fir(a, torch.ones_like(a), h, D, s)  # noqa: E731
        ref = K.hyena_fir_ref(x, torch.ones_like(x), h, D)
    pieces, start = [], 0
    for n in (1, 50, 1, 77):
        pieces.append(run(x[:, start : start + n], state))
        start += n
    _close(torch.cat(pieces, 1), ref)


@pytest.mark.parametrize("inner", ["se", "mr", "modal", "modal_complex"])
@pytest.mark.parametrize("P", [1, 2, 6])
def test_prefill_then_steps_equal_one_pass(inner, P):
    """A prompt of P tokens through the fused window kernels, then three fused decoding steps, equal
    the reference over all P + 3 tokens at once: the states the window kernels leave are the ones the
    step kernel reads, also for prompts shorter than the featurizer's or the filter's history (the
    references' decoding is wrong under 6 tokens; every length is checked on whole models in
    test_decode.py)."""
    B, C, L = 2, 32, P + 3
    z = torch.randn(B, L, 3 * C)
    w, b = torch.randn(3 * C, 3), (torch.randn(3 * C) if inner == "modal_complex" else None)
    fir = torch.zeros(B, 2, 3 * C)
    if inner in ("se", "mr"):
        h = torch.randn(8, 7) if inner == "se" else torch.randn(2, 128)
        D = torch.randn(C) if inner == "mr" else None
        filt, state = dict(h=h, D=D), torch.zeros(B, h.shape[1] - 1, C)
        window = lambda x1v, x2: hyena_fir(x1v, x2, h, D, state)  # noqa: E731
        ref = lambda x1v, x2: K.hyena_fir_ref(x1v, x2, h, D)  # noqa: E731
    else:
        lp, r = _modal_params(C, 4, inner == "modal_complex")
        D = torch.randn(C)
        filt = dict(log_poles=lp, residues=r, D=D)
        state = torch.zeros(B, C, 4, dtype=lp.dtype)
        window = lambda x1v, x2: hyena_modal(x1v, x2, lp, r, D, state)  # noqa: E731
        ref = lambda x1v, x2: K.hyena_modal_ref(x1v, x2, lp, r, D)  # noqa: E731
    want = ref(*reversed(K.hyena_featurize_ref(z, w, b)))
    x2, x1v = hyena_featurize(z[:, :P], w, b, fir)
    got = [window(x1v, x2)] + [hyena_step(z[:, t : t + 1], w, b, fir, state, **filt) for t in range(P, L)]
    _close(torch.cat(got, 1), want)


@pytest.mark.parametrize("kind", ["hcs", "hcm", "hcl", "hyena"])
@pytest.mark.parametrize("dtype", [F32, BF16])
def test_step(kind, dtype):
    """One fused decoding step equals featurize + inner filter: output and both states.

    The featurizer's inputs are small integers and quarter-integer taps, so its sums are exact in any
    order and both paths round x1v to bf16 identically; otherwise one rounding flip of x1v moves a bf16
    output by several of its last places."""
    B, C = 2, 40
    quarters = lambda *shape: torch.randint(-4, 5, shape) / 4  # noqa: E731
    z = torch.randint(-4, 5, (B, 1, 3 * C + 24)).to(dtype)[..., 8 : 8 + 3 * C]
    w = quarters(3 * C, 3)
    b = quarters(3 * C) if kind == "hyena" else None
    fir = torch.randint(-4, 5, (B, 2, 3 * C)).float()
    inner, state = _inner_filter_case(kind, B, C, {"hcs": 8, "hcm": 10}, 5, _modal_params)
    ref_fir, ref_state = fir.clone(), state.clone()
    _close(hyena_step(z, w, b, fir, state, **inner), K.hyena_step_ref(z, w, b, ref_fir, ref_state, **inner), dtype)
    assert torch.equal(fir, ref_fir)
    assert torch.allclose(state, ref_state, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype,shape", [(F32, (3, 70, 48)), (BF16, (3, 70, 48)), (F32, (2, 5, 1000))])
def test_rms_norm(dtype, shape):
    """Strided rows (every third token); narrow rows share a program, a 1000-wide row is masked to 1024."""
    x = torch.randn(shape).to(dtype)[:, ::3]
    scale = torch.randn(shape[-1])
    _close(rms_norm(x, scale, 1e-2), K.rms_norm_ref(x, scale, 1e-2), dtype)


def test_one_autotune_config_under_the_interpreter():
    from evo_cli.kernels.fir.fused import fir_taps_fwd_kernel, fir_toeplitz_fwd_kernel
    from evo_cli.kernels.modal.fused import modal_fwd_kernel

    assert [len(k.configs) for k in (fir_taps_fwd_kernel, fir_toeplitz_fwd_kernel, modal_fwd_kernel)] == [1, 1, 1]


def test_autotuning_is_per_size_class():
    """The window kernels tune once per power-of-two class of tokens (the modal kernel: of rows and of
    length), not once for the first shape they see; every class is a multiple of 16 (one specialisation)."""
    from evo_cli.kernels._triton import size_class
    from evo_cli.kernels.featurize.fused import featurize_fwd_kernel
    from evo_cli.kernels.fir.fused import fir_taps_fwd_kernel, fir_toeplitz_fwd_kernel
    from evo_cli.kernels.modal.fused import modal_fwd_kernel

    assert [size_class(n) for n in (0, 1, 16, 17, 1000, 131072)] == [16, 16, 16, 32, 1024, 131072]
    for kernel in (featurize_fwd_kernel, fir_taps_fwd_kernel, fir_toeplitz_fwd_kernel):
        assert "TOKENS" in kernel.keys
    assert {"ROWS", "LENGTH"} <= set(modal_fwd_kernel.keys)


def test_dispatch_uses_the_fused_op(monkeypatch):
    """backend="triton" runs ``<op>/fused.py`` on CPU tensors under the interpreter; "torch" never does."""
    import evo_cli.kernels.norm.fused as fused

    calls = []
    monkeypatch.setattr(fused, "rms_norm", lambda *a: calls.append(a) or K.rms_norm_ref(*a))
    x = torch.randn(2, 8)
    K.rms_norm(x, torch.ones(8), 1e-6, backend="triton")
    K.rms_norm(x, torch.ones(8), 1e-6, backend="torch")
    K.rms_norm(x, torch.ones(8), 1e-6, backend="auto")
    assert len(calls) == 1


def test_backend_choice(monkeypatch):
    """load_model(kernels=...) wins over EVO_KERNELS, which wins over auto; every op-calling layer follows."""
    case = CONFORMANCE / "evo2" / "tiny_a"
    assert K.resolve_backend("triton", torch.device("cpu")) == "triton"  # the interpreter is on in tests
    monkeypatch.setenv("EVO_KERNELS", "triton")
    model = evo_cli.load_model(case, device="cpu", dtype="float32")
    assert {m.backend for m in model.modules() if hasattr(m, "backend")} == {"triton"}
    model = evo_cli.load_model(case, device="cpu", dtype="float32", kernels="torch")
    assert {m.backend for m in model.modules() if hasattr(m, "backend")} == {"torch"}
    monkeypatch.delenv("EVO_KERNELS")
    assert evo_cli.load_model(case, device="cpu", dtype="float32").kernels == "auto"


def test_conformance_evo2_with_triton_kernels():
    """tiny_a with every Hyena op fused: a prefill in two chunks matches the reference logits, and
    two recurrent steps after the prompt match the reference's cached generation."""
    case = CONFORMANCE / "evo2" / "tiny_a"
    model = evo_cli.load_model(case, device=DEVICE, dtype="float32", kernels="triton")
    v = _vectors(case)
    ids, n_prompt = v["input_ids"][:, :130], v["prompt_ids"].shape[1]
    assert torch.equal(ids[:, :n_prompt], v["prompt_ids"])
    with torch.no_grad():
        state = model.new_state(2, 130)
        first = model(ids[:, :n_prompt], state)
        fork = state.clone()
        logits = torch.cat([first, model(ids[:, n_prompt:], state)], 1)
        steps = [first[:, -1]] + [model(v["generated_ids"][:, i : i + 1], fork)[:, 0] for i in range(2)]
    assert (logits - v["logits"][:, :130]).abs().max().item() < 1e-4
    assert (torch.stack(steps, 1) - v["generation_logits"][:, :3]).abs().max().item() < 1e-4


def test_conformance_evo1_with_triton_kernels():
    """Evo 1 (featurizer bias, complex poles) fused: logits of a prefix, and one recurrent step."""
    case = CONFORMANCE / "evo1" / "c2_131k_style_L192"
    model = evo_cli.load_model(case, device=DEVICE, dtype="float32", kernels="triton")
    v = _vectors(case)
    prompt = v["prompt_ids"]
    with torch.no_grad():
        logits = model(v["input_ids"][:, :64])
        state = model.new_state(2, prompt.shape[1] + 1)
        steps = [model(prompt, state)[:, -1], model(v["generated_ids"][:, :1], state)[:, 0]]
    assert (logits - v["logits"][:, :64]).abs().max().item() < 1e-4
    assert (torch.stack(steps, 1) - v["generated_step_logits"][:, :2]).abs().max().item() < 1e-4


def test_offsets_past_2_31_elements():
    """Every fused op reads inputs whose rows or channels lie 2^31 elements or more from their base
    (real sizes: 1M tokens x 12,288 projection channels) without an int32 wrap: ``far_offsets.py``, in
    a child process because a wrapped address ends it with a segmentation fault (see its docstring)."""
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-m", "tests.far_offsets"], cwd=root, capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert out.returncode == 0, f"exit status {out.returncode}\n{out.stdout}\n{out.stderr[-2000:]}"
    assert out.stdout.count("relative error") == 9
