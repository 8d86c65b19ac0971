"""Functional ops of the StripedHyena runtime, installed as ``evo_cli.kernels``.

Model code calls only these functions. Each has a plain-PyTorch reference in ``<op>/naive.py`` (the
ground truth) and, where it pays, a Triton kernel in ``<op>/fused.py`` (GPUs) or a numba kernel in
``<op>/cpu.py`` (CPUs). ``backend`` picks one: ``"auto"`` uses Triton for CUDA tensors when Triton
imports, numba for CPU tensors when numba imports, and the naive op elsewhere; ``"triton"`` forces
the fused op (on CPU only under ``TRITON_INTERPRET=1``), ``"numba"`` the CPU kernels (naive ops
where an op has none), ``"torch"`` the naive op.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os

from .attention.naive import causal_attention_ref, rotate_halves_ref
from .block.naive import attention_block_step_ref, hyena_block_step_ref
from .featurize.naive import hyena_featurize_ref
from .fp8.gemm import mmaemu_available
from .fp8.naive import fp8_linear_ref, quantize_e4m3
from .fir.naive import causal_conv1d_ref, hyena_fir_ref
from .linear.naive import linear_ref
from .modal.naive import hyena_modal_ref, modal_conv_ref, modal_filter_ref
from .logprob.naive import token_logprobs_ref
from .norm.naive import rms_norm_ref
from .step.naive import hyena_step_ref

__all__ = [
    "BACKENDS",
    "attention_block_step_ref",
    "bind_decoding_steps",
    "FP8_MODES",
    "causal_attention",
    "add_rms_norm",
    "token_logprobs",
    "token_logprobs_ref",
    "causal_attention_ref",
    "causal_conv1d_ref",
    "fp8_linear",
    "fp8_linear_ref",
    "fp8_native_supported",
    "hyena_featurize",
    "hyena_featurize_ref",
    "hyena_fir",
    "hyena_fir_ref",
    "hyena_modal",
    "hyena_modal_ref",
    "hyena_block_step",
    "hyena_block_step_ref",
    "hyena_step",
    "hyena_step_ref",
    "linear",
    "linear_ref",
    "modal_conv_ref",
    "mmaemu_available",
    "modal_filter_ref",
    "numba_available",
    "quantize_e4m3",
    "resolve_backend",
    "rotate_halves",
    "rotate_halves_ref",
    "rms_norm",
    "rms_norm_ref",
    "triton_available",
]

BACKENDS = ("auto", "triton", "numba", "torch")
# how the FP8 input projections of Evo 2 1B/20B/40B run; resolved by evo_cli.runtime.resolve_fp8
FP8_MODES = ("auto", "emulate", "native", "off")
_FUSED = {}
_CPU = {}


@functools.cache
def triton_available() -> bool:
    """True when Triton imports (checked once per process)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def numba_available() -> bool:
    """True when numba imports (checked once per process; a numba too old or too new for the installed
    numpy fails here, and the CPU then runs the naive ops)."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, device) -> str:
    """The backend a call on ``device`` uses: ``"triton"``, ``"numba"`` or ``"torch"``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown kernel backend {backend!r} (choose from {', '.join(BACKENDS)})")
    kind = getattr(device, "type", device)
    if backend == "auto":
        if kind == "cuda":
            return "triton" if triton_available() else "torch"
        return "numba" if kind == "cpu" and numba_available() else "torch"
    if backend == "numba":
        if not numba_available():
            raise RuntimeError("--kernels numba needs the numba package: pip install \"evo-cli[cpu]\"")
        # the CPU kernels take CPU tensors only; a GPU runs the reference ops
        return "numba" if kind == "cpu" else "torch"
    if backend == "triton":
        if not triton_available():
            raise RuntimeError("--kernels triton needs the triton package, which is not installed")
        if getattr(device, "type", device) != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError("--kernels triton on CPU needs TRITON_INTERPRET=1 (slow; meant for tests)")
    return backend


def _fused(op: str):
    """The Triton implementation of ``op`` (module ``<op>/fused.py``), or None where there is none."""
    if op not in _FUSED:
        try:
            _FUSED[op] = importlib.import_module(f"{__name__}.{op}.fused")
        except ImportError:
            _FUSED[op] = None
    return _FUSED[op]


