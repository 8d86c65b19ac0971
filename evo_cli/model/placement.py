"""A model split over several devices: consecutive blocks on each device, balanced by memory.

Block ``i`` runs on ``Placement.block_device(i)``; the activations ``[B, L, D]`` are moved to it at the
block boundary, and its inference state (FIR tails, modal state, KV cache) lives there too. The
token embedding, the final norm and the tied unembedding stay on the first device: the weight is
shared by the input and the output, so it is kept once, and the logits come out where the input
ids went in (``model.device``), as for an unsplit model. The last block's output crosses back to the
first device once per call, ``[B, L, D]``: small next to the weights.

The pure functions here (device lists, rank ranges, balancing) take plain numbers so that they can
be tested without GPUs.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Sequence

import torch

from evo_cli.errors import InputError

from .model import StripedHyena, keeps_float32

log = logging.getLogger(__name__)

# the KV cache a split reserves room for when no run length is given: positions x batch rows
DEFAULT_STATE_TOKENS = 8192
# fraction of a GPU's free memory that weights and states may fill; the rest is for activations
HEADROOM = 0.9


def parse_device_list(spec: str) -> list[str]:
    """``"cuda:0,cuda:1"`` -> ``["cuda:0", "cuda:1"]`` (entries checked later by ``resolve_device``)."""
    parts = [p.strip() for p in str(spec).split(",")]
    if any(not p for p in parts):
        raise InputError(f"device list {spec!r} has an empty entry (write e.g. cuda:0,cuda:1)")
    if len(parts) > 1 and "auto" in parts:
        raise InputError(f"device list {spec!r}: auto cannot be part of a list (write e.g. cuda:0,cuda:1)")
    return parts


def check_distinct(names: Sequence) -> None:
    """Refuse a device list that names one GPU twice (``cuda:0,cuda:0``, or ``cuda,cuda:0``: ``cuda``
    is ``cuda:0``): the two parts would share its memory while the split is planned as if each had its
    own. ``cpu`` may repeat: ``cpu,cpu`` runs every split code path on one machine (the tests use it).
    Entries torch cannot parse are left to ``resolve_device``, which names the devices there are."""
    seen = {}
    for name in names:
        try:
            dev = torch.device(name)
        except (RuntimeError, TypeError, ValueError):
            continue
        if dev.type == "cpu":
            continue
        key = (dev.type, dev.index or 0)
        if key in seen:
            listed = ",".join(str(n) for n in names)
            raise InputError(f"device list {listed!r} names one GPU twice ({seen[key]} and {name}): each part of a "
                             f"split model needs a device of its own (e.g. cuda:0,cuda:1)")
        seen[key] = str(name)


def rank_devices(per_rank: int, local_rank: int, gpu_count: int) -> list[str]:
    """The GPUs of one process when each gets ``per_rank`` of them: rank r -> cuda:rK .. cuda:rK+K-1."""
    if per_rank < 1:
        raise InputError(f"--devices-per-rank must be at least 1, not {per_rank}")
    first, last = local_rank * per_rank, (local_rank + 1) * per_rank - 1
    if last >= gpu_count:
        raise InputError(f"--devices-per-rank {per_rank}: local rank {local_rank} needs cuda:{first}..cuda:{last}, "
                         f"but {gpu_count} GPU(s) are visible")
    return [f"cuda:{i}" for i in range(first, last + 1)]


def balance(block_bytes: Sequence[int], capacities: Sequence[float], first_bytes: int = 0) -> list[int]:
    """Device index of each block: consecutive, non-empty parts, one per capacity, that minimise the
    largest load fraction ``(bytes on the device) / capacity``. ``first_bytes`` is already on device 0
    (embedding). Exact (dynamic programming over split points); among equally good splits, later
    devices take the extra blocks (the first one also holds the logits)."""
    n, k = len(block_bytes), len(capacities)
    if n < k:
        raise InputError(f"cannot split {n} block(s) over {k} devices: list at most {n} devices")
    prefix = [0]
    for b in block_bytes:
        prefix.append(prefix[-1] + b)

    def load(d, a, b):  # fraction of device d's capacity used by blocks a..b-1
        return (prefix[b] - prefix[a] + (first_bytes if d == 0 else 0)) / capacities[d]

    inf = float("inf")
    # best[d][j]: the smallest largest-fraction with blocks 0..j-1 on devices 0..d; cut[d][j]: where d starts
    best = [[inf] * (n + 1) for _ in range(k)]
    cut = [[0] * (n + 1) for _ in range(k)]
    for j in range(1, n + 1):
        best[0][j] = load(0, 0, j)
    for d in range(1, k):
        for j in range(d + 1, n + 1):
            for a in range(d, j):
                v = max(best[d - 1][a], load(d, a, j))
                if v < best[d][j]:
                    best[d][j], cut[d][j] = v, a
    owner, j = [0] * n, n
    for d in range(k - 1, 0, -1):
        a = cut[d][j]
        owner[a:j] = [d] * (j - a)
        j = a
    return owner


def devices_needed(block_bytes: Sequence[int], free: Sequence[int], first_bytes: int = 0,
                   headroom: float = HEADROOM) -> int:
    """How many of the GPUs with ``free`` bytes (in order) a balanced split needs so that none is
    filled past ``headroom``; all of them when even that is not enough."""
    for k in range(1, len(free) + 1):
        if k > len(block_bytes):
            break
        used = _loads(block_bytes, balance(block_bytes, free[:k], first_bytes), k, first_bytes)
        if all(u <= headroom * f for u, f in zip(used, free)):
            return k
    return min(len(free), len(block_bytes))


def _loads(block_bytes: Sequence[int], owner: Sequence[int], k: int, first_bytes: int) -> list[int]:
    """Bytes on each of ``k`` devices when block i goes to ``owner[i]`` (device 0 also holds ``first_bytes``)."""
    used = [first_bytes] + [0] * (k - 1)
    for b, d in zip(block_bytes, owner):
        used[d] += b
    return used


def block_memory(model, dtype: torch.dtype, state_tokens: int, fp8: bool = False) -> tuple[list[int], int]:
    """(bytes per block, bytes outside the blocks) of ``model`` (meta or real) in ``dtype``: weights
    (Hyena filters float32) plus each block's inference state for ``state_tokens`` positions. ``fp8``:
    the Hyena projections run in FP8, and keep an E4M3 copy of their weight (one byte an element)
    beside it."""
    def weights(prefix, module):
        return sum(p.numel() * (4 if keeps_float32(f"{prefix}.{n}") else dtype.itemsize)
                   for n, p in module.named_parameters())

    sizes = []
    for i, block in enumerate(model.blocks):
        # the state's shapes, built on the meta device: nothing is allocated
        s = (block.new_state(1, "meta", state_tokens, dtype) if block.kind == "attn"
             else block.new_state(1, "meta"))
        state = sum(t.numel() * t.element_size() for t in vars(s).values())
        e4m3 = block.projections.weight.numel() if fp8 and block.kind != "attn" else 0
        sizes.append(weights(f"blocks.{i}", block) + state + e4m3)
    first = weights("embedding_layer", model.embedding_layer) + weights("norm", model.norm)
    return sizes, first


def _capacities(devices: Sequence[torch.device]) -> list[float]:
    """Free memory of each GPU; equal shares when any device is a CPU (its memory is shared)."""
    if any(d.type != "cuda" for d in devices):
        return [1.0] * len(devices)
    return [float(torch.cuda.mem_get_info(d)[0]) for d in devices]


@dataclass(frozen=True)
class Placement:
    """Where each part of a split model lives: ``devices`` as listed (the first holds the embedding,
    final norm and unembedding); block ``i`` lives on ``devices[owners[i]]``."""

    devices: tuple[torch.device, ...]
    owners: tuple[int, ...]

    def block_device(self, i: int) -> torch.device:
        return self.devices[self.owners[i]]

    def device_of(self, name: str) -> torch.device:
        """Device of a parameter or buffer by its ``state_dict`` name."""
        if name.startswith("blocks."):
            return self.block_device(int(name.split(".")[1]))
        return self.devices[0]

    def run_block(self, i: int, block, x, state, pos: int):
        """Block ``i`` on its device: x [B, L, D] (on any device) -> [B, L, D] on block i's device."""
        dev = self.block_device(i)
        # Triton launches on the current CUDA device, not on the device of the tensors
        with torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext():
            return block(x.to(dev), state, pos)

    def describe(self) -> str:
        """E.g. ``cuda:0 blocks 0-24, cuda:1 blocks 25-49``."""
        parts = []
        for d, dev in enumerate(self.devices):
            idx = [i for i, o in enumerate(self.owners) if o == d]
            parts.append(f"{dev} blocks {idx[0]}-{idx[-1]}")
        return ", ".join(parts)


