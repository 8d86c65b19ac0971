"""FP8 input projections as Transformer Engine computes them in Evo 2 (E4M3 operands, tensor-wise scales).

The arithmetic of the GEMM itself is the one thing that differs between the implementations: Hopper's
FP8 tensor cores with fast accumulation add the products in blocks aligned to the block's largest
exponent and truncate, which IEEE fp32 does not reproduce. ``fp8_linear_ref`` holds everything around
the GEMM (quantisation, padding, grouping of rows) in plain PyTorch and takes the GEMM as an argument
(``gemm.py``: mmaemu's emulation or ``torch._scaled_mm``).
"""

from __future__ import annotations

import torch

E4M3_MAX = 448.0
# Transformer Engine pads the rows of an FP8 GEMM to a multiple of 16 (vortex pads each sequence's length)
ROW_MULTIPLE = 16
# mmaemu's recorded split-K tables cover the Evo 2 projection shapes up to this many rows (all unsplit)
MAX_ROWS = 8192


def quantize_e4m3(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x * scale`` (computed in fp32) cast to float8_e4m3fn with saturation to +-448, as Transformer
    Engine's cast does; a plain torch cast does not saturate (out-of-range values become NaN)."""
    return (x.float() * scale.float()).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)


def fp8_linear_ref(x, weight_fp8, scale_input, scale_weight, bias, gemm):
    """x: [B, L, K] (or [L, K]) float -> [B, L, N] in x.dtype.

    weight_fp8: [N, K] float8_e4m3fn (the weight already multiplied by ``scale_weight`` and cast);
    scale_input, scale_weight: one-element float32 tensors (the stored TE scales); ``gemm(a [M, K] fp8,
    b [K, N] fp8 column-major, inv_scale_a, inv_scale_b, out_dtype) -> [M, N]``.

    Each sequence's rows are padded with zeros to a multiple of 16 and the sequences are stacked (the
    rows vortex gives Transformer Engine), then run in GEMMs of at most ``MAX_ROWS`` rows: every Evo 2
    projection shape with a multiple of 16 rows up to 8,192 is in mmaemu's H100 split-K table, unsplit.
    Rows never mix in a GEMM, so how they are grouped changes no value, only which shapes run.
    """
    squeeze = x.dim() == 2
    x3 = x[None] if squeeze else x.reshape(-1, x.shape[-2], x.shape[-1])
    xq = quantize_e4m3(x3, scale_input)
    # TE multiplies by the reciprocal scales in the GEMM's epilogue (scale_inv = 1 / scale, fp32)
    inv_a, inv_b = scale_input.float().reciprocal().reshape(()), scale_weight.float().reciprocal().reshape(())
    n, k = weight_fp8.shape
    pad_n, pad_k = -n % ROW_MULTIPLE, -k % ROW_MULTIPLE
    if pad_n or pad_k:
        # FP8 GEMMs take sizes that are multiples of 16 (all Evo 2 models have them); zero products at
        # the end of K leave the accumulation unchanged, zero rows of the weight give outputs we drop
        weight_fp8 = _pad(_pad(weight_fp8, 1, pad_k), 0, pad_n)
        xq = _pad(xq, 2, pad_k)
    w_t = weight_fp8.t()  # [K, N], column-major: the layout torch._scaled_mm wants for mat2
    B, L = xq.shape[:2]
    rows = _pad(xq, 1, -L % ROW_MULTIPLE).reshape(-1, xq.shape[2])  # [B * L16, K], as vortex lays them out
    out = [gemm(rows[i : i + MAX_ROWS].contiguous(), w_t, inv_a, inv_b, x.dtype) for i in range(0, rows.shape[0], MAX_ROWS)]
    y = torch.cat(out).reshape(B, -1, out[0].shape[1])[:, :L, :n]
    if bias is not None:
        # TE adds the bias in the GEMM's epilogue; Evo 2's projections have none
        y = y + bias.to(y.dtype)
    return y[0] if squeeze else y.reshape(*x.shape[:-1], y.shape[-1])


def _pad(t: torch.Tensor, dim: int, n: int) -> torch.Tensor:
    """``t`` with ``n`` zeros appended along ``dim`` (float8 tensors included)."""
    if not n:
        return t
    shape = list(t.shape)
    shape[dim] = n
    return torch.cat([t, t.new_zeros(shape)], dim)
