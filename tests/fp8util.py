"""Tiny Evo 2 checkpoints with FP8 state in the published vortex layout, and a plain FP8 reference.

The checkpoint is the conformance case ``tiny_a`` (vortex ``.pt`` + yml) with a Transformer Engine
``_extra_state`` on every Hyena projection, serialised as TE does: an ``io.BytesIO`` of ``torch.save``
(TE 1.x, the published files) or ``pickle.dumps`` in a uint8 tensor (TE 2.x, with a ``recipe`` object
of a stand-in ``transformer_engine.common.recipe.DelayedScaling``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import io
import pickle
import shutil
import sys
import types
from pathlib import Path

import torch

from tests.conftest import CONFORMANCE

TINY_A = CONFORMANCE / "evo2" / "tiny_a"
_TE = "transformer_engine.common.recipe"


class Format(enum.Enum):
    E4M3 = "e4m3"
    HYBRID = "hybrid"


@dataclasses.dataclass
class DelayedScaling:
    fp8_format: Format = Format.HYBRID
    amax_history_len: int = 16
    amax_compute_algo: str = "max"


@contextlib.contextmanager
def fake_transformer_engine():
    """``transformer_engine.common.recipe`` importable while pickling, so that the pickle names it."""
    names = ["transformer_engine", "transformer_engine.common", _TE]
    saved = {n: sys.modules.get(n) for n in names}
    for n in names:
        sys.modules[n] = types.ModuleType(n)
    for cls in (Format, DelayedScaling):
        cls.__module__ = _TE
        setattr(sys.modules[_TE], cls.__name__, cls)
    try:
        yield
    finally:
        for cls in (Format, DelayedScaling):
            cls.__module__ = __name__
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


def te_state(scale_input: float, scale_weight: float, with_recipe: bool) -> dict:
    scale = torch.tensor([scale_input, scale_weight, 1.0])
    state = {
        "scale_fwd": scale,
        "amax_history_fwd": torch.rand(16, 3),
        "scale_bwd": torch.ones(2),
        "amax_history_bwd": torch.zeros(16, 2),
        "extra_fp8_variables": {"num_gemms": 1, "fp8_max_fwd": 448.0, "fp8_max_bwd": 57344.0, "fp8_checkpoint": True},
    }
    if with_recipe:
        state["recipe"] = DelayedScaling()
    else:
        state["scale_inv_fwd"] = scale.reciprocal()
        state["scale_inv_bwd"] = torch.ones(2)
    return state


def encode(state, form: str):
    """TE's two serialisations: ``bytesio`` (torch.save into BytesIO) or ``uint8`` (pickle in a tensor)."""
    with fake_transformer_engine():
        if form == "bytesio":
            buf = io.BytesIO()
            torch.save(state, buf)
            return buf
        return torch.frombuffer(bytearray(pickle.dumps(state)), dtype=torch.uint8)


def hyena_blocks(sd: dict) -> list[int]:
    return sorted({int(k.split(".")[1]) for k in sd if k.endswith("projections.weight")})


def scales_for(block: int) -> tuple[float, float]:
    """Distinct stored scales per block (powers of two and not), large enough that inputs saturate."""
    return 96.0 + 16 * block, 2.0 ** (5 + block % 3) * 1.5


def write_fp8_checkpoint(out: Path, form: str = "bytesio", transform=None) -> Path:
    """tiny_a with FP8 state on every Hyena projection; ``transform(sd)`` may edit the dict first."""
    out.mkdir(parents=True, exist_ok=True)
    sd = torch.load(TINY_A / "weights.pt", weights_only=True)
    for i in hyena_blocks(sd):
        sd[f"blocks.{i}.projections._extra_state"] = encode(te_state(*scales_for(i), with_recipe=form == "uint8"), form)
    if transform is not None:
        transform(sd)
    torch.save(sd, out / "weights.pt")
    shutil.copy(TINY_A / "config.yml", out / "config.yml")
    return out


def interleave_perm(d: int) -> torch.Tensor:
    """vortex rows 3c + j -> our [x2 | x1 | v] (independent copy of the loader's rule)."""
    return torch.cat([torch.arange(j, 3 * d, 3) for j in range(3)])


def plain_fp8_projection(x, weight_vortex, scale_input: float, scale_weight: float, out_dtype):
    """The FP8 projection written out plainly from TE's definition, with mmaemu as the GEMM.

    x: [B, L, D]; weight_vortex: [3D, D] as stored. Returns [B, L, 3D] in our row order."""
    import mmaemu

    si, sw = torch.tensor(scale_input), torch.tensor(scale_weight)
    wq = (weight_vortex.float() * sw).clamp(-448, 448).to(torch.float8_e4m3fn)
    out = []
    for seq in x:
        L = seq.shape[0]
        rows = -(-L // 16) * 16
        xq = torch.zeros(rows, seq.shape[1], dtype=torch.float8_e4m3fn)
        xq[:L] = (seq.float() * si).clamp(-448, 448).to(torch.float8_e4m3fn)
        y = mmaemu.scaled_mm(xq, wq.t(), 1 / si, 1 / sw, out_dtype=out_dtype, use_fast_accum=True,
                             profile="hopper-te", splitk=1)
        out.append(y[:L])
    return torch.stack(out)[..., interleave_perm(weight_vortex.shape[1])]
