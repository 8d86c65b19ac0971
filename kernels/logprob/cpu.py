"""Log-probabilities of given tokens on a CPU (``cpu.cpp``, compiled on first use by ``_native.py``):
one read of each position's logits, where ``log_softmax`` then ``gather`` writes and reads a
[positions, V] tensor (benchmarks/README.md, tenth round). The reference ops run where the kernel
cannot be built or the logits are not float32 CPU tensors without a derivative to record."""

from __future__ import annotations

import ctypes

import torch

from .. import _native
from .naive import token_logprobs_ref

_ARGS = [ctypes.c_void_p] * 3 + [ctypes.c_int64, ctypes.c_int] + [ctypes.c_int64] * 6


def token_logprobs(logits, tokens):
    """logits: [B, n, V]; tokens: [B, n] int64 -> [B, n] float32, as ``token_logprobs_ref``. Either may be
    strided (a slice of a longer run's logits or ids is not copied) but for the logits' last axis."""
    if not (logits.dim() == 3 and tokens.shape == logits.shape[:2] and tokens.dtype == torch.int64
            and logits.dtype == torch.float32 and logits.device.type == tokens.device.type == "cpu"
            and logits.shape[-1] > 0
            and not (torch.is_grad_enabled() and logits.requires_grad)):
        return token_logprobs_ref(logits, tokens)
    fn = _native.function("logprob", "token_logprobs", _ARGS, ctypes.c_int64)
    if fn is None:
        return token_logprobs_ref(logits, tokens)
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    B, n, V = logits.shape
    out = torch.empty(B, n, dtype=torch.float32)
    bad = []
    args = (logits.data_ptr(), tokens.data_ptr(), out.data_ptr(), n, V, logits.stride(0), logits.stride(1),
            tokens.stride(0), tokens.stride(1))
    _native.over_ranges(lambda lo, hi: bad.append(fn(*args, lo, hi)), B * n, B * n * V, torch.get_num_threads())
    if sum(bad):
        raise IndexError(f"token ids outside the vocabulary of {V}")
    return out
