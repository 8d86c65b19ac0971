"""Checkpoint formats and loading: ``load_model`` detects the format of a file or directory."""

from __future__ import annotations

from pathlib import Path

import torch

from evo_cli.errors import CheckpointError
from evo_cli.model.config import ModelConfig
from evo_cli.model.model import StripedHyena
from evo_cli.runtime import resolve_device, resolve_dtype, resolve_kernels

from .formats import Checkpoint, open_checkpoint
from .loader import build_model, keeps_float32

__all__ = ["Checkpoint", "load_model", "open_checkpoint", "keeps_float32"]


def load_model(
    model: str | Path,
    device: str | torch.device | None = "auto",
    dtype: str | torch.dtype | None = "auto",
    kernels: str | None = None,
    config: ModelConfig | None = None,
) -> StripedHyena:
    """Load an Evo 1 / Evo 2 checkpoint (a directory or a weights file) as an eval-mode model.

    device: ``auto`` (CUDA if present, else CPU), ``cpu``, ``cuda``, ``cuda:N``.
    dtype: ``auto`` (float32 on CPU, bfloat16 on GPUs), ``float32``, ``bfloat16`` or a torch dtype;
    Hyena filters, poles and residues stay float32 either way.
    kernels: ``auto`` / ``triton`` / ``torch``; default from ``EVO_KERNELS``, else ``auto``.
    """
    path = Path(model)
    if not path.exists():
        raise CheckpointError(f"{model}: no such checkpoint file or directory")
    dev = resolve_device(device)
    ckpt = open_checkpoint(path, config)
    return build_model(ckpt, dev, resolve_dtype(dtype, dev), resolve_kernels(kernels))
