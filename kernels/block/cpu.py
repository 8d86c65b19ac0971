"""One decoding step of a whole block on a CPU in one numba call: both norms, the matrix-vector
products (the loop of ``linear/cpu.py``), the Hyena step (``step/cpu.py``) or rotary attention over
the KV cache, the MLP's gate and both residual adds. Through the block's modules the same step is
about 60 PyTorch calls, whose fixed cost (about 130 us per block on this project's CPUs) is as much
as reading a 512-wide block's weights; benchmarks/README.md.

``hyena_block_step`` serves ``HyenaBlock.forward``; the ``bind_*`` functions bind a kernel to fixed
arrays once for ``model/cpu_decode.py``, so that a step costs no conversion or check at all."""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from .._numba import EMPTY, array, jit, ready, usable, vec
from ..linear.cpu import MAX_ELEMS, MAX_ROWS, gemv
from ..step.cpu import step_fir, step_modal
from .naive import hyena_block_step_ref

_ACT = {"identity": 0, "gelu": 1, "silu": 2}


@jit
def _dot(a, b):
    """sum_j a[j] b[j] of two 1-D float32 arrays as eight interleaved partial sums added in a fixed
    order: the same rounding however the compiler schedules it, and eight independent chains instead
    of one (no fast-math flags: see _numba.py)."""
    n = a.shape[0]
    m = n - n % 8
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = np.float32(0.0)
    for j in range(0, m, 8):
        s0 += a[j] * b[j]
        s1 += a[j + 1] * b[j + 1]
        s2 += a[j + 2] * b[j + 2]
        s3 += a[j + 3] * b[j + 3]
        s4 += a[j + 4] * b[j + 4]
        s5 += a[j + 5] * b[j + 5]
        s6 += a[j + 6] * b[j + 6]
        s7 += a[j + 7] * b[j + 7]
    s = ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
    for j in range(m, n):
        s += a[j] * b[j]
    return s


@jit
def _norm(x, scale, eps, out):
    """RMSNorm of each row of x [B, D] into out, as the reference: x / (||x|| / sqrt(D) + eps) * scale."""
    B, D = x.shape
    for r in range(B):
        d = np.float32(math.sqrt(_dot(x[r], x[r]))) * np.float32(D ** -0.5) + eps
        for j in range(D):
            out[r, j] = x[r, j] / d * scale[j]


@jit
def _mlp_residual(u, eps, post_scale, l1, l2, l3, act, out):
    """out = u + l3(act(l1 n) * l2 n), n = norm(u); u: [B, D]."""
    B, D = u.shape
    n = np.empty_like(u)
    _norm(u, post_scale, eps, n)
    a = np.empty((B, l1.shape[1]), dtype=np.float32)
    g = np.empty_like(a)
    gemv(l1, n, EMPTY, a)
    gemv(l2, n, EMPTY, g)
    for r in range(B):
        for i in range(a.shape[1]):
            v = a[r, i]
            if act == 1:
                v = np.float32(0.5) * v * (np.float32(1.0) + np.float32(math.erf(v * np.float32(0.7071067811865476))))
            elif act == 2:
                v = v / (np.float32(1.0) + np.float32(math.exp(-v)))
            a[r, i] = v * g[r, i]
    gemv(l3, a, EMPTY, out)
    for r in range(B):
        for j in range(D):
            out[r, j] += u[r, j]


@jit
def _mix_in(x, eps, pre_scale, proj_w, proj_b):
    B, D = x.shape
    n = np.empty_like(x)
    _norm(x, pre_scale, eps, n)
    z = np.empty((B, proj_w.shape[1]), dtype=np.float32)
    gemv(proj_w, n, proj_b, z)
    return z


@jit
def _mix_out(x, y, out_w, out_b):
    u = np.empty_like(x)
    gemv(out_w, y, out_b, u)
    u += x
    return u


@jit
def block_fir(x, eps, pre_scale, proj_w, proj_b, short_w, short_b, fir, h, Dskip, inner, out_w, out_b,
              post_scale, l1, l2, l3, act, out):
    """A Hyena-SE / -MR block; arrays as in ``hyena_block_step_ref`` with x, out [B, D]."""
    z = _mix_in(x, eps, pre_scale, proj_w, proj_b)
    y = np.empty_like(x)
    step_fir(z, short_w, short_b, fir, h, Dskip, inner, y)
    _mlp_residual(_mix_out(x, y, out_w, out_b), eps, post_scale, l1, l2, l3, act, out)