def _cpu(op: str):
    """The numba implementation of ``op`` (module ``<op>/cpu.py``), or None where there is none."""
    if op not in _CPU:
        name = f"{__name__}.{op}.cpu"
        try:
            _CPU[op] = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:  # the module exists and failed to import: say why
                raise
            _CPU[op] = None
    return _CPU[op]


def _pick(op: str, backend: str, x):
    resolved = resolve_backend(backend, x.device)
    if resolved == "numba":
        return _cpu(op)
    if resolved == "triton":
        mod = _fused(op)
        if mod is not None:
            return mod
        if backend == "triton":
            raise RuntimeError(f"no Triton kernel for {op} in this build")
    return None


def _on(x):
    """Triton launches on the current CUDA device's stream, so a kernel on ``x`` (say on cuda:1 while
    cuda:0 is current) runs with ``x``'s device made current."""
    if x.device.type == "cuda":
        import torch

        return torch.cuda.device(x.device)
    return contextlib.nullcontext()


def linear(x, weight, bias=None, *, backend="auto"):
    """x: [..., K] -> [..., N], ``F.linear``; on CPU numba's matrix-vector loop for decoding's few rows,
    oneDNN's GEMM for more (``linear/cpu.py``). A GPU runs ``F.linear`` under every backend (cuBLAS;
    there is no Triton kernel to force)."""
    if resolve_backend(backend, x.device) == "numba":
        return _cpu("linear").linear(x, weight, bias)
    return linear_ref(x, weight, bias)


def rms_norm(x, scale, eps, *, backend="auto"):
    """x: [..., D], scale: [D] -> [..., D] in x.dtype. See ``norm/naive.py``."""
    fused = _pick("norm", backend, x)
    if fused:
        with _on(x):
            return fused.rms_norm(x, scale, eps)
    return rms_norm_ref(x, scale, eps)


def add_rms_norm(x, residual, scale, eps, *, backend="auto"):
    """(u, y): u = x + residual, y = rms_norm(u); x, residual: [..., D]. With the CPU kernels one pass
    (``norm/cpu.py``)."""
    if resolve_backend(backend, x.device) == "numba":
        return _cpu("norm").add_rms_norm(x, residual, scale, eps)
    u = x + residual
    return u, rms_norm(u, scale, eps, backend=backend)


def token_logprobs(logits, tokens, *, backend="auto"):
    """logits: [B, n, V]; tokens: [B, n] -> [B, n] float32: ``log_softmax(logits)`` at each token. With
    the CPU kernels one read of the logits (``logprob/cpu.py``). See ``logprob/naive.py``."""
    if resolve_backend(backend, logits.device) == "numba":
        return _cpu("logprob").token_logprobs(logits, tokens)
    return token_logprobs_ref(logits, tokens)


def hyena_featurize(z, weight, bias=None, state=None, *, backend="auto"):
    """z: [B, L, 3D] -> (x2, x1v): [B, L, D]. See ``featurize/naive.py``."""
    fused = _pick("featurize", backend, z)
    if fused:
        with _on(z):
            return fused.hyena_featurize(z, weight, bias, state)
    return hyena_featurize_ref(z, weight, bias, state)


def hyena_fir(x1v, x2, h, D=None, state=None, *, backend="auto"):
    """Gated Hyena-SE / Hyena-MR filter, [B, L, C] -> [B, L, C]. See ``fir/naive.py``."""
    fused = _pick("fir", backend, x1v)
    if fused:
        with _on(x1v):
            return fused.hyena_fir(x1v, x2, h, D, state)
    return hyena_fir_ref(x1v, x2, h, D, state)


def hyena_modal(x1v, x2, log_poles, residues, D, state=None, *, backend="auto"):
    """Gated Hyena-LR / Evo 1 Hyena filter, [B, L, C] -> [B, L, C]. See ``modal/naive.py``."""
    fused = _pick("modal", backend, x1v)
    if fused:
        with _on(x1v):
            return fused.hyena_modal(x1v, x2, log_poles, residues, D, state)
    return hyena_modal_ref(x1v, x2, log_poles, residues, D, state)


