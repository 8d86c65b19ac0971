"""Convert any supported checkpoint to the native layout: ``config.json`` + ``model-*.safetensors``
shards + index, already in the runtime's row orders, so loading is a memory map with no conversion.

safetensors memory-maps its files and hands out tensors backed by the mapping, and the native key map
is the identity but for the ``nn.Linear`` weights, stored transposed (``<name>.T``, see ``native.py``):
a CPU load in the stored dtype with the numba kernels therefore copies nothing (the parameters share
memory with the mapped files; ``tests/test_convert.py`` checks this). With ``--kernels torch`` the
Linear weights with no more outputs than inputs are copied back to row-major at load.
"""

from __future__ import annotations

from pathlib import Path

import torch

from evo_cli.io.atomic import check_output_dir
from evo_cli.runtime import resolve_dtype

from . import resolve_checkpoint
from .formats import open_checkpoint
from .loader import build_model
from .native import DEFAULT_SHARD_BYTES, check_shard_bytes, save_native


def convert_checkpoint(
    source: str | Path,
    out_dir: str | Path,
    dtype: str | torch.dtype = "keep",
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> Path:
    """Write ``source`` (a checkpoint path or a published model name) as a native directory ``out_dir``.

    dtype: ``keep`` (every tensor as stored), ``float32`` or ``bfloat16`` (Hyena filters, poles,
    residues and rotary frequencies stay float32). The directory appears only when complete.
    """
    check_shard_bytes(max_shard_bytes)  # like the output, before a download or a long load
    check_output_dir(out_dir)  # before a download or a long load
    path, published = resolve_checkpoint(source)
    ckpt = open_checkpoint(path, published)
    cpu = torch.device("cpu")
    target = None if dtype == "keep" else resolve_dtype(dtype, cpu)
    model = build_model(ckpt, cpu, target)
    return save_native(model, out_dir, max_shard_bytes, metadata={"source": str(source), "source_format": ckpt.format})