@jit
def block_modal(x, eps, pre_scale, proj_w, proj_b, short_w, short_b, fir, log_poles, residues, Dskip, inner,
                out_w, out_b, post_scale, l1, l2, l3, act, out):
    """A Hyena-LR / Evo 1 Hyena block (real or complex poles)."""
    z = _mix_in(x, eps, pre_scale, proj_w, proj_b)
    y = np.empty_like(x)
    step_modal(z, short_w, short_b, fir, log_poles, residues, Dskip, inner, y)
    _mlp_residual(_mix_out(x, y, out_w, out_b), eps, post_scale, l1, l2, l3, act, out)


@jit
def _rotate(v, c, sn):
    """GPT-NeoX rotary embedding of one head v [hd] in place: halves (v0, v1) -> (v0 c - v1 s, v0 s + v1 c)."""
    half = v.shape[0] // 2
    for j in range(half):
        a, b = v[j], v[half + j]
        v[j] = a * c[j] - b * sn[j]
        v[half + j] = a * sn[j] + b * c[j]


@jit
def attention_block(x, eps, pre_scale, wqkv, bqkv, inv_freq, scaling, pos_arr, kc, vc, H, out_w, out_b,
                    post_scale, l1, l2, l3, act, out):
    """An attention block for one token per row of x [B, D] at position ``pos_arr[0]``: its key and value
    go into the caches kc, vc [B, Hkv, T, hd], and each of the H heads attends over positions 0..pos
    (softmax in float32, scale 1/sqrt(hd); head h reads kv head h // (H / Hkv))."""
    B, D = x.shape
    Hkv, hd = kc.shape[1], kc.shape[3]
    pos = pos_arr[0]
    n = np.empty_like(x)
    _norm(x, pre_scale, eps, n)
    qkv = np.empty((B, wqkv.shape[1]), dtype=np.float32)
    gemv(wqkv, n, bqkv, qkv)
    half = hd // 2
    c = np.empty(half, dtype=np.float32)
    sn = np.empty(half, dtype=np.float32)
    t = np.float32(pos) / scaling
    for j in range(half):
        a = t * inv_freq[j]
        c[j] = math.cos(a)
        sn[j] = math.sin(a)
    o = np.empty((B, H * hd), dtype=np.float32)
    p = np.empty(pos + 1, dtype=np.float32)
    scale = np.float32(1.0 / math.sqrt(hd))
    rep = H // Hkv
    for b in range(B):
        for h in range(H):
            _rotate(qkv[b, h * hd : (h + 1) * hd], c, sn)
        for g in range(Hkv):
            k = qkv[b, (H + g) * hd : (H + g + 1) * hd]
            _rotate(k, c, sn)
            kc[b, g, pos, :] = k
            vc[b, g, pos, :] = qkv[b, (H + Hkv + g) * hd : (H + Hkv + g + 1) * hd]
        for h in range(H):
            g = h // rep
            q = qkv[b, h * hd : (h + 1) * hd]
            m = np.float32(-np.inf)
            for s in range(pos + 1):
                p[s] = _dot(q, kc[b, g, s]) * scale
                m = max(m, p[s])
            total = np.float32(0.0)
            for s in range(pos + 1):
                p[s] = math.exp(p[s] - m)
                total += p[s]
            oh = o[b, h * hd : (h + 1) * hd]
            oh[:] = 0.0
            for s in range(pos + 1):
                w = p[s] / total
                for j in range(hd):
                    oh[j] += w * vc[b, g, s, j]
    _mlp_residual(_mix_out(x, o, out_w, out_b), eps, post_scale, l1, l2, l3, act, out)


@jit
def head(x, eps, scale, weight, logits):
    """The final norm and the tied unembedding of x [B, D] into logits [B, V]."""
    n = np.empty_like(x)
    _norm(x, scale, eps, n)
    for r in range(x.shape[0]):
        for v in range(weight.shape[0]):
            logits[r, v] = _dot(weight[v], n[r])


# the weight matrices, which the kernels take transposed (column-major weights; see linear/cpu.py)
_MATRICES = ("proj_w", "out_w", "wqkv", "l1", "l2", "l3")


def _transposed(weights: dict) -> dict | None:
    """The weights with their matrices transposed, or None where a matrix is too large for the loop
    (``MAX_ELEMS``: MKL streams those faster, so the block runs its ops)."""
    if any(v.numel() > MAX_ELEMS for k, v in weights.items() if k in _MATRICES):
        return None
    return {k: v.t() if k in _MATRICES else v for k, v in weights.items()}


