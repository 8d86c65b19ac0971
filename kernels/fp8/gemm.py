"""The two FP8 GEMMs of ``fp8_linear_ref``: ``emulated_gemm`` (mmaemu's bit-exact model of Transformer
Engine 2.3 on an H100 PCIe, profile ``hopper-te``, on any device; optional dependency, ``pip install
"evo-cli[fp8]"``) and ``native_gemm`` (``torch._scaled_mm`` with fast accumulation: the hardware's own
FP8 GEMM, the reference numerics only on sm_89 / sm_90).

Both take ``(a [M, K] e4m3 row-major, b [K, N] e4m3 column-major, 1 / scale_a, 1 / scale_b, out_dtype)``.
"""

from __future__ import annotations

import functools
import logging
import warnings

import torch

log = logging.getLogger(__name__)

MMAEMU_PROFILE = "hopper-te"


@functools.cache
def mmaemu_available() -> bool:
    try:
        import mmaemu  # noqa: F401
    except ImportError:
        return False
    return True


_unvalidated_shapes: set[tuple[int, int, int]] = set()


def emulated_gemm(a, b, inv_a, inv_b, out_dtype):
    """Hopper's FP8 GEMM with fast accumulation as Transformer Engine 2.3 runs it on an H100 PCIe, through
    mmaemu. A shape outside mmaemu's split-K tables (toy models: K below 1,024) is computed unsplit, as
    cuBLAS runs small GEMMs, with a note in the log once per shape."""
    import mmaemu

    kwargs = dict(out_dtype=out_dtype, use_fast_accum=True, profile=MMAEMU_PROFILE)
    with torch.inference_mode(), warnings.catch_warnings():
        # hopper-te marks its table-free (envelope) decisions; the shapes we run are all table rows
        warnings.simplefilter("ignore", mmaemu.UnvalidatedEnvelopeWarning)
        try:
            return mmaemu.scaled_mm(a, b, inv_a, inv_b, **kwargs)
        except mmaemu.SplitKUnknownError:
            shape = (a.shape[0], b.shape[1], a.shape[1])
            if shape not in _unvalidated_shapes:
                _unvalidated_shapes.add(shape)
                log.info("FP8 GEMM M=%d N=%d K=%d is not in mmaemu's split-K tables; computed unsplit", *shape)
            return mmaemu.scaled_mm(a, b, inv_a, inv_b, splitk=1, **kwargs)


def native_gemm(a, b, inv_a, inv_b, out_dtype):
    """The GPU's own FP8 GEMM, with fast accumulation as Transformer Engine uses in the forward pass."""
    return torch._scaled_mm(a, b, scale_a=inv_a, scale_b=inv_b, out_dtype=out_dtype, use_fast_accum=True)
