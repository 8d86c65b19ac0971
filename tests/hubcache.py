"""A fake Hugging Face hub cache on disk, in huggingface_hub's layout:
``models--{org}--{name}/blobs/<sha256>``, ``snapshots/<commit>/<file>`` -> ``../../blobs/<sha256>``,
``refs/<revision>`` holding the commit."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .conftest import CONFORMANCE

TINY_A = CONFORMANCE / "evo2" / "tiny_a"
C1 = CONFORMANCE / "evo1" / "c1_8k_style_L512"


def add_snapshot(cache: Path, repo: str, revision: str, files: dict[str, bytes], commit: str = "c0ffee" * 6 + "abcd") -> Path:
    """Put ``files`` (name -> content) in ``cache`` as snapshot ``commit`` of ``repo``, with ``revision``
    pointing at it. Returns the snapshot folder."""
    root = cache / f"models--{repo.replace('/', '--')}"
    snap = root / "snapshots" / commit
    for name, data in files.items():
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snap / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    ref = root / "refs" / revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(commit)
    return snap


def split_bytes(data: bytes, parts: int) -> list[bytes]:
    cuts = [len(data) * i // parts for i in range(parts + 1)]
    return [data[cuts[i] : cuts[i + 1]] for i in range(parts)]


def evo1_published_files(tmp: Path, case: Path = C1) -> dict[str, bytes]:
    """An Evo 1 conformance checkpoint re-sharded as the published repos are: three shards + index + config.json."""
    tensors = {}
    for shard in sorted(case.glob("model-*.safetensors")):
        tensors.update(load_file(str(shard)))
    keys = sorted(tensors)
    groups = [keys[i::3] for i in range(3)]
    files, weight_map = {}, {}
    for i, group in enumerate(groups):
        name = f"model-{i + 1:05d}-of-00003.safetensors"
        save_file({k: tensors[k] for k in group}, str(tmp / name), metadata={"format": "pt"})
        files[name] = (tmp / name).read_bytes()
        weight_map.update({k: name for k in group})
    import json

    files["model.safetensors.index.json"] = json.dumps({"metadata": {}, "weight_map": weight_map}).encode()
    files["config.json"] = (case / "config.json").read_bytes()
    return files


def tiny_ids() -> torch.Tensor:
    return load_file(str(TINY_A / "vectors.safetensors"))["input_ids"][:, :48]
