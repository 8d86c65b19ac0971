"""Lazy readers for the tensor files of a checkpoint: safetensors (memory-mapped) and torch pickles.

``torch.load`` always runs with ``weights_only=True``: a checkpoint can hold tensors, never code.
Transformer Engine's ``_extra_state`` entries are pickled ``io.BytesIO`` objects, the one extra type
allowed. Byte-split vortex files (``<name>.pt.part0``, ``.part1``, ...) are read in order through one
file object, without writing a merged copy.
"""

from __future__ import annotations

import io
import json
import pickle
import pickletools
import re
import warnings
import zipfile
from pathlib import Path

import torch

from evo_cli.errors import CheckpointError


class TensorSource:
    """Tensors by key, read on demand. ``where(key)`` names the file holding a key, for errors."""

    def __init__(self, files: dict[str, Path], getter, description: str):
        self._files = files
        self._get = getter
        self.description = description

    def keys(self) -> list[str]:
        return list(self._files)

    def __contains__(self, key: str) -> bool:
        return key in self._files

    def where(self, key: str) -> Path:
        return self._files[key]

    def tensor(self, key: str) -> torch.Tensor:
        """``get(key)``, which must be a dense tensor: else one line naming the key and its file."""
        t = self.get(key)
        if not isinstance(t, torch.Tensor) or t.layout != torch.strided:
            what = f"a {t.layout} tensor" if isinstance(t, torch.Tensor) else f"a {type(t).__name__}"
            raise CheckpointError(f"{self.where(key)}: {key!r} holds {what}, not a dense tensor")
        if t.is_meta:  # torch.save of a model built on the meta device: shapes, no values
            raise CheckpointError(f"{self.where(key)}: {key!r} holds a meta tensor (a shape with no values: saved "
                                  "from a model whose weights were never loaded)")
        return t

    def get(self, key: str) -> torch.Tensor:
        try:
            return self._get(key)
        except CheckpointError:
            raise
        except Exception as err:  # a corrupt tensor record surfaces here, not at open time
            raise CheckpointError(f"{self._files[key]}: cannot read tensor {key!r} ({_short(err)})") from None


def _short(err: Exception) -> str:
    """The first line of ``err``'s message, and of a long one its first sentence (torch's zip reader adds
    four sentences of advice)."""
    line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return line.split(". ")[0] if len(line) > 160 else line


def _denied(err: Exception) -> bool:
    """A read refused by the file's permissions (not damage): safetensors reports it as a plain OSError."""
    return isinstance(err, PermissionError) or "(os error 13)" in str(err)


def _content(path) -> str | None:
    """What the first bytes of the file ``path`` say it is: ``safetensors`` (an 8-byte little-endian header
    size, then a JSON object), ``torch`` (a zip archive, or a pickle: torch.save's formats), else None."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
            size = fh.seek(0, 2)
    except OSError:
        return None
    if len(head) == 9 and head[8:] == b"{":  # (a header size whose low byte is 0x80 starts like a pickle)
        return "safetensors" if 2 <= int.from_bytes(head[:8], "little") <= size - 8 else None
    if head.startswith(b"PK\x03\x04") or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")):
        return "torch"
    return None


def open_safetensors(files: list[Path]) -> TensorSource:
    """One or several safetensors files (shards); keys must be unique across them."""
    from safetensors import safe_open

    handles, where = {}, {}
    for f in files:
        if not f.is_file():
            raise CheckpointError(f"{f}: weight file listed by the checkpoint is missing")
        try:
            h = safe_open(str(f), framework="pt", device="cpu")
        except Exception as err:
            if _denied(err):
                raise CheckpointError(f"{f}: cannot read it (permission denied)") from None
            if _content(f) == "torch":
                raise CheckpointError(f"{f}: is a PyTorch file (torch.save), not safetensors; rename it to .pt") from None
            raise CheckpointError(f"{f}: not a readable safetensors file, truncated or corrupt ({_short(err)})") from None
        handles[f] = h
        for k in h.keys():
            if k in where:
                raise CheckpointError(f"{f}: tensor {k!r} also appears in {where[k]}")
            where[k] = f
    return TensorSource(where, lambda k: handles[where[k]].get_tensor(k), ", ".join(str(f) for f in files))


def safetensors_index_files(index: Path) -> list[Path]:
    """The shard files named by a ``*.safetensors.index.json`` / ``*.bin.index.json``."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{index}: not a valid weight index ({_short(err)})") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) and v for v in weight_map.values()):
        raise CheckpointError(f"{index}: not a valid weight index (weight_map must map tensor names to file names)")
    names = list(dict.fromkeys(weight_map.values()))
    for name in names:
        # a shard is a file of this directory (or below it), never a path that leaves it
        if Path(name).is_absolute() or ".." in Path(name).parts or "\\" in name:
            raise CheckpointError(f"{index}: shard {name!r} is outside the checkpoint directory; refused")
    return [index.parent / name for name in names]


