"""Our native checkpoint: ``config.json`` + sharded ``model-*.safetensors`` + index, in the runtime's
own layout, so that loading is a memory map with no conversion.

Each ``nn.Linear`` weight [out, in] is stored transposed, as ``<name>.T`` [in, out]: a CPU model
keeps these weights column-major (``StripedHyena._cpu_gemv_layout``), and the transpose of the
mapped tensor is exactly that, with nothing copied. Checkpoints written before store ``<name>``
[out, in] and still load (the layout is then made at load, in memory)."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from safetensors.torch import save_file

from evo_cli.errors import CheckpointError, OutputError, whole_number
from evo_cli.io.atomic import _umask, output_dir, remove_stale_temporaries, temporary_prefix, write_failure

DEFAULT_SHARD_BYTES = 4 << 30


# the nn.Linear weights of a StripedHyena, which a native checkpoint stores transposed
_LINEAR_WEIGHT = re.compile(r"blocks\.\d+\.(projections|out_filter_dense|mlp\.l[123]|inner_mha_cls\.(Wqkv|out_proj))\.weight")


def is_linear_weight(name: str) -> bool:
    """Whether the state-dict entry ``name`` is an ``nn.Linear`` weight (stored as ``transposed_key``)."""
    return _LINEAR_WEIGHT.fullmatch(name) is not None


def transposed_key(name: str) -> str:
    """The key under which a native checkpoint stores the transpose of the ``nn.Linear`` weight ``name``."""
    return name + ".T"


def check_shard_bytes(max_shard_bytes) -> None:
    """An ``InputError`` unless ``max_shard_bytes`` is a whole number of at least 1 (0 wrote one file per tensor)."""
    whole_number(max_shard_bytes, "max_shard_bytes", 1)


def save_native(model, directory: str | Path, max_shard_bytes: int = DEFAULT_SHARD_BYTES, metadata: dict | None = None) -> Path:
    """Write ``model`` (a StripedHyena) to ``directory`` atomically (built beside it, then renamed).

    The directory must not exist or be empty; a symbolic link is written through (``output_dir``).
    Returns its path."""
    check_shard_bytes(max_shard_bytes)
    out = output_dir(directory)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CheckpointError(f"{out}: exists and is not an empty directory")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)
        tmp = Path(tempfile.mkdtemp(prefix=temporary_prefix(out), dir=out.parent))
    except OSError as err:
        raise OutputError(write_failure(out, err)) from None
    try:
        tensors = {}
        for k, v in model.state_dict().items():
            v = v.detach().cpu()
            if is_linear_weight(k) and v.dim() == 2:
                tensors[transposed_key(k)] = v.t().contiguous()
            else:
                tensors[k] = v.contiguous()
        shards, current, size = [], {}, 0
        for k, v in tensors.items():
            nbytes = v.numel() * v.element_size()
            if current and size + nbytes > max_shard_bytes:
                shards.append(current)
                current, size = {}, 0
            current[k] = v
            size += nbytes
        shards.append(current)
        weight_map = {}
        meta = {k: str(v) for k, v in (metadata or {}).items()}
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(tmp / name), metadata={"format": "pt", **meta})
            weight_map.update({k: name for k in shard})
        total = sum(v.numel() * v.element_size() for v in tensors.values())
        (tmp / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n"
        )
        (tmp / "config.json").write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
        # mkdtemp creates 0700: give the checkpoint the permissions a plain mkdir / open would
        mask = _umask()
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~mask)
        os.chmod(tmp, 0o777 & ~mask)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except OSError as err:  # a full disk: one line naming the output
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(write_failure(out, err)) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
