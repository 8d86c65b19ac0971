"""Matrix-vector products for decoding on a CPU, compiled by numba.

A decoding step multiplies every weight by one token's vector (a few with a batch), so it streams
the weights from memory once per token and does two FLOPs per weight read. MKL's GEMV reaches 9-17
GB/s on this project's CPUs depending on the weight's shape and layout; the loop below reaches 19-24
(benchmarks/README.md). It reads the weight column-major (its transpose [K, N] contiguous, as
``StripedHyena._cpu_gemv_layout`` stores it for decoding) and adds each input's column to all the
outputs at once: the loop over outputs vectorises with no reassociation, so every output is summed
in input order, with the same rounding in any compiled context and for any number of rows. Inputs
with more rows go to oneDNN's GEMM where torch has it (6-10% faster than ``F.linear``'s MKL GEMM on
one core, and a row's bits do not depend on the rows beside it); anything but float32 without
autograd goes to ``F.linear``.
"""

from __future__ import annotations

import torch

from .._numba import array, jit, ready, recording, vec
from .naive import linear_ref

# rows of x up to which the loop beats MKL
MAX_ROWS = 8
# weights up to this many elements (16 MiB of float32). Past it MKL's GEMV streams a column-major
# weight faster: the outputs outgrow L1 (one core, benchmarks/README.md: [11008, 4096] 20.2 GB/s
# against 14.7-15.1, [4096, 4096] 19.0-19.5 against 17.1-18.1; [1536, 512] 17.3 against 23.4-23.7)
MAX_ELEMS = 1 << 22


@jit
def gemv(wt, x, bias, out):
    """out[r] = sum_j x[r, j] wt[j] (+ bias): wt [K, N] (the weight's transpose); x [M, K]; bias [N] or
    [0] (none); out [M, N]; all float32."""
    K, N = wt.shape
    M = x.shape[0]
    for r in range(M):
        o = out[r]
        for i in range(N):
            o[i] = 0.0
    for j in range(K):
        w = wt[j]
        for r in range(M):
            xj = x[r, j]
            o = out[r]
            for i in range(N):
                o[i] += w[i] * xj
    if bias.shape[0]:
        for r in range(M):
            o = out[r]
            for i in range(N):
                o[i] += bias[i]


def _float32_rows(x, weight, bias) -> int:
    """The rows of the product if both kernels could take its operands (float32 CPU tensors, a 2-D weight
    [N, K] matching x [..., K], a bias [N] or None, no derivative to record), else 0."""
    K = x.shape[-1]
    if not (x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32 and K > 0 and weight.dim() == 2
            and K == weight.shape[1]
            and (bias is None or (bias.dtype == torch.float32 and bias.shape == weight.shape[:1]))
            and not recording((x, weight, bias))):
        return 0
    return x.numel() // K


def applies(x, weight, bias, rows: int | None = None) -> bool:
    """Whether ``linear`` runs the loop: float32 CPU tensors, a column-major weight of at most
    ``MAX_ELEMS`` elements, at most ``MAX_ROWS`` rows, and no derivative to record. ``rows``:
    ``_float32_rows(x, weight, bias)`` where the caller has it."""
    rows = _float32_rows(x, weight, bias) if rows is None else rows
    return 0 < rows <= MAX_ROWS and weight.t().is_contiguous() and weight.numel() <= MAX_ELEMS


# oneDNN's dense layer (the op torch.compile's CPU code calls), where this torch build has it: 6-10%
# more FLOP per second than F.linear's MKL GEMM on the models' shapes, one core
# (benchmarks/README.md, seventh round)
_ONEDNN = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None


def gemm_applies(x, weight, bias, rows: int | None = None) -> bool:
    """Whether ``linear`` runs oneDNN's GEMM: more than ``MAX_ROWS`` rows of float32 CPU tensors, a 2-D
    weight, and no derivative to record. Fewer rows with a weight too large for the loop (a 7B model's
    decoding) go to F.linear: MKL's matrix-vector product streams a column-major weight 2.5x faster
    than oneDNN's GEMM does for one row ([11008, 4096]: 9.4 against 23.4 ms, one core). Not where the
    user turned oneDNN off (``torch.backends.mkldnn.enabled = False``, torch's switch around a oneDNN
    problem on some build or CPU), which the op, called directly, would not check."""
    rows = _float32_rows(x, weight, bias) if rows is None else rows
    return _ONEDNN is not None and torch.backends.mkldnn.enabled and rows > MAX_ROWS


def linear(x, weight, bias=None):
    """x: [..., K]; weight: [N, K]; bias: [N] or None -> [..., N], as ``F.linear``: the loop for a few
    rows, oneDNN's GEMM for more."""
    rows = _float32_rows(x, weight, bias)  # once: its checks cost as much as a small product's call
    if not applies(x, weight, bias, rows):
        if gemm_applies(x, weight, bias, rows):
            # oneDNN reads a bias as if it were contiguous (a strided one gave wrong numbers); a strided x
            # is copied, not sent to F.linear, so that its rows get a contiguous one's bits
            return _ONEDNN(x.contiguous(), weight, None if bias is None else bias.contiguous(), "none", [], "")
        return linear_ref(x, weight, bias)
    N, K = weight.shape
    rows = x.reshape(-1, K).contiguous()
    out = torch.empty(rows.shape[0], N, dtype=torch.float32)
    args = (array(weight.t()), array(rows), vec(None if bias is None else bias.contiguous()), array(out))
    ready(gemv, args)
    gemv(*args)
    return out.view(*x.shape[:-1], N)
