"""Checkpoint formats: detection, configs, and key maps from published layouts to ours.

Formats:
- ``evo1``: Evo 1 Hugging Face layout (``config.json``, ``model-*.safetensors`` + index, or
  ``pytorch_model*.bin`` / ``*.pt``; keys prefixed ``backbone.``; no ``unembed.weight``). An evo
  inference yml beside the weights wins over ``config.json``, as in the evo package.
- ``vortex``: Evo 2 ``<name>.pt`` (or byte-split ``<name>.pt.part0..N``) with the evo2 yml.
- ``native``: our ``config.json`` + safetensors shards in the runtime's own layout (zero-copy load on
  CPU with the numba kernels; ``nn.Linear`` weights stored transposed, as ``<name>.T``).
- ``transformers-wip``, ``aquiles``: community Hugging Face layouts of Evo 2 (``model.layers.{i}...``
  keys), recognised by their tensor names; key maps in ``community.py``.

Our layout differs from the published ones in four places, handled by the key maps below:
hyena projection rows and short filters are reordered to ``[x2 | x1 | v]``; Hyena-MR taps are
flipped so that every FIR has the current token last; Evo 2 per-head ``[q|k|v]`` Wqkv rows become
``[Q | K | V]``. Evo 1's stored ``inv_freq`` is replaced by the formula, because the reference
recomputes it whenever the stored buffer is not float32 (the published weights are bf16).
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import yaml

from evo_cli.errors import CheckpointError, ConfigError
from evo_cli.model.config import ModelConfig
from evo_cli.model.layers import rotary_inv_freq

from . import community, te_state
from .native import is_linear_weight, transposed_key
from .sources import TensorSource, open_safetensors, open_torch, safetensors_index_files, split_parts

Transform = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Checkpoint:
    """An opened checkpoint: its config, lazy tensors, and how to read each of our keys from them."""

    path: Path
    format: str
    config: ModelConfig
    source: TensorSource
    # our key -> (source key or None when computed, transform)
    resolve: Callable[[str], tuple[str | None, Transform]]
    # source keys that are known extras (TE metadata, tied unembedding, time grids)
    ignorable: Callable[[str], bool]
    # a description of the checkpoint's FP8 state (Transformer Engine scales), or None when it has none
    fp8_state: Callable[[], str | None] = field(default=lambda: None)


def _identity(t):
    return t


def _rows(perm: torch.Tensor) -> Transform:
    return lambda t: t.index_select(0, perm)


def column_split_perm(d: int, heads: int) -> torch.Tensor:
    """Rows grouped per head as ``[h: a(hd) | b(hd) | c(hd)]`` -> ``[A (all heads) | B | C]``.

    Used for Evo 1 hyena projections (x2, x1, v per head) and Evo 2 Wqkv (q, k, v per head)."""
    hd = d // heads
    return torch.arange(3 * d).view(heads, 3, hd).transpose(0, 1).reshape(-1)


def interleave_perm(d: int) -> torch.Tensor:
    """Evo 2 hyena projection rows ``3c + j`` (x2, x1, v of channel c) -> ``[x2 | x1 | v]``."""
    return torch.arange(3 * d).view(d, 3).t().reshape(-1)


_EXTRA = re.compile(r"(^|\.)(_extra_state)$|^(backbone\.)?unembed\.weight$|\.t$")


def _is_extra(key: str) -> bool:
    return bool(_EXTRA.search(key))


def _evo1_resolver(config: ModelConfig, source: TensorSource):
    prefix = "backbone." if any(k.startswith("backbone.") for k in source.keys()) else ""
    perm = column_split_perm(config.hidden_size, config.num_heads)
    inv_freq = rotary_inv_freq(config.head_dim, config.rotary_base)

    def resolve(name: str):
        if name.endswith("rotary_emb.inv_freq"):
            key = prefix + name
            # the stored values are not used, but their length is the head size the weights were trained with:
            # a wrong num_attention_heads (same weight shapes otherwise) fails the loader's shape check
            return (key if key in source else None), \
                lambda t: t if t is not None and t.shape != inv_freq.shape else inv_freq.clone()
        if re.search(r"\.(projections\.(weight|bias)|filter\.short_filter_(weight|bias))$", name):
            return prefix + name, _rows(perm)
        return prefix + name, _identity

    return resolve


_FP8_SCALE = re.compile(r"^(blocks\.\d+\.projections)\.fp8_scale_(input|weight)$")
_TE_STATE = re.compile(r"^blocks\.(\d+)\.projections\._extra_state$")


def _decode_te(source: TensorSource, key: str) -> dict | None:
    """``te_state.decode_extra_state`` of ``key``, its errors naming the file as well as the key."""
    value = source.get(key)
    try:
        return te_state.decode_extra_state(value, key)
    except CheckpointError as err:
        raise CheckpointError(f"{source.where(key)}: {err}") from None


def _te_scales(source: TensorSource):
    """``_extra_state`` key -> (input scale, weight scale), decoded once per key."""

    @functools.cache
    def scales(key: str):
        state = _decode_te(source, key)
        if state is None:
            raise CheckpointError(f"{source.where(key)}: {key} holds no FP8 state (the module never ran in FP8)")
        try:
            return te_state.forward_scales(state, key)
        except CheckpointError as err:
            raise CheckpointError(f"{source.where(key)}: {err}") from None

    return scales


def _te_probe(source: TensorSource):
    """The vortex checkpoint's FP8 state, judged by its first Hyena projection's ``_extra_state``."""

    @functools.cache
    def probe() -> str | None:
        keys = sorted((int(m.group(1)), k) for k in source.keys() if (m := _TE_STATE.match(k)))
        if not keys:
            return None
        key = keys[0][1]
        state = _decode_te(source, key)
        if state is None or "scale_fwd" not in state:
            return None
        return f"Transformer Engine FP8 scales ({te_state.recipe_summary(state)})"

    return probe


def _native_probe(source: TensorSource):
    has = any(_FP8_SCALE.match(k) for k in source.keys())
    return lambda: "FP8 scales (from Transformer Engine state)" if has else None


def _vortex_resolver(config: ModelConfig, source: TensorSource):
    inter = interleave_perm(config.hidden_size)
    qkv = column_split_perm(config.hidden_size, config.num_heads)
    te_scales = _te_scales(source)

    def resolve(name: str):
        m = _FP8_SCALE.match(name)
        if m:
            key, which = f"{m.group(1)}._extra_state", 0 if m.group(2) == "input" else 1
            return key, lambda _value: te_scales(key)[which]
        if re.search(r"\.(projections\.weight|filter\.short_filter_(weight|bias))$", name):
            return name, _rows(inter)
        if name.endswith("inner_mha_cls.Wqkv.weight"):
            return name, _rows(qkv)
        m = re.match(r"blocks\.(\d+)\.filter\.h$", name)
        if m and config.block_types[int(m.group(1))] == "hcm":
            # stored in convolution order (tap 0 = current token); ours puts the current token last
            return name, lambda t: t.flip(-1)
        return name, _identity

    return resolve


def _native_resolver(config: ModelConfig, source: TensorSource):
    keys = set(source.keys())
    # format /2 stores every nn.Linear weight transposed: a missing one is named as it would be stored
    transposed = any(is_linear_weight(k[:-2]) for k in keys if k.endswith(".T"))

    def resolve(name: str):
        if is_linear_weight(name) and transposed and name not in keys and transposed_key(name) not in keys:
            return transposed_key(name), _identity  # missing: the loader names it
        if is_linear_weight(name) and transposed_key(name) in keys:
            if name in keys:
                raise CheckpointError(f"{source.where(name)}: holds both {name!r} and {transposed_key(name)!r} "
                                      "(the same weight twice, as stored and transposed); keep one")
            # stored [in, out]: its transpose is a view; other ranks fail the shape check
            return transposed_key(name), lambda t: t.t() if t.dim() == 2 else t
        return name, _identity

    return resolve


def _read_yaml(path: Path) -> dict:
    try:
        d = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: not a readable YAML config ({str(err).splitlines()[0]})") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: expected a mapping of config fields")
    return d


def _read_json(path: Path) -> dict:
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as err:
        raise ConfigError(f"{path}: not a readable JSON config ({str(err)[:200]})") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: expected a JSON object of config fields")
    return d


def _yaml_family(d: dict) -> str | None:
    if any(k in d for k in ("hcl_layer_idxs", "hcm_layer_idxs", "hcs_layer_idxs")):
        return "evo2"
    if "hyena_layer_idxs" in d:
        return "evo1"
    return None


def _torch_files(directory: Path) -> list[Path]:
    """The ``.pt`` / ``.pth`` / ``.ckpt`` files of ``directory`` (what a file path of those names loads)."""
    return sorted(p for ext in ("pt", "pth", "ckpt") for p in directory.glob(f"*.{ext}"))


def _find_weights(directory: Path) -> tuple[str, list[Path]]:
    """(kind, files) of the weights in ``directory``: kind is ``safetensors`` or ``torch``.

    Hugging Face safetensors shards win over ``pytorch_model*.bin`` (the same weights, as Hugging Face
    loads them), but safetensors beside a vortex ``*.pt`` are two checkpoints: which one was meant is
    the user's to say (the config of one would be read with the weights of the other)."""
    st = sorted(directory.glob("model*.safetensors"))
    if (directory / "model.safetensors.index.json").is_file() or st:
        pt = sorted([*_torch_files(directory), *directory.glob("*.pt.part0")])
        if pt:
            shown = (st[0] if st else directory / "model.safetensors.index.json").name
            raise CheckpointError(f"{directory}: holds two checkpoints, safetensors ({shown}) and a PyTorch file "
                                  f"({pt[0].name}); pass the weights file (or index) of the one to load")
    if (directory / "model.safetensors.index.json").is_file():
        return "safetensors", safetensors_index_files(directory / "model.safetensors.index.json")
    if st:
        return "safetensors", st
    if (directory / "pytorch_model.bin.index.json").is_file():
        return "torch", safetensors_index_files(directory / "pytorch_model.bin.index.json")
    bins = sorted(directory.glob("pytorch_model*.bin"))
    if bins:
        return "torch", bins
    pts = _torch_files(directory)
    if len(pts) > 1:
        raise CheckpointError(f"{directory}: several PyTorch files ({', '.join(p.name for p in pts)}); pass one of them")
    if pts:
        return "torch", pts
    parts = sorted(directory.glob("*.pt.part0"))
    if len(parts) > 1:
        raise CheckpointError(f"{directory}: several split checkpoints; pass one of their .part0 files")
    if parts:
        return "torch", split_parts(parts[0])
    st = sorted(directory.glob("*.safetensors"))
    if len(st) == 1:
        return "safetensors", st
    raise CheckpointError(f"{directory}: no weights found (expected *.safetensors, pytorch_model*.bin, *.pt, *.pth, "
                          "*.ckpt or *.pt.part0)")