def _hyena_call(x, out, fir_state, inner_state, w):
    """(kernel, arguments) of a Hyena block step on x, out [B, D], or None where the kernel cannot run."""
    w = _transposed(w)
    if w is None:
        return None
    modal = w["h"] is None
    tensors = (x, out, fir_state, inner_state, *(v for k, v in w.items() if k not in ("eps", "activation")))
    if (x.shape[0] > MAX_ROWS or not usable(tensors, (inner_state, w["log_poles"], w["residues"]) if modal else ())
            or (modal and (w["D"] is None or not w["log_poles"].dtype == w["residues"].dtype == inner_state.dtype))
            or (not modal and x.shape[1] % w["h"].shape[0])  # groups must tile the channels
            or fir_state.shape != (x.shape[0], w["short_w"].shape[1] - 1, 3 * x.shape[1]) or out.shape != x.shape
            or inner_state.shape != ((x.shape[0], x.shape[1], w["log_poles"].shape[1]) if modal else
                                     (x.shape[0], w["h"].shape[1] - 1, x.shape[1]))):
        return None
    head_ = (array(x), np.float32(w["eps"]), array(w["pre_scale"]), array(w["proj_w"]), vec(w["proj_b"]),
             array(w["short_w"]), vec(w["short_b"]), array(fir_state))
    filt = (array(w["log_poles"]), array(w["residues"]), array(w["D"])) if modal else (array(w["h"]), vec(w["D"]))
    tail = (array(inner_state), array(w["out_w"]), vec(w["out_b"]), array(w["post_scale"]), array(w["l1"]),
            array(w["l2"]), array(w["l3"]), _ACT[w["activation"]], array(out))
    return (block_modal if modal else block_fir), head_ + filt + tail


def hyena_block_step(x, fir_state, inner_state, *, h=None, log_poles=None, residues=None, D=None, **weights):
    """As ``block/naive.py``. Runs here for up to ``MAX_ROWS`` float32 CPU tokens (complex64 modal state)
    with column-major weight matrices, contiguous vectors and states and no gradient to record;
    anything else runs the reference (with more tokens the matrix products are GEMMs, which MKL runs
    at the core's arithmetic rate)."""
    w = dict(weights, h=h, log_poles=log_poles, residues=residues, D=D)
    out = torch.empty(x.shape[0], x.shape[2], dtype=torch.float32)
    call = _hyena_call(x[:, 0], out, fir_state, inner_state, w)
    if call is None:
        return hyena_block_step_ref(x, fir_state, inner_state, **w)
    ready(*call)
    call[0](*call[1])
    return out[:, None]


def bind_hyena_block(x, out, fir_state, inner_state, *, h=None, log_poles=None, residues=None, D=None, **weights):
    """A function of no arguments that runs the block's step from x [B, D] into out [B, D] (out may be
    x) on these arrays, for a decoding loop that keeps them; None where the kernel cannot run."""
    call = _hyena_call(x, out, fir_state, inner_state, dict(weights, h=h, log_poles=log_poles, residues=residues, D=D))
    return None if call is None else _bound(*call)


def bind_attention_block(x, out, k_cache, v_cache, pos, *, eps, pre_scale, wqkv, bqkv, inv_freq, scaling, num_heads,
                         out_w, out_b, post_scale, l1, l2, l3, activation):
    """As ``bind_hyena_block`` for an attention block (``attention_block_step_ref``): the token's
    position is read from ``pos`` ([1] int64) at every call."""
    mats = _transposed(dict(wqkv=wqkv, out_w=out_w, l1=l1, l2=l2, l3=l3))
    if mats is None:
        return None
    wqkv, out_w, l1, l2, l3 = mats.values()
    tensors = (x, out, k_cache, v_cache, pre_scale, wqkv, bqkv, inv_freq, out_w, out_b, post_scale, l1, l2, l3)
    if (x.shape[0] > MAX_ROWS or not usable(tensors) or pos.dtype != torch.int64 or out.shape != x.shape
            or k_cache.shape != v_cache.shape or k_cache.shape[0] != x.shape[0]
            or wqkv.shape[1] != (num_heads + 2 * k_cache.shape[1]) * k_cache.shape[3]):
        return None
    return _bound(attention_block, (array(x), np.float32(eps), array(pre_scale), array(wqkv), vec(bqkv),
                                    array(inv_freq), np.float32(scaling), array(pos), array(k_cache), array(v_cache),
                                    num_heads, array(out_w), vec(out_b), array(post_scale), array(l1), array(l2),
                                    array(l3), _ACT[activation], array(out)))


def bind_head(x, logits, *, eps, scale, weight):
    """As ``bind_hyena_block`` for the final norm and the unembedding, x [B, D] -> logits [B, V]; the
    embedding ``weight`` [V, D] is row-major (the lookup reads its rows)."""
    if x.shape[0] > MAX_ROWS or not usable((x, logits, scale, weight)):
        return None
    return _bound(head, (array(x), np.float32(eps), array(scale), array(weight), array(logits)))


def _bound(kernel, args):
    ready(kernel, args)
    return functools.partial(kernel, *args)
