"""Build a model straight from a checkpoint: meta-device init, then each tensor read lazily,
converted to our layout, cast and moved to the target device once."""

from __future__ import annotations

import logging
import re
from typing import Sequence

import torch

from evo_cli.errors import CheckpointError
from evo_cli.model.model import StripedHyena, keeps_float32
from evo_cli.model.placement import DEFAULT_STATE_TOKENS, plan

from .formats import Checkpoint
from .native import is_linear_weight

log = logging.getLogger(__name__)

# a block's tensors: "blocks.N." (Evo 1 under "backbone.", vortex, native) or "model.layers.N." (community)
_BLOCK = re.compile(r"(?:^|\.)(?:blocks|layers)\.(\d+)\.")


def _check_finite(t: torch.Tensor, key: str, where, stored) -> None:
    """A NaN or infinite weight would turn every score into NaN far from its cause: one pass over each
    loaded tensor ``t`` names it instead (a meta tensor has no values to check). The index and value
    are those of ``stored``, the tensor as the file holds it (``t`` may be transposed, its rows
    reordered, or cast); a finite stored value that the cast made infinite is said to be so."""
    if t.is_meta or bool(torch.isfinite(t).all()):
        return
    if isinstance(stored, torch.Tensor) and stored.is_floating_point() and not bool(torch.isfinite(stored).all()):
        at = [int(i) for i in (~torch.isfinite(stored)).nonzero()[0]]
        raise CheckpointError(f"{where}: tensor {key!r} holds a non-finite value ({stored[tuple(at)].item()} at index "
                              f"{at}, as {str(stored.dtype).removeprefix('torch.')}); the checkpoint is damaged")
    dtype = str(t.dtype).removeprefix("torch.")
    raise CheckpointError(f"{where}: tensor {key!r} holds a value too large for {dtype} (it becomes "
                          f"{t[~torch.isfinite(t)][0].item()}); load the model in float32 or bfloat16")


def _near(key: str, ckpt: Checkpoint) -> str:
    """Why a needed ``key`` may be missing, when the file says: it is there under a prefix (a training
    wrapper's ``model.`` / ``module.``), or the state dict is nested in another entry."""
    keys = ckpt.source.keys()
    prefixed = next((k for k in keys if k.endswith("." + key)), None)
    if prefixed is not None:
        return f"; the file has {prefixed!r}: strip the prefix {prefixed[: -len(key)]!r} from its keys"
    # a wrapper's entries have plain names ("model", "module"); reading only those keeps this cheap
    nested = [k for k in keys if "." not in k and isinstance(_value(ckpt, k), dict)]
    if nested:
        return f"; the file nests a dict under {nested[0]!r}: save that dict of tensors itself"
    return ""


def _value(ckpt: Checkpoint, key: str):
    try:
        return ckpt.source.get(key)
    except CheckpointError:  # a damaged entry: not what this hint is about
        return None


def _placed(t: torch.Tensor, device: torch.device, dtype: torch.dtype, column_major: bool) -> torch.Tensor:
    """``t`` on ``device`` in ``dtype``, row-major, except a CPU ``nn.Linear`` weight that the model keeps
    column-major (``column_major``; see ``StripedHyena._cpu_gemv_layout``): that layout comes in the
    same copy as the conversion, and with no copy from a native checkpoint, which stores it so."""
    if column_major:
        if t.t().is_contiguous():
            return t.to(dtype=dtype)
        return torch.empty(t.shape[::-1], dtype=dtype).copy_(t.t()).t()
    return t.to(device=device, dtype=dtype).contiguous()


def build_model(ckpt: Checkpoint, device: torch.device | Sequence[torch.device], dtype: torch.dtype | None,
                kernels: str = "auto", state_tokens: int = DEFAULT_STATE_TOKENS, fp8: bool = False) -> StripedHyena:
    """``dtype`` None keeps every tensor's stored dtype (for conversion; such a model may mix dtypes).

    ``device``: one device, or a list to split the blocks over (``placement.py``; balanced for a KV
    cache of ``state_tokens`` positions, and for the E4M3 weights of FP8 projections when ``fp8``);
    each tensor goes straight to its own device."""
    with torch.device("meta"):
        model = StripedHyena(ckpt.config, kernels=kernels)
        if ckpt.fp8_state() is not None:
            model.add_fp8_state()  # the scale buffers, filled from the checkpoint below
    devices = [device] if isinstance(device, torch.device) else list(device)
    placement = plan(model, devices, dtype or torch.float32, state_tokens, fp8) if len(devices) > 1 else None
    where = placement.device_of if placement is not None else lambda _name: devices[0]
    expected = model.state_dict()
    used, tensors = set(), {}
    for name, meta in expected.items():
        key, transform = ckpt.resolve(name)
        if key is not None and key not in ckpt.source:
            raise CheckpointError(f"{ckpt.source.description}: missing tensor {key!r} (needed for {name}){_near(key, ckpt)}")
        # Transformer Engine's ``_extra_state`` (FP8 scales) is a serialised object, read by its transform
        stored = None if key is None else ckpt.source.get(key) if key.endswith("_extra_state") else ckpt.source.tensor(key)
        t = transform(stored)
        if tuple(t.shape) != tuple(meta.shape):
            file = ckpt.source.where(key) if key is not None else ckpt.path
            shown = stored if isinstance(stored, torch.Tensor) else t
            read_as = f" (read as {list(t.shape)})" if shown.shape != t.shape else ""
            raise CheckpointError(
                f"{file}: tensor {key!r} has shape {list(shown.shape)}{read_as}, "
                f"the config needs {list(meta.shape)}"
                + (": its head size (hidden_size / num_attention_heads) is not the weights'" if name.endswith("inv_freq") else "")
            )
        if not t.is_floating_point():
            raise CheckpointError(f"{ckpt.source.where(key)}: tensor {key!r} has dtype {t.dtype}, expected floating point")
        target = t.dtype if dtype is None else torch.float32 if keeps_float32(name) else dtype
        device = torch.device(where(name))
        tensors[name] = _placed(t, device, target,
                                device.type == "cpu" and is_linear_weight(name) and model.column_major(t.shape))
        if key is not None:
            _check_finite(tensors[name], key, ckpt.source.where(key), stored)
        used.add(key)
    extra = [k for k in ckpt.source.keys() if k not in used and not ckpt.ignorable(k)]
    # an unused tensor may be a harmless extra, but one of a block past the config's last layer means the
    # config does not describe these weights: running the first blocks only would give wrong numbers
    past = [(int(m.group(1)), k) for k in extra if (m := _BLOCK.search(k)) and int(m.group(1)) >= len(model.blocks)]
    if past:
        block, key = max(past)
        raise CheckpointError(f"{ckpt.source.description}: the weights have block {block} (e.g. {key!r}), past the "
                              f"config's num_layers {len(model.blocks)} (blocks 0..{len(model.blocks) - 1}): the "
                              "config does not describe this checkpoint")
    if extra:
        log.warning("warning: %s: ignoring %d tensor(s) the model does not use, e.g. %r", ckpt.source.description,
                    len(extra), extra[0])
    model.load_state_dict(tensors, strict=True, assign=True)
    model.requires_grad_(False)
    if placement is not None:
        model.placement = placement
        log.info("model split over %d devices: %s", len(devices), placement.describe())
    return model.eval()