def _open_weights(kind: str, files: list[Path]) -> TensorSource:
    return open_safetensors(files) if kind == "safetensors" else open_torch(files)


def open_checkpoint(path: str | Path, config: ModelConfig | None = None) -> Checkpoint:
    """Detect the format of a checkpoint file or directory and open it lazily.

    ``config`` overrides any config file found (the registry passes the published config this way).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if not path.is_file() and not path.is_dir():
        # else read as the folder around it: /dev/null was "/dev: no weights found"
        raise CheckpointError(f"{path}: not a regular file or a directory (a device, pipe or socket); "
                              "pass the checkpoint's weights file or folder")
    directory = path if path.is_dir() else path.parent
    if path.is_dir() and not any(path.iterdir()):
        raise CheckpointError(f"{path}: empty directory, no checkpoint in it")

    # weights: the file given, or whatever the directory holds
    if path.is_file():
        name = path.name
        shard = re.search(r"-(\d+)-of-(\d+)\.(safetensors|bin)$", name)
        if shard and int(shard.group(2)) > 1:  # else "missing tensor" for the first one in another shard
            raise CheckpointError(f"{path}: is shard {int(shard.group(1))} of {int(shard.group(2))} of a sharded "
                                  "checkpoint; pass its folder (or its .index.json)")
        if name.endswith(".safetensors"):
            kind, files = "safetensors", [path]
        elif name.endswith(".index.json"):
            kind = "safetensors" if ".safetensors." in name else "torch"
            files = safetensors_index_files(path)
        elif re.search(r"\.pt\.part\d+$", name):
            kind, files = "torch", split_parts(path.with_name(name.rsplit(".part", 1)[0] + ".part0"))
        elif name.endswith((".pt", ".bin", ".pth", ".ckpt")):
            kind, files = "torch", [path]
        elif name.endswith((".yml", ".yaml", ".json")):
            kind, files = _find_weights(directory)
        else:
            raise CheckpointError(f"{path}: unrecognised checkpoint file (expected .safetensors, .pt, .bin, .pt.partN, or a directory)")
    else:
        kind, files = _find_weights(directory)

    source = _open_weights(kind, files)
    if not source.keys():
        raise CheckpointError(f"{source.description or path}: holds no tensors")

    # config: explicit, a native config.json, an inference yml (wins, as in the reference loaders), an HF config.json
    fmt, parsed = None, config
    cfg_json = directory / "config.json"
    json_d = _read_json(cfg_json) if cfg_json.is_file() else None
    layout = community.detect_layout(source.keys())
    if layout is not None:
        if parsed is None and layout == community.AQUILES:
            parsed = community.aquiles_config(json_d, cfg_json)
        elif parsed is None:
            parsed = community.wip_config(source, json_d, cfg_json)
        resolver = community.community_resolver(layout, parsed, source, _vortex_resolver(parsed, source))
        return Checkpoint(path=path, format=layout, config=parsed, source=source, resolve=resolver,
                          ignorable=community.community_ignorable(layout, _is_extra))
    # a native config describes safetensors only: a .pt passed beside it is read with its own yml
    if json_d is not None and str(json_d.get("format", "")).startswith("evo-cli/") and kind == "safetensors":
        fmt = "native"
        parsed = parsed or ModelConfig.from_native(json_d, str(cfg_json))
    else:
        ymls = [path] if path.suffix in (".yml", ".yaml") else sorted([*directory.glob("*.yml"), *directory.glob("*.yaml")])
        typed = [(y, _read_yaml(y)) for y in ymls]
        typed = [(y, d, _yaml_family(d)) for y, d in typed if _yaml_family(d)]
        if len(typed) > 1:
            stem = files[0].name.split(".")[0]
            typed = [t for t in typed if t[0].stem == stem] or typed
            if len(typed) > 1:
                raise CheckpointError(f"{directory}: several model configs ({', '.join(t[0].name for t in typed)}); pass the weights file")
        if typed:
            y, d, family = typed[0]
            fmt = "evo1" if family == "evo1" else "vortex"
            parsed = parsed or (ModelConfig.from_evo1(d, str(y)) if family == "evo1" else ModelConfig.from_evo2(d, str(y)))
        elif json_d is not None and (json_d.get("model_type") == "stripedhyena" or "hyena_layer_idxs" in json_d):
            fmt = "evo1"
            parsed = parsed or ModelConfig.from_evo1(json_d, str(cfg_json))
        elif parsed is not None:
            fmt = {"evo1": "evo1", "evo2": "vortex"}[parsed.family]
        else:
            raise CheckpointError(f"{directory}: no model config found (config.json or an Evo yml beside the weights)")

    probe = lambda: None  # noqa: E731
    if fmt == "native":
        resolver, probe = _native_resolver(parsed, source), _native_probe(source)
    elif fmt == "evo1":
        resolver = _evo1_resolver(parsed, source)
    else:
        resolver, probe = _vortex_resolver(parsed, source), _te_probe(source)
    return Checkpoint(path=path, format=fmt, config=parsed, source=source, resolve=resolver, ignorable=_is_extra,
                      fp8_state=probe)