class _MultiPartFile(io.RawIOBase):
    """The byte-wise concatenation of several files, readable and seekable as one."""

    def __init__(self, parts: list[Path]):
        self._parts = parts
        self._sizes = [p.stat().st_size for p in parts]
        self._starts = [sum(self._sizes[:i]) for i in range(len(parts))]
        self._size = sum(self._sizes)
        self._pos = 0
        self._handles = [open(p, "rb") for p in parts]

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self._pos

    def seek(self, offset, whence=io.SEEK_SET):
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buf):
        view = memoryview(buf).cast("B")
        done = 0
        while done < len(view) and self._pos < self._size:
            i = max(j for j, s in enumerate(self._starts) if s <= self._pos)
            h = self._handles[i]
            h.seek(self._pos - self._starts[i])
            n = h.readinto(view[done : done + min(len(view) - done, self._sizes[i] - (self._pos - self._starts[i]))])
            if not n:
                break
            done += n
            self._pos += n
        return done

    def close(self):
        for h in self._handles:
            h.close()
        super().close()


_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}
_TENSOR_GLOBALS = ("torch.", "collections.OrderedDict", "io.BytesIO")


def _pickled_globals(path: Path) -> list[tuple[str | None, str]]:
    """(key or None, ``module.name``) of each class or function the checkpoint's pickle names, found by
    reading its opcodes (pickletools executes nothing); the key is the last string pushed before it."""
    found, strings = [], []
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                name = next(n for n in zf.namelist() if n.endswith("data.pkl"))
                stream = io.BytesIO(zf.read(name))
        else:
            stream = open(path, "rb")
        with stream:
            for _ in range(4):  # legacy files: magic number, protocol, sys info, then the object
                for op, arg, _pos in pickletools.genops(stream):
                    if op.name in _STRING_OPS:
                        strings.append(arg)
                    elif op.name == "GLOBAL":
                        found.append((strings[-1] if strings else None, arg.replace(" ", ".")))
                    elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                        found.append((strings[-3] if len(strings) >= 3 else None, f"{strings[-2]}.{strings[-1]}"))
    except Exception:  # a damaged pickle: whatever was found before the damage
        pass
    return found


def _refused(label: Path, obj, err: Exception) -> str:
    """One line of our own for a pickle torch's weights-only loader refused: the offending type and key."""
    named = re.search(r"GLOBAL (\S+) was not an allowed global", str(err))
    found = _pickled_globals(Path(obj)) if isinstance(obj, (str, Path)) else []
    if named:
        hit = next(((k, g) for k, g in found if g == named.group(1) or g.endswith("." + named.group(1))),
                   (None, named.group(1)))
    else:
        hit = next(((k, g) for k, g in found if not g.startswith(_TENSOR_GLOBALS)), None)
    if hit is None:
        detail = str(err).split("WeightsUnpickler error:", 1)[-1].strip()
        return (f"{label}: a pickle that torch's weights-only loader cannot read "
                f"({detail.splitlines()[0] if detail else type(err).__name__}); refusing to unpickle it: "
                f"re-save the tensors with torch.save or as safetensors")
    key, kind = hit
    where = f"key {key!r} holds" if key else "holds"
    return f"{label}: {where} a pickled {kind}, not a tensor; refusing to unpickle it (only tensors are loaded)"


