"""What identifies a resumable run (``io/partial.py``): its input files, the model and where it runs.

A progress file is resumed only by a run with the same settings: the same inputs (path, size and
modification time), the same model weights, device type (not its number: the ranks of a distributed
run, ``distributed.py``, each have their own GPU), dtype, FP8 mode, kernel backend and evo version,
and the same options that change the output."""

from __future__ import annotations

import hashlib
import os
import shlex
from pathlib import Path

from evo_cli._version import __version__
from evo_cli.errors import InputError


def model_fingerprint(model) -> str:
    """A short hash of the model's config and embedding weights: which model a progress file belongs to."""
    h = hashlib.sha1(repr(model.config).encode())
    h.update(model.embedding_layer.weight.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def file_identity(key: str, path: str | Path) -> dict:
    """Path, size and modification time of an input: an edit that keeps the size still changes the time."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err.strerror or err})") from None
    return {key: os.path.abspath(path), f"{key}_bytes": st.st_size, f"{key}_mtime_ns": st.st_mtime_ns}


def kernel_backend(model) -> str:
    """The kernel backend the model's ops run with here (``triton`` or ``torch``)."""
    from evo_cli.kernels import resolve_backend

    return resolve_backend(getattr(model, "kernels", "auto"), model.device)


def run_settings(model, inputs: dict[str, str | Path], **options) -> dict:
    """The settings a progress file records: ``inputs`` ({key: path}) identified by ``file_identity``,
    the model, device, dtype, FP8 mode, kernels and version, and ``options``."""
    settings = {}
    for key, path in inputs.items():
        settings.update(file_identity(key, path))
    return {**settings, "model": model_fingerprint(model), "device": model.device.type,
            "dtype": str(model.dtype).removeprefix("torch."), "fp8": getattr(model, "fp8", "off"),
            "kernels": kernel_backend(model), "version": __version__, **options}


def output_metadata(model, model_name: str, command: str | None, **settings) -> dict:
    """What every output records about its run, the same keys in every command (Parquet: one JSON
    key ``evo``; VCF: ``##evo_<key>`` lines): the evo version, the full command line (every option
    with its value, defaults included), the model as named and the resolved runtime, then ``settings``."""
    return {"version": __version__, "command": command, "model": str(model_name), "model_name": model.config.name,
            "dtype": str(model.dtype).removeprefix("torch."), "device": str(model.device),
            "kernels": kernel_backend(model), "fp8": getattr(model, "fp8", None), **settings}


# the options that say where the model runs, not what a run computes: the same results on one GPU or
# another, split or not, with any number of GPUs per rank (the device type aside, which run_settings keeps)
PLACEMENT_OPTIONS = ("--device", "--devices-per-rank")


def progress_metadata(metadata: dict | None) -> dict:
    """``metadata`` (``output_metadata``) as a run's progress settings keep it: without ``device``, whose
    GPU number differs between the ranks of a distributed run (rank r runs on cuda:r) and between a run
    and its resumption on another GPU, and with a ``command`` without its ``PLACEMENT_OPTIONS``, so that
    every command resumes across placements alike; ``run_settings`` keeps the device type."""
    kept = {k: v for k, v in (metadata or {}).items() if k != "device"}
    if isinstance(kept.get("command"), str):
        kept["command"] = without_placement(kept["command"])
    return kept


def without_placement(command: str) -> str:
    """A recorded command line (``cli.options.command_line``: every option as ``--name value``) without
    its ``PLACEMENT_OPTIONS`` and their values."""
    args, kept = shlex.split(command), []
    i = 0
    while i < len(args):
        if args[i] in PLACEMENT_OPTIONS:
            i += 2
            continue
        kept.append(args[i])
        i += 1
    return shlex.join(kept)


def record_chunks(lengths: list[int], per_chunk: int, alone_over: int | None) -> list[tuple[int, int]]:
    """The ``[start, end)`` record slices a run saves its progress in: consecutive runs of at most
    ``per_chunk`` records, except that a record of more than ``alone_over`` tokens (one that runs
    alone, in chunks with a carried state; None: none does) is a chunk of its own, so that a killed run
    keeps every long record it finished. ``lengths``: tokens per record. The same input gives the same
    chunks, which resumed and distributed runs rely on."""
    chunks, start = [], 0
    for i, n in enumerate(lengths):
        if alone_over is not None and n > alone_over:
            if start < i:
                chunks.append((start, i))
            chunks.append((i, i + 1))
            start = i + 1
        elif i + 1 - start == per_chunk:
            chunks.append((start, i + 1))
            start = i + 1
    if start < len(lengths):
        chunks.append((start, len(lengths)))
    return chunks