def plan(model, devices: Sequence[torch.device], dtype: torch.dtype,
         state_tokens: int = DEFAULT_STATE_TOKENS, fp8: bool = False) -> Placement:
    """Split ``model``'s blocks (a meta-device model is enough) over ``devices``, balanced by memory
    (``block_memory``)."""
    sizes, first = block_memory(model, dtype, state_tokens, fp8)
    caps = _capacities(devices)
    owner = balance(sizes, caps, first)
    used = _loads(sizes, owner, len(devices), first)
    for d, dev in enumerate(devices):
        if dev.type == "cuda" and used[d] > caps[d]:
            log.warning("warning: the split needs %.1f GB on %s, which has %.1f GB free", used[d] / 1e9, dev,
                        caps[d] / 1e9)
    return Placement(tuple(devices), tuple(owner))


def auto_devices(config, dtype: torch.dtype, state_tokens: int = DEFAULT_STATE_TOKENS,
                 fp8: bool = False) -> list[torch.device] | None:
    """``--device auto`` with several GPUs: the first GPUs, as many as the weights plus states need
    (at most ``HEADROOM`` of each one's free memory; ``block_memory``); None when one GPU is enough."""
    count = torch.cuda.device_count()
    if count < 2:
        return None
    with torch.device("meta"):
        model = StripedHyena(config)
    sizes, first = block_memory(model, dtype, state_tokens, fp8)
    gpus = [torch.device(f"cuda:{i}") for i in range(count)]
    k = devices_needed(sizes, [torch.cuda.mem_get_info(d)[0] for d in gpus], first)
    return None if k == 1 else gpus[:k]