def is_torchscript(f) -> bool:
    """Whether ``f`` (a path, or a seekable binary file: left at its start) is a TorchScript archive
    (``torch.jit.save``), which ``torch.load`` would hand to ``torch.jit.load`` to run its code."""
    try:
        if not zipfile.is_zipfile(f):
            return False
        with zipfile.ZipFile(f) as z:
            return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False
    finally:
        if hasattr(f, "seek"):
            f.seek(0)


def _torch_load(obj, label: Path, mmap: bool) -> dict:
    if isinstance(obj, str) and _content(obj) == "safetensors":  # else "a pickle ... cannot read (Unsupported operand)"
        raise CheckpointError(f"{label}: is a safetensors file, not a PyTorch pickle; rename it to .safetensors")
    if is_torchscript(obj):
        raise CheckpointError(f"{label}: is a TorchScript program (torch.jit.save), not a state dict of tensors; "
                              "refusing to load it: save the model's state_dict() with torch.save or as safetensors")
    try:
        with torch.serialization.safe_globals([io.BytesIO]), warnings.catch_warnings():
            # torch warns about the pickle protocol of legacy files; the load below says what matters
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            sd = torch.load(obj, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        raise CheckpointError(_refused(label, obj, err)) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as err:
        if _denied(err):
            raise CheckpointError(f"{label}: cannot read it (permission denied)") from None
        raise CheckpointError(f"{label}: not a readable PyTorch checkpoint, truncated or corrupt ({_short(err)})") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise CheckpointError(f"{label}: expected a state dict, found {type(sd).__name__}")
    return sd


def open_torch(files: list[Path]) -> TensorSource:
    """Torch pickles (``.pt`` / ``.bin``): one file, several shards, or the parts of one split file
    (pass the parts in order; they are detected by their ``.partN`` suffix)."""
    where, tensors = {}, {}
    if files and all(_part_number(f) is not None for f in files):
        label = files[0].with_name(files[0].name.rsplit(".part", 1)[0])
        groups = [(label, _MultiPartFile(files), False)]
    else:
        groups = [(f, f, True) for f in files]
    for label, obj, mmap in groups:
        if isinstance(obj, Path) and not obj.is_file():
            raise CheckpointError(f"{obj}: weight file listed by the checkpoint is missing")
        try:
            sd = _torch_load(str(obj) if isinstance(obj, Path) else obj, label, mmap)
        except CheckpointError as err:
            if not isinstance(obj, Path):  # nothing in the parts says how many there are: a lost last one reads as damage
                raise CheckpointError(f"{err}; read as {len(files)} part(s), {files[0].name} to {files[-1].name}: "
                                      "is a later part missing or incomplete?") from None
            if not mmap:
                raise
            # legacy (pre-zip) pickles cannot be memory-mapped
            sd = _torch_load(str(obj), label, mmap=False)
        finally:
            if not isinstance(obj, Path):
                obj.close()  # the parts of a split file: read into memory (torch.load maps only one path)
        for k, v in sd.items():
            if not isinstance(k, str):
                raise CheckpointError(f"{label}: key {k!r} is a {type(k).__name__}, not a name: expected a state "
                                      "dict of named tensors")
            if k in where:
                raise CheckpointError(f"{label}: tensor {k!r} also appears in {where[k]}")
            where[k] = label
            tensors[k] = v
    return TensorSource(where, tensors.__getitem__, ", ".join(str(g[0]) for g in groups))


def _part_number(f: Path) -> int | None:
    suffix = f.name.rsplit(".part", 1)
    if len(suffix) == 2 and suffix[1].isdigit():
        return int(suffix[1])
    return None


def split_parts(first: Path) -> list[Path]:
    """``x.pt.part0`` -> all parts ``x.pt.part0..N`` in numeric order; a gap is an error."""
    stem = first.name.rsplit(".part", 1)[0]
    parts = sorted((p for p in first.parent.glob(f"{stem}.part*") if _part_number(p) is not None), key=_part_number)
    numbers = [_part_number(p) for p in parts]
    if numbers != list(range(len(parts))):
        missing = next(i for i in range(len(parts) + 1) if i not in numbers)
        raise CheckpointError(f"{first.parent / stem}.part{missing}: missing part of a split checkpoint")
    return parts
