"""Transformer Engine FP8 state (``<module>._extra_state``), read without executing pickled code.

What TE stores (``TransformerEngineBaseModule.get_extra_state`` in transformer_engine/pytorch/module/
base.py) is a dict:
- ``scale_fwd`` [3 x gemms] float32, indexed [input, weight, output] per GEMM: the factor a tensor is
  multiplied by before the cast to E4M3; ``amax_history_fwd`` [history, 3 x gemms]; the same two for
  the backward pass (``scale_bwd``, ``amax_history_bwd``, [grad_output, grad_input]);
- TE 1.x also ``scale_inv_fwd`` / ``scale_inv_bwd`` (1 / scale); TE 2.x drops them and adds ``recipe``
  (a ``DelayedScaling`` object: ``fp8_format``, ``amax_history_len``, ``amax_compute_algo``, ...);
- ``extra_fp8_variables``: the plain values of ``fp8_meta`` (``num_gemms``, ``fp8_max_fwd``, ...).

Serialised three ways: an ``io.BytesIO`` holding ``torch.save(state)`` (TE 1.x; the published Evo 2
``.pt`` files), ``torch.frombuffer(pickle.dumps(state), dtype=uint8)`` (TE 1.x ONNX export, TE 2.x),
either of them with a ``recipe`` object inside. A module that never ran in FP8 stores ``None`` (or an
empty uint8 tensor in TE 2.x).

Both forms are read by one restricted unpickler: tensors and plain containers are rebuilt, a class
from the ``transformer_engine`` package (the recipe, its enums) becomes an inert ``Placeholder`` that
only records its name and arguments, and any other global (``os.system``, ``builtins.eval``, ...) stops
the read with an error. Nothing from the file is ever called.

Delayed scaling, and why the stored scales are used on every call: vortex runs the projection under
``fp8_autocast`` with ``DelayedScaling(fp8_format=HYBRID, amax_history_len=16, amax_compute_algo="max")``
(1,024 in early vortex). TE then records each call's amax (the largest magnitude of the input, and of
the weight) in ``amax_history_fwd`` and, after the forward pass, sets ``scale = fp8_max / max(history) /
2^margin`` (margin 0, fp8_max 448 for E4M3; a zero or non-finite amax keeps the old scale). The first
call after loading therefore uses the stored ``scale_fwd``; later calls use scales from the inputs seen
so far: the weight's scale drifts to ``448 / amax(weight)`` once the training-time history has rolled
out, and the input's scale follows the largest activation of the last 16 calls, so the reference's
output for a sequence depends on which sequences ran before it. ``evo`` keeps the stored scales for
every call (the reference's first-call numerics), so that every score is a function of its own input.
"""

from __future__ import annotations

import functools
import io
import os
import pickle

import torch

from evo_cli.errors import CheckpointError

from .sources import is_torchscript


class Placeholder:
    """An object of a Transformer Engine class, not rebuilt: its qualified name and the arguments and
    state it was pickled with, as data."""

    _name = "?"

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs, self.state = args, kwargs, None

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"<{self._name} (not loaded)>"


_placeholders: dict[str, type] = {}


def _placeholder(name: str) -> type:
    if name not in _placeholders:
        _placeholders[name] = type("Placeholder", (Placeholder,), {"_name": name})
    return _placeholders[name]


def _storage_from_bytes(data: bytes):
    """A storage pickled by ``pickle.dumps(tensor)`` (torch's ``_load_from_bytes``), loaded weights-only."""
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


@functools.cache
def _allowed() -> dict[tuple[str, str], object]:
    import collections
    import torch._utils

    allowed = {
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
        ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch", "device"): torch.device,
        ("torch", "Size"): torch.Size,
    }
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.uint8, torch.int64, torch.int32,
                  torch.bool):
        allowed[("torch", str(dtype).removeprefix("torch."))] = dtype
    return allowed


class UnsafePickle(pickle.UnpicklingError):
    pass


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        allowed = _allowed()
        if (module, name) in allowed:
            return allowed[(module, name)]
        if module.startswith("torch") and name.endswith("Storage"):
            # typed storages of a legacy torch.save (torch maps these names itself before asking us)
            return getattr(torch, name) if name in dir(torch) else _refuse(module, name)
        if module == "transformer_engine" or module.startswith("transformer_engine."):
            return _placeholder(f"{module}.{name}")
        _refuse(module, name)


