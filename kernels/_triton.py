"""Pieces shared by the fused ops: interpreter-safe autotuning, dot precision and FIR history updates.

Kernels follow three rules so that they run unchanged on GPUs and under ``TRITON_INTERPRET=1`` on CPU:
every load is upcast to float32 and every sum accumulates in float32 (the interpreter returns garbage
for bf16 arithmetic); no block pointers or libdevice (both fail there); ``autotune`` below keeps one
config under the interpreter, where benchmarking configs needs a driver it does not have.
"""

from __future__ import annotations

import inspect
import os

import torch
import triton


def interpreting() -> bool:
    """True when Triton runs kernels on CPU tensors through its interpreter."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def autotune(configs, key, **kwargs):
    """``triton.autotune`` over ``configs``; only the first one under the interpreter, so the first
    should be a sound GPU config that also keeps the interpreter's program count low.

    Results are cached on disk where this Triton supports it, so a tuned shape is not re-tuned on the
    next run of the CLI.
    """
    if interpreting():
        configs = configs[:1]
    if "cache_results" in inspect.signature(triton.autotune).parameters:
        kwargs.setdefault("cache_results", True)
    return triton.autotune(configs=configs, key=key, **kwargs)


def size_class(n: int) -> int:
    """``n`` rounded up to a power of two, at least 16: an autotune key (a kernel argument the kernel
    does not read) that retunes once per size class instead of once per shape, or never (a config tuned
    on a 1-token call would serve a 131,072-token one). At least 16, so that every value is a multiple of
    16 and Triton compiles one specialisation for all of them."""
    return max(16, 1 << (max(n, 1) - 1).bit_length())


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot`` input precision for activations of ``dtype``: TF32 tensor cores hold bf16 / fp16
    values exactly and round fp32 filters to ~5e-4, below what a bf16 output keeps; float32
    activations get the three-pass TF32 split, accurate to float32 rounding."""
    return "tf32x3" if dtype == torch.float32 else "tf32"


def push_history(state, x) -> None:
    """Overwrite a FIR history ``state`` [B, K-1, C] (float32) with the last K-1 rows of
    ``cat(state, x)`` for new inputs ``x`` [B, L, C]: what the next chunk sees before its first token."""
    k1, L = state.shape[1], x.shape[1]
    if k1 == 0:
        return
    if L >= k1:
        state.copy_(x[:, L - k1 :])
    else:
        state.copy_(torch.cat([state[:, L:], x.to(state.dtype)], dim=1))


def placeholder(device) -> torch.Tensor:
    """A one-element float32 tensor passed for an absent optional argument (its kernel flag is off)."""
    return torch.empty(1, device=device, dtype=torch.float32)
