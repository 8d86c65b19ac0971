"""Checkpoint formats and loading: ``load_model`` detects the format of a file or directory."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from evo_cli import hub, registry
from evo_cli.errors import CheckpointError, EvoError, InputError, whole_number
from evo_cli.model.config import ModelConfig
from evo_cli.model.model import StripedHyena
from evo_cli.model.placement import DEFAULT_STATE_TOKENS, auto_devices
from evo_cli.runtime import (fp8_choice, fp8_native_on, fp8_source, local_rank, resolve_device, resolve_devices,
                             resolve_dtype, resolve_fp8, resolve_kernels)

from .formats import Checkpoint, open_checkpoint
from .loader import build_model

log = logging.getLogger(__name__)

__all__ = ["Checkpoint", "describe_checkpoint", "load_model", "open_checkpoint", "resolve_checkpoint"]


def load_model(
    model: str | Path,
    device: str | torch.device | None = "auto",
    dtype: str | torch.dtype | None = "auto",
    kernels: str | None = None,
    config: ModelConfig | None = None,
    devices_per_rank: int | None = None,
    state_tokens: int = DEFAULT_STATE_TOKENS,
    fp8: str | None = None,
) -> StripedHyena:
    """Load an Evo 1 / Evo 2 checkpoint as an eval-mode model: a published model name (see
    ``evo models``; downloaded into the Hugging Face cache on first use unless HF_HUB_OFFLINE is set)
    or a directory or weights file in any supported format.

    device: ``auto`` (CUDA if present, else CPU), ``cpu``, ``cuda``, ``cuda:N``, or several devices
    (``"cuda:0,cuda:1"`` or a list) to split the blocks over them, balanced by memory (weights plus a
    KV cache of ``state_tokens`` positions x batch rows). ``auto`` splits over the first GPUs when one
    cannot hold the model (not under torchrun: use ``devices_per_rank`` there, see ``resolve_devices``).
    dtype: ``auto`` (float32 on CPU, bfloat16 on GPUs), ``float32``, ``bfloat16`` or a torch dtype;
    Hyena filters, poles and residues stay float32 either way.
    kernels: ``auto`` / ``triton`` / ``numba`` / ``torch``; default from ``EVO_KERNELS``, else ``auto``.
    fp8: the Hyena input projections of checkpoints trained with FP8 (Evo 2 1B, 20B, 40B): ``auto``
    (follows the model, see ``fp8_decision``: for those three ``native`` on sm_89 / sm_90 GPUs,
    ``emulate`` elsewhere; for the 7B models ``native`` on such GPUs, ``off`` elsewhere; for other
    checkpoints FP8 when they carry scales), ``emulate``
    (Hopper's FP8 GEMM bit for bit through mmaemu, any device), ``native`` (``torch._scaled_mm``),
    ``off`` (plain matmul); default from ``EVO_FP8``, else ``auto``. ``model.fp8`` says which runs, and
    the log (``-v``) why.
    """
    if config is not None and not isinstance(config, ModelConfig):
        raise InputError(f"config must be a ModelConfig (or None: the checkpoint's own), not a {type(config).__name__}")
    whole_number(state_tokens, "state_tokens", 0)
    path, published = resolve_checkpoint(model)
    devices = resolve_devices(device, devices_per_rank)
    kernels = resolve_kernels(kernels, devices)
    ckpt = open_checkpoint(path, config or published)
    dt = resolve_dtype(dtype, devices[0])
    mode, why = fp8_decision(ckpt, fp8, devices)
    if device in (None, "auto") and devices_per_rank is None and devices[0].type == "cuda" and local_rank() is None:
        split = auto_devices(ckpt.config, dt, state_tokens, fp8=mode != "off")
        # every GPU of the split must run the mode (native on sm_89 / sm_90), not only the first
        devices, (mode, why) = (split, fp8_decision(ckpt, fp8, split)) if split else (devices, (mode, why))
    log.info("FP8 projections: %s (%s)", mode, why)
    if mode == "emulate" and fp8_choice(fp8) == "auto" and any(d.type == "cpu" for d in devices):
        # the one choice of auto that costs hours: say so where the user did not ask for it
        log.warning("FP8 projections emulated on the CPU (%s): exact, but about 200 million multiply-adds/s per "
                    "core (hours for an 8 kb window of a 1B model); --fp8 off runs plain matmuls", why)
    loaded = build_model(ckpt, devices, dt, kernels, state_tokens, fp8=mode != "off")
    loaded.set_fp8(mode)
    if mode == "off":
        registry.warn_without_fp8(loaded.config, has_state=ckpt.fp8_state() is not None)
    return loaded


def fp8_mode(ckpt: Checkpoint, fp8: str | None, devices: torch.device | list[torch.device]) -> str:
    """The FP8 mode a checkpoint runs with on ``devices`` (``fp8_decision`` without its reason)."""
    return fp8_decision(ckpt, fp8, devices)[0]


def fp8_decision(ckpt: Checkpoint, fp8: str | None, devices: torch.device | list[torch.device]) -> tuple[str, str]:
    """(the FP8 mode a checkpoint runs with on ``devices``, why), see ``load_model``.

    ``auto`` follows the model, not the mere presence of scales in its file (the published 7B files
    carry Transformer Engine state too):
    - a published model trained with FP8 and lost without it (``ModelSpec.fp8``: 1B, 20B, 40B): native
      where every device is an sm_89 / sm_90 GPU, else emulated; ``off`` (with a warning) when its
      checkpoint holds no scales;
    - another published model (the 7B ones): evo2's configs ask for FP8 projections, but evo2 runs
      these models in bf16 wherever Transformer Engine is missing, and their accuracy does not depend
      on it (evo2 README): native where the GPUs have it and the file has scales, else ``off``, never
      emulated (about 46 times slower on a CPU, for no accuracy);
    - a checkpoint of no published model: FP8 when it carries scales, as for the first kind.
    An explicit FP8 mode for a checkpoint without the state is an error naming the state it lacks."""
    devices = [devices] if isinstance(devices, torch.device) else list(devices)
    spec = registry.match_config(ckpt.config)
    has_state = ckpt.fp8_state() is not None
    choice = fp8_choice(fp8)
    first = next((i for i, kind in enumerate(ckpt.config.block_types) if kind != "attn"), 0)
    key = f"blocks.{first}.projections.{'fp8_scale_input' if ckpt.format == 'native' else '_extra_state'}"
    native_here = fp8_native_on(devices)
    where = "every device is an sm_89/sm_90 GPU" if native_here else "no sm_89/sm_90 GPU here"
    if choice != "auto":
        mode, why = resolve_fp8(fp8, devices, needs_fp8=True), f"--fp8 {choice}{fp8_source(fp8)}"
    elif spec is not None and spec.family == "evo2" and not spec.fp8:
        mode = "native" if has_state and native_here else "off"
        why = (f"{spec.name} runs FP8 projections where Transformer Engine would (evo2's config), and {where}"
               if mode == "native" else
               f"{spec.name} does not need FP8 projections (evo2 runs it in bf16 without Transformer Engine); "
               + (f"{where}, and emulating them would only be slower" if has_state
                  else "its checkpoint holds no FP8 scales"))
    elif not has_state:
        mode = "off"
        why = (f"{spec.name} was trained with FP8 projections, but its checkpoint holds no FP8 scales"
               if spec is not None and spec.fp8 else "the checkpoint holds no FP8 scales")
    else:
        mode = resolve_fp8(fp8, devices, needs_fp8=True)
        trained = f"{spec.name} was trained with FP8 projections" if spec is not None and spec.fp8 else \
            "the checkpoint carries FP8 scales (a model not in `evo models`)"
        why = f"{trained}; {where}"
    if mode != "off" and not has_state:
        what = f"{spec.name} was trained with FP8 projections, but " if spec and spec.fp8 else ""
        raise CheckpointError(f"{ckpt.source.description}: {what}no FP8 state in the checkpoint ({key} missing or "
                              f"empty) for --fp8 {mode}{fp8_source(fp8)}; use --fp8 off to run with plain matmuls")
    return mode, why


def resolve_checkpoint(model: str | Path, download: bool = True) -> tuple[Path, ModelConfig | None]:
    """An existing path as given; a published model name (``evo models``) -> (its weights in the Hugging
    Face cache, downloaded unless cached or ``download`` is False or HF_HUB_OFFLINE is set, and its
    packaged config). An existing path wins over a name; one in the hub cache folder of a published model
    gets that model's packaged config (``hub.published_in_cache``). An empty name is an error (``Path("")``
    is the current folder: an unset ``$MODEL`` would load whatever is there)."""
    if not isinstance(model, (str, os.PathLike)):
        raise InputError(f"the model must be a published name or a path (str or os.PathLike), not {model!r} "
                         "(see `evo models`)")
    if not str(model).strip():
        raise CheckpointError("no model given: the model name or path is empty (see `evo models`)")
    path = Path(model)
    if path.exists():
        # a published model's files in the hub cache, passed by path, run with its packaged config too
        cached = hub.published_in_cache(path)
        return (path, None) if cached is None else (cached[0], registry.model_config(cached[1].name))
    if str(model) in registry.BUNDLED:
        return Path(str(registry.BUNDLED[str(model)].path)), None
    spec = registry.get_spec(str(model))
    if spec is None:
        raise CheckpointError(registry.unknown_model_message(str(model)))
    return hub.model_weights_path(spec, download=download), registry.model_config(spec.name)


def published_context(model: str | Path) -> int | None:
    """The context of a published or bundled model named ``model`` (no download, no file read), or None
    for a path (an existing path wins over a name, as in ``resolve_checkpoint``) or an unknown name."""
    if not isinstance(model, (str, os.PathLike)) or not str(model).strip() or Path(model).exists():
        return None
    known = registry.BUNDLED.get(str(model)) or registry.get_spec(str(model))
    return None if known is None else known.context


def describe_checkpoint(model: str | Path, device="auto", dtype="auto") -> dict:
    """What ``evo info`` prints: the parsed config, stored and runtime dtype, parameter count.

    Reads the config and one tensor, never the whole set of weights. A published model whose weights
    are not in the cache is described from the config shipped with the package."""
    spec = None if not str(model).strip() or Path(model).exists() or str(model) in registry.BUNDLED \
        else registry.get_spec(str(model))
    try:
        path, published = resolve_checkpoint(model, download=False)
    except CheckpointError:
        if spec is None:
            raise
        ckpt, c = None, registry.model_config(spec.name)
        if hub.cache_status(spec).state == "partial":  # some files, or an interrupted download
            location = f"partly downloaded (`evo download {spec.name}` finishes it)"
        else:
            location = f"not downloaded (`evo download {spec.name}` fetches the weights)"
        fmt, stored = "-", "-"
    else:
        ckpt = open_checkpoint(path, published)
        c = ckpt.config
        location, fmt = str(path), ckpt.format
        emb_key, _ = ckpt.resolve("embedding_layer.weight")
        stored = str(ckpt.source.tensor(emb_key).dtype).removeprefix("torch.")
    with torch.device("meta"):
        n_params = sum(p.numel() for p in StripedHyena(c).parameters())
    dev = resolve_device(device)
    filters = []
    if "hcs" in c.block_types:
        filters.append(f"SE {c.hcs_filter_length} taps x {c.hcs_filter_groups} groups")
    if "hcm" in c.block_types:
        filters.append(f"MR {c.hcm_filter_length} taps x {c.hcm_filter_groups} groups")
    if "hcl" in c.block_types or "hyena" in c.block_types:
        filters.append(f"modal, {c.state_size} {'complex' if c.family == 'evo1' else 'real'} poles per channel")
    return {
        "path": location,
        "format": fmt,
        "family": {"evo1": "Evo 1 (StripedHyena 1)", "evo2": "Evo 2 (StripedHyena 2)"}[c.family],
        "name": c.name or "-",
        "layers": c.num_layers,
        "pattern": c.pattern,
        "hidden size": c.hidden_size,
        "attention heads": f"{c.num_heads} x {c.head_dim} (kv heads {c.num_kv_heads})",
        "MLP inner size": c.inner_mlp_size,
        "hyena filters": "; ".join(filters) or "-",
        "short filter": f"{c.short_filter_length} taps{' + bias' if c.short_filter_bias else ''}",
        "rotary": f"base {c.rotary_base:g}" + (f", positions / {c.rotary_scaling:g}" if c.rotary_scaling != 1 else ""),
        "context": c.max_seqlen,
        "vocab": c.vocab_size,
        "stored dtype": stored,
        "runtime dtype": f"{str(resolve_dtype(dtype, dev)).removeprefix('torch.')} on {dev} (Hyena filters float32)",
        "parameters": n_params,
        # without the weights, what the registry knows of the published model
        "fp8 state": ((ckpt.fp8_state() or "none") if ckpt is not None else
                      "- (trained with FP8 projections; the scales come with the weights)" if spec.fp8 else "none"),
        "fp8 mode": _describe_fp8(ckpt, dev) if ckpt is not None else "-",
    }


def _describe_fp8(ckpt: Checkpoint, device: torch.device) -> str:
    """What the default ``--fp8`` (``EVO_FP8`` or ``auto``) does with this checkpoint on ``device``, or why
    it cannot."""
    try:
        mode, why = fp8_decision(ckpt, None, device)
    except EvoError as err:
        return f"cannot run: {err}"
    return {
        "off": "off (plain matmul projections)",
        "native": f"native (torch._scaled_mm with fast accumulation on {device})",
        "emulate": f"emulate (Hopper FP8 GEMM bit for bit through mmaemu on {device})",
    }[mode] + f": {why}"