def hyena_step(z, weight, bias, fir_state, inner_state, h=None, log_poles=None, residues=None, D=None, *,
               backend="auto"):
    """One decoding step of a whole Hyena operator, z: [B, 1, 3D] -> [B, 1, D]. See ``step/naive.py``."""
    fused = _pick("step", backend, z)
    if fused:
        with _on(z):
            return fused.hyena_step(z, weight, bias, fir_state, inner_state, h, log_poles, residues, D)
    return hyena_step_ref(z, weight, bias, fir_state, inner_state, h, log_poles, residues, D)


def hyena_block_step(x, fir_state, inner_state, *, backend="auto", **weights):
    """One decoding step of a whole Hyena block, x: [B, 1, D] -> [B, 1, D], in one numba call on CPU
    (the reference elsewhere: the block's own ops). See ``block/naive.py`` for the weights."""
    if resolve_backend(backend, x.device) == "numba":
        return _cpu("block").hyena_block_step(x, fir_state, inner_state, **weights)
    return hyena_block_step_ref(x, fir_state, inner_state, **weights)


def bind_decoding_steps():
    """The numba module that binds whole decoding steps to fixed arrays (``block/cpu.py``:
    ``bind_hyena_block``, ``bind_attention_block``, ``bind_head``), or None without numba. Each binder
    returns a function of no arguments, or None where its tensors cannot go to the kernel."""
    return _cpu("block") if numba_available() else None


def rotate_halves(x, cos, sin, *, backend="auto"):
    """GPT-NeoX rotary embedding of x [B, L, H, hd] at cos, sin [1, L, 1, hd / 2]. See
    ``attention/naive.py``; on CPU one numba pass (``rotary/cpu.py``). A GPU runs the reference under
    every backend (there is no Triton kernel to force)."""
    if resolve_backend(backend, x.device) == "numba":
        return _cpu("rotary").rotate_halves(x, cos, sin)
    return rotate_halves_ref(x, cos, sin)


def causal_attention(q, k, v, offset: int = 0, *, backend="auto"):
    """Causal softmax attention, q: [B, H, Lq, hd], k/v: [B, H, offset + Lq, hd] -> [B, H, Lq, hd].

    Query i sits at position ``offset + i``. With the CPU kernels (backend ``numba``) a chunk of more
    than one query runs the C++ kernel where it can be built (``attention/cpu.py``). Otherwise,
    without an offset, or off the CPU, this is torch's SDPA (flash / memory-efficient kernels,
    lower-right causal alignment); with an offset on CPU, where SDPA would build the dense mask, the
    CPU flash kernel runs on the cached and the new keys separately and the two halves are merged."""
    import torch.nn.functional as F

    Lq, Lk = q.shape[2], k.shape[2]
    if Lq == 1:
        return F.scaled_dot_product_attention(q, k, v)
    if q.device.type == "cpu" and resolve_backend(backend, q.device) == "numba":
        from .attention.cpu import native_attention

        o = native_attention(q, k, v, offset)
        if o is not None:
            return o
    if offset == 0:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if q.device.type != "cpu":
        from torch.nn.attention.bias import causal_lower_right

        return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(Lq, Lk))
    from .attention.cpu import causal_attention_cpu

    return causal_attention_cpu(q, k, v, offset)


def fp8_native_supported(device) -> bool:
    """True on GPUs whose FP8 GEMM is the one Evo 2 was trained with: compute capability 8.9 (Ada) or 9.x
    (Hopper). Others (Blackwell sm_100/sm_120 included) accumulate differently."""
    import torch

    if getattr(device, "type", device) != "cuda" or not torch.cuda.is_available():
        return False
    major, minor = torch.cuda.get_device_capability(device)
    return (major, minor) == (8, 9) or major == 9


def fp8_linear(x, weight_fp8, scale_input, scale_weight, bias=None, *, mode: str):
    """FP8 projection, x: [B, L, K] -> [B, L, N] in x.dtype; ``mode`` ``emulate`` (mmaemu, any device) or
    ``native`` (torch._scaled_mm). See ``fp8/naive.py`` and ``fp8/gemm.py``."""
    from .fp8.gemm import emulated_gemm, native_gemm

    if mode not in ("emulate", "native"):
        raise ValueError(f"fp8_linear runs 'emulate' or 'native', not {mode!r}")
    gemm = emulated_gemm if mode == "emulate" else native_gemm
    return fp8_linear_ref(x, weight_fp8, scale_input, scale_weight, bias, gemm)
