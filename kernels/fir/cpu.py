"""Gated Hyena-SE / Hyena-MR filter on a CPU for any number of tokens: for long filters (Hyena-MR) the
C++ kernel (``cpu.cpp``) where it can be built, else numba's loop below:
``y = (causal_conv(x1v, h) + D * x1v) * x2`` in one pass, where the reference makes one pass per tap
(Hyena-SE) or a convolution call with transposed copies (Hyena-MR), then the skip term and the gate.
For Hyena-MR's 128 taps the kernel is 2.2x faster than the convolution call on the quick start's
[4, 256, 128] windows and 4x at [1, 2048, 512] (benchmarks/README.md, eighth round); one path for
every size keeps a sequence's numbers independent of how it is batched.
Each output sums its taps in the order of the decoding step (``step/cpu.py``), so a prefill continued
by decoding gives the numbers of one call. ``causal_taps`` (a token at a time, in the same order)
and ``push_history`` serve the featurizer (``featurize/cpu.py``)."""

from __future__ import annotations

import ctypes

import numpy as np
import torch

from .. import _native
from .._numba import NO_STATE, array, jit, over_channels, usable, vec
from .naive import hyena_fir_ref


@jit
def taps_by_channel(h, C):
    """h: [G, K] grouped taps (channel c uses row c // (C // G)) -> [K, C] float32, one row per tap:
    the inner loops then run over contiguous channels."""
    G, K = h.shape
    per = C // G
    out = np.empty((K, C), dtype=np.float32)
    for c in range(C):
        for k in range(K):
            out[k, c] = h[c // per, k]
    return out


# The kernels below take a channel range lo..hi-1 (``_numba.over_channels``) and loop over it with
# unsigned indices: numba would otherwise guard each index against wrapping around from the end of
# the array, which keeps the loop from vectorising (8x slower).


@jit
def causal_taps(x, wt, state, carry, b, t, lo, hi, out):
    """out[lo:hi] <- ``sum_k wt[k] * x[b, t - (K-1-k)]`` over channels lo..hi-1 (wt: [K, C], current
    token last), oldest token first as a convolution sums (and the decoding step, ``step/cpu.py``).
    Inputs before the sequence's start are ``state[b]`` ([B, K-1, C]) when ``carry``, else zero."""
    K = wt.shape[0]
    ulo, uhi = np.uint64(lo), np.uint64(hi)
    for c in range(ulo, uhi):
        out[c] = np.float32(0.0)
    for k in range(K):
        src = t - (K - 1 - k)
        if src >= 0:
            row = x[b, src]
        elif carry:
            row = state[b, state.shape[1] + src]
        else:
            continue
        for c in range(ulo, uhi):
            out[c] += row[c] * wt[k, c]


@jit
def push_history(x, state, lo, hi):
    """state[:, :, lo:hi] ([B, K-1, C]) <- the last K-1 rows of ``[state, x]`` (x: [B, L, C]), for the
    next call."""
    B, L = x.shape[0], x.shape[1]
    K1 = state.shape[1]
    ulo, uhi = np.uint64(lo), np.uint64(hi)
    for b in range(B):
        for i in range(K1):  # reads row L + i of [state, x]: at or after the row it writes
            src = L + i - K1
            row = x[b, src] if src >= 0 else state[b, K1 + src]
            for c in range(ulo, uhi):
                state[b, i, c] = row[c]


# tokens per tile of ``fir_gate``: its copy of the tile and the K-1 rows before it is about 1.5 rows per
# token for Hyena-MR, small next to the 128 taps each row takes part in
_TILE = 256


@jit
def _four_taps(s, r0, r1, r2, r3, w0, w1, w2, w3):
    """``s`` plus four taps' products, added in order (oldest first)."""
    s += r0 * w0
    s += r1 * w1
    s += r2 * w2
    s += r3 * w3
    return s


@jit
def taps4(ext, wt, t0, acc, lo, hi):
    """acc[j, lo:hi] <- ``sum_k wt[k] * ext[t0 + j + k]`` for the four tokens j = 0..3 (wt: [K, C],
    current token last), each output's taps added oldest first as ``causal_taps`` adds them, so the
    bits are the same. Four tokens and four taps per pass over the channels keep the partial sums in
    registers: each tap's row and weights are loaded once for four outputs, where a pass per tap and
    token loads and stores its sum every time (1.4-2.3x faster for Hyena-MR's 128 taps). The rows
    come from one array: read from the input and the state directly, the loop did not vectorise."""
    K = wt.shape[0]
    ulo, uhi = np.uint64(lo), np.uint64(hi)
    a0, a1, a2, a3 = acc[0], acc[1], acc[2], acc[3]
    for c in range(ulo, uhi):
        a0[c] = np.float32(0.0)
        a1[c] = np.float32(0.0)
        a2[c] = np.float32(0.0)
        a3[c] = np.float32(0.0)
    k = 0
    while k + 4 <= K:
        e0, e1, e2, e3 = ext[t0 + k], ext[t0 + k + 1], ext[t0 + k + 2], ext[t0 + k + 3]
        e4, e5, e6 = ext[t0 + k + 4], ext[t0 + k + 5], ext[t0 + k + 6]
        v0, v1, v2, v3 = wt[k], wt[k + 1], wt[k + 2], wt[k + 3]
        for c in range(ulo, uhi):
            w0, w1, w2, w3 = v0[c], v1[c], v2[c], v3[c]
            r0, r1, r2, r3, r4, r5, r6 = e0[c], e1[c], e2[c], e3[c], e4[c], e5[c], e6[c]
            a0[c] = _four_taps(a0[c], r0, r1, r2, r3, w0, w1, w2, w3)
            a1[c] = _four_taps(a1[c], r1, r2, r3, r4, w0, w1, w2, w3)
            a2[c] = _four_taps(a2[c], r2, r3, r4, r5, w0, w1, w2, w3)
            a3[c] = _four_taps(a3[c], r3, r4, r5, r6, w0, w1, w2, w3)
        k += 4
    while k < K:  # the taps left over, one per pass
        e0, e1, e2, e3 = ext[t0 + k], ext[t0 + k + 1], ext[t0 + k + 2], ext[t0 + k + 3]
        v0 = wt[k]
        for c in range(ulo, uhi):
            w0 = v0[c]
            a0[c] += e0[c] * w0
            a1[c] += e1[c] * w0
            a2[c] += e2[c] * w0
            a3[c] += e3[c] * w0
        k += 1


# columns of ``fir_gate``'s tile: a channel range narrower than this takes as many batch rows side by
# side as fit (a wider one takes one row). A pass of ``taps4`` over 128 channels spends about as long
# starting as working; over 512 (four rows of evo-demo) the filter runs 1.2x faster, and the tile (0.8 MB
# for 128 taps) still fits in a 1 MB L2, where 1,024 columns made it 2x slower (benchmarks/README.md,
# eighth round)
_COLUMNS = 512


@jit
def history_tile(x, state, carry, b0, nb, start, n, ext, lo, hi):
    """ext[:K-1+n+3, g*W : (g+1)*W] (W = hi - lo) <- channels lo..hi-1 of rows start-(K-1) .. start+n-1
    of ``[state[b], x[b]]`` for the ``nb`` batch rows b = b0 + g side by side (zeros before the sequence
    without ``carry``), then three rows of zeros (``taps4`` reads four tokens at a time)."""
    K1 = ext.shape[0] - _TILE - 3
    ulo, uhi, uW = np.uint64(lo), np.uint64(hi), np.uint64(hi - lo)
    for i in range(K1 + n + 3):
        src = start - K1 + i
        row = ext[i]
        for g in range(nb):
            off = np.uint64(g) * uW  # channel c goes to column off + c - lo
            if src >= n + start or (src < 0 and not carry):
                for c in range(ulo, uhi):
                    row[off + c - ulo] = np.float32(0.0)
            else:
                xr = x[b0 + g, src] if src >= 0 else state[b0 + g, K1 + src]
                for c in range(ulo, uhi):
                    row[off + c - ulo] = xr[c]


@jit
def fir_gate(x1v, x2, h, Dskip, state, carry, y, lo, hi):
    """Channels lo..hi-1 of: x1v, x2, y [B, L, C]; h: [G, K] taps (current token last); Dskip: [C]
    or [0]; state: [B, K-1, C] history of x1v, read and moved on when ``carry``. A range narrower than
    ``_COLUMNS`` runs the channels of several batch rows side by side in one pass (each output's sum is
    the same)."""
    B, L, C = x1v.shape
    K = h.shape[1]
    W = hi - lo
    per = max(1, min(B, _COLUMNS // W))  # batch rows per tile
    wc = taps_by_channel(h, C)
    wt = np.empty((K, per * W), dtype=np.float32)
    for k in range(K):
        for g in range(per):
            wt[k, g * W : (g + 1) * W] = wc[k, lo:hi]
    ext = np.empty((K - 1 + _TILE + 3, per * W), dtype=np.float32)
    acc = np.empty((4, per * W), dtype=np.float32)
    ulo, uhi, uW = np.uint64(lo), np.uint64(hi), np.uint64(W)
    for b0 in range(0, B, per):
        nb = min(per, B - b0)
        for start in range(0, L, _TILE):
            n = min(_TILE, L - start)
            history_tile(x1v, state, carry, b0, nb, start, n, ext, lo, hi)
            for t0 in range(0, n, 4):
                taps4(ext, wt, t0, acc, 0, nb * W)
                for j in range(min(4, n - t0)):
                    t = start + t0 + j
                    a = acc[j]
                    for g in range(nb):
                        off = np.uint64(g) * uW  # channel c's sum is in column off + c - lo
                        xr, gr, yr = x1v[b0 + g, t], x2[b0 + g, t], y[b0 + g, t]
                        for c in range(ulo, uhi):
                            v = a[off + c - ulo] + Dskip[c] * xr[c] if Dskip.shape[0] else a[off + c - ulo]
                            yr[c] = v * gr[c]
    if carry:
        push_history(x1v, state, lo, hi)


def hyena_fir(x1v, x2, h, D=None, state=None):
    """As ``naive.hyena_fir_ref``: x1v, x2 [B, L, C] -> y [B, L, C]; state [B, K-1, C] updated in place.
    float32 CPU tensors with no gradient to record run here (weights and state contiguous); anything
    else runs the reference."""
    B, L, C = x1v.shape
    G, K = h.shape[0], h.shape[-1]
    x1v, x2 = x1v.contiguous(), x2.contiguous()  # strided inputs get the numbers of contiguous ones
    if (not usable((x1v, x2, h, D, state)) or h.dim() != 2 or x2.shape != x1v.shape
            or C % G  # groups must tile the channels (the reference raises)
            or (D is not None and D.shape != (C,)) or (state is not None and state.shape != (B, K - 1, C))):
        return hyena_fir_ref(x1v, x2, h, D, state)
    y = torch.empty_like(x1v)
    # the C++ kernel (``cpu.cpp``: the same bits as the loop above) where it can be built
    fn = _native.function("fir", "fir_gate", _ARGS, ctypes.c_int) if K >= NATIVE_MIN_TAPS else None
    if fn is not None:
        # each channel's taps as one [C] row per tap; the channels in blocks of 16 among the threads
        wt = h.repeat_interleave(C // G, dim=0).t().contiguous()
        args = (x1v.data_ptr(), x2.data_ptr(), wt.data_ptr(), None if D is None else D.data_ptr(),
                None if state is None else state.data_ptr(), y.data_ptr(), B, L, C, K)

        def run(lo: int, hi: int) -> None:
            if fn(*args, lo, hi) != 0:
                raise MemoryError(f"no memory for the filter's buffers ({K} taps)")

        _native.over_ranges(run, (C + 15) // 16, x1v.numel() * K, torch.get_num_threads())
        return y
    carry = state is not None
    args = (array(x1v), array(x2), array(h), vec(D),
            array(state) if carry else NO_STATE, carry, array(y))
    over_channels(fir_gate, args, C, x1v.numel() * K)
    return y


# taps from which the C++ kernel (``cpu.cpp``) runs: 1.3x faster than ``fir_gate`` for Hyena-MR's 128 on
# the quick start's [4, 256, 128] windows, 1.4x slower for Hyena-SE's 7 (benchmarks/README.md, tenth round)
NATIVE_MIN_TAPS = 32
_ARGS = [ctypes.c_void_p] * 6 + [ctypes.c_int64] * 6