def _refuse(module, name):
    raise UnsafePickle(f"refers to {module}.{name}, which is not Transformer Engine state")


class _PickleModule:
    """What ``torch.load(pickle_module=...)`` needs: our Unpickler (torch subclasses it and keeps calling
    its ``find_class``) and ``load``."""

    Unpickler = _Unpickler
    UnpicklingError = pickle.UnpicklingError

    @staticmethod
    def load(f, **kwargs):
        return _Unpickler(f, **kwargs).load()


def _refuse_torchscript(buf: io.BytesIO) -> None:
    """torch.load hands a TorchScript archive to torch.jit.load, which runs its code: never ours to load."""
    if is_torchscript(buf):
        raise UnsafePickle("is a TorchScript program")


def decode_extra_state(value, key: str) -> dict | None:
    """A ``_extra_state`` value as stored (BytesIO, uint8 tensor, None) -> the TE state dict, or None when
    the module stored no FP8 state. A refused or unreadable state is a ``CheckpointError`` naming ``key``."""
    try:
        if value is None:
            return None
        if isinstance(value, torch.Tensor):
            if value.numel() == 0:
                return None
            if value.dtype != torch.uint8:
                raise CheckpointError(f"{key}: expected Transformer Engine state as uint8 bytes, found {value.dtype}")
            state = _Unpickler(io.BytesIO(value.cpu().numpy().tobytes())).load()
        elif isinstance(value, (io.BytesIO, bytes, bytearray)):
            buf = io.BytesIO(value.getvalue() if isinstance(value, io.BytesIO) else bytes(value))
            _refuse_torchscript(buf)
            if os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "0").lower() in ("1", "y", "yes", "true"):
                # torch then refuses any pickle_module, ours included: say so rather than "unreadable"
                raise CheckpointError(f"{key}: Transformer Engine state is read by evo's own restricted unpickler "
                                      "(tensors and inert placeholders, never code), which TORCH_FORCE_WEIGHTS_ONLY_LOAD "
                                      "forbids; unset it to load this checkpoint")
            state = torch.load(buf, map_location="cpu", weights_only=False, pickle_module=_PickleModule)
        else:
            raise CheckpointError(f"{key}: unsupported Transformer Engine state of type {type(value).__name__}")
    except CheckpointError:
        raise
    except UnsafePickle as err:
        raise CheckpointError(f"{key}: Transformer Engine state {err}; refusing to unpickle code") from None
    except Exception as err:  # truncated or corrupt bytes
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{key}: unreadable Transformer Engine state ({msg})") from None
    if state is not None and not isinstance(state, dict):
        raise CheckpointError(f"{key}: Transformer Engine state is a {type(state).__name__}, expected a dict")
    return state


def forward_scales(state: dict, key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(input scale, weight scale) of a one-GEMM module's forward pass, float32 scalars."""
    scale = state.get("scale_fwd")
    if not isinstance(scale, torch.Tensor) or scale.numel() < 2 or not scale.is_floating_point():
        raise CheckpointError(f"{key}: Transformer Engine state has no forward scales (scale_fwd)")
    scale = scale.detach().float().reshape(-1)
    si, sw = scale[0].clone(), scale[1].clone()
    for what, s in (("input", si), ("weight", sw)):
        if not torch.isfinite(s) or s <= 0:
            raise CheckpointError(f"{key}: FP8 {what} scale is {s.item()}, expected a positive finite number")
    return si, sw


def recipe_summary(state: dict) -> str:
    """A short description of the stored recipe, e.g. ``delayed scaling, amax history 16``."""
    hist = state.get("amax_history_fwd")
    parts = ["delayed scaling"]
    if isinstance(hist, torch.Tensor) and hist.dim() == 2:
        parts.append(f"amax history {hist.shape[0]}")
    recipe = state.get("recipe")
    if isinstance(recipe, Placeholder):
        parts.append(recipe._name.rsplit(".", 1)[-1])
    return ", ".join(parts)
