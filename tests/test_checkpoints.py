"""Checkpoint formats and the one-line errors for broken ones."""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import shutil
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import evo_cli
from evo_cli.checkpoints import describe_checkpoint
from evo_cli.checkpoints.native import save_native
from evo_cli.errors import CheckpointError, ConfigError

from .conftest import CONFORMANCE

TINY_A = CONFORMANCE / "evo2" / "tiny_a"
TINY_B = CONFORMANCE / "evo2" / "tiny_b_long"
C1 = CONFORMANCE / "evo1" / "c1_8k_style_L512"


def _logits(model, ids):
    with torch.no_grad():
        return model(ids)


@pytest.fixture
def ids():
    return load_file(str(TINY_A / "vectors.safetensors"))["input_ids"][:, :64]


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for p in dst.iterdir():
        p.chmod(0o644)
    return dst


def _error(path, match):
    with pytest.raises((CheckpointError, ConfigError), match=match) as e:
        evo_cli.load_model(path, device="cpu")
    assert "\n" not in str(e.value)
    return str(e.value)


def test_vortex_split_parts_load_in_place(tmp_path, ids):
    """``.pt.part0..N`` are read in order as one file, with no merged copy written."""
    d = tmp_path / "split"
    d.mkdir()
    shutil.copy(TINY_A / "config.yml", d)
    data = (TINY_A / "weights.pt").read_bytes()
    cuts = [0, 1000, len(data) // 2, len(data)]
    for i in range(3):
        (d / f"tiny_a.pt.part{i}").write_bytes(data[cuts[i] : cuts[i + 1]])
    before = sorted(p.name for p in d.iterdir())
    model = evo_cli.load_model(d, device="cpu")
    ref = evo_cli.load_model(TINY_A, device="cpu")
    assert torch.equal(_logits(model, ids), _logits(ref, ids))
    assert sorted(p.name for p in d.iterdir()) == before
    # a single part named directly finds its siblings
    assert torch.equal(_logits(evo_cli.load_model(d / "tiny_a.pt.part1", device="cpu"), ids), _logits(ref, ids))


def test_missing_part_is_named(tmp_path):
    d = _copy(TINY_A, tmp_path / "c")
    (d / "weights.pt").rename(d / "w.pt.part0")
    (d / "w.pt.part2").write_bytes(b"x")
    assert "w.pt.part1" in _error(d, "missing part")


def test_a_lost_last_part_is_suggested(tmp_path):
    """Without its last part a split file read as damaged, with torch's four sentences of advice; nothing
    said that it was read from parts."""
    d = _copy(TINY_A, tmp_path / "c")
    data = (d / "weights.pt").read_bytes()
    (d / "weights.pt").unlink()
    (d / "w.pt.part0").write_bytes(data[: len(data) // 2])
    msg = _error(d, r"w.pt: not a readable PyTorch checkpoint, truncated or corrupt \(PytorchStreamReader failed "
                    r"reading zip archive: failed finding central directory\); read as 1 part\(s\), w.pt.part0 to "
                    r"w.pt.part0: is a later part missing or incomplete\?$")
    assert "miniz" not in msg


def test_te_extra_state_and_unembed_are_ignored():
    """tiny_b_long carries unembed.weight and BytesIO _extra_state entries, like published files."""
    sd = torch.load(TINY_B / "weights.pt", weights_only=False)
    assert any(k.endswith("_extra_state") for k in sd) and "unembed.weight" in sd
    evo_cli.load_model(TINY_B, device="cpu")


def test_pickled_code_is_refused(tmp_path):
    """One line of our own naming the file, the key and the type; no torch paragraph, no warning."""
    d = _copy(TINY_A, tmp_path / "c")
    sd = torch.load(d / "weights.pt", weights_only=True)
    sd["evil"] = Path("/")  # any non-tensor class makes weights_only refuse the file
    torch.save(sd, d / "weights.pt")
    msg = _error(d, "refusing to unpickle")
    assert msg == (f"{d / 'weights.pt'}: key 'evil' holds a pickled pathlib.PosixPath, not a tensor; refusing to "
                   f"unpickle it (only tensors are loaded)")
    # a legacy (non-zip) pickle of protocol 4 naming a function: same line, and torch's protocol warning is kept off
    with open(d / "weights.pt", "wb") as fh:
        pickle.dump({"blocks.0.x": 1.0, "payload": os.system}, fh, protocol=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        msg = _error(d, r"weights.pt: key 'payload' holds a pickled (posix|os|nt)\.system, not a tensor")
    assert not caught and "Weights only" not in msg and "PyTorch 2.6" not in msg
    # a pickle torch cannot read safely, with no foreign type in it: still one line of our own
    with open(d / "weights.pt", "wb") as fh:
        pickle.dump({"blocks.0.x": 1.0}, fh, protocol=4)
    msg = _error(d, r"weights.pt: a pickle that torch's weights-only loader cannot read \(Unsupported operand")
    assert "PyTorch 2.6" not in msg


def test_a_torchscript_file_is_refused_in_one_line_without_warnings(tmp_path):
    """torch.load hands TorchScript to torch.jit.load (code); weights-only refused it, but after two warnings
    and a paragraph calling the file corrupt and suggesting weights_only=False."""
    d = _copy(TINY_A, tmp_path / "c")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit's own, while making the file
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(d / "weights.pt"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        msg = _error(d, r"weights.pt: is a TorchScript program \(torch.jit.save\), not a state dict of tensors; refusing")
    assert not caught and "weights_only" not in msg


@pytest.mark.parametrize("weight_map, match", [
    ({"a": "../../etc/passwd"}, r"shard '../../etc/passwd' is outside the checkpoint directory; refused"),
    ({"a": "/etc/passwd"}, r"shard '/etc/passwd' is outside the checkpoint directory"),
    (["model-00001-of-00002.safetensors"], r"weight_map must map tensor names to file names"),
    ({"a": 3}, r"weight_map must map tensor names to file names"),
])
def test_weight_index_stays_inside_the_checkpoint(tmp_path, weight_map, match):
    d = _copy(C1, tmp_path / "c")
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert "model.safetensors.index.json" in _error(d, match)


def test_missing_key(tmp_path):
    d = _copy(TINY_A, tmp_path / "c")
    sd = torch.load(d / "weights.pt", weights_only=True)
    del sd["blocks.2.filter.log_poles"]
    torch.save(sd, d / "weights.pt")
    msg = _error(d, "missing tensor 'blocks.2.filter.log_poles'")
    assert "weights.pt" in msg


def test_one_shard_or_a_wrapped_state_dict_says_why_tensors_are_missing(tmp_path):
    """"missing tensor" alone, for one shard of several given as the checkpoint, or a training wrapper's
    state dict (keys under ``model.``, or the dict nested under ``module``), left the user guessing."""
    _error(C1 / "model-00001-of-00002.safetensors",
           r"model-00001-of-00002.safetensors: is shard 1 of 2 of a sharded checkpoint; pass its folder \(or its .index.json\)$")
    d = _copy(TINY_A, tmp_path / "c")
    sd = torch.load(d / "weights.pt", weights_only=True)
    torch.save({"model." + k: v for k, v in sd.items()}, d / "weights.pt")
    _error(d, r"missing tensor 'embedding_layer.weight' \(needed for embedding_layer.weight\); the file has "
              r"'model.embedding_layer.weight': strip the prefix 'model.' from its keys$")
    torch.save({"module": sd, "epoch": 3}, d / "weights.pt")
    _error(d, r"missing tensor 'embedding_layer.weight' \(needed for embedding_layer.weight\); the file nests a dict "
              r"under 'module': save that dict of tensors itself$")


def test_wrong_shape(tmp_path):
    d = _copy(C1, tmp_path / "c")
    shard = d / "model-00001-of-00002.safetensors"
    tensors = load_file(str(shard))
    tensors["backbone.blocks.0.mlp.l1.weight"] = tensors["backbone.blocks.0.mlp.l1.weight"][:10]
    save_file(tensors, str(shard))
    msg = _error(d, r"'backbone.blocks.0.mlp.l1.weight' has shape \[10, 64\]")
    assert shard.name in msg


@pytest.mark.parametrize("heads", [1, 2, 8])
def test_evo1_with_the_wrong_number_of_heads_is_refused(tmp_path, heads):
    """Evo 1 weights have the same shapes for any head count, and the stored rotary frequencies were not
    read: a wrong num_attention_heads loaded and gave wrong logits. Their length is the head size."""
    d = _copy(C1, tmp_path / "c")
    cfg = yaml.safe_load((d / "evo1_inference.yml").read_text())
    (d / "evo1_inference.yml").write_text(yaml.safe_dump(dict(cfg, num_attention_heads=heads)))
    _error(d, rf"tensor 'backbone.blocks.2.inner_mha_cls.rotary_emb.inv_freq' has shape \[8\], the config needs "
              rf"\[{64 // heads // 2}\]: its head size \(hidden_size / num_attention_heads\) is not the weights'$")


def test_unknown_config_field(tmp_path):
    d = _copy(TINY_A, tmp_path / "c")
    cfg = yaml.safe_load((d / "config.yml").read_text())
    cfg["hidden_sise"] = 64
    (d / "config.yml").write_text(yaml.safe_dump(cfg))
    assert "config.yml" in _error(d, "unknown config field 'hidden_sise'")


def test_unknown_hf_config_field(tmp_path):
    d = _copy(C1, tmp_path / "c")
    (d / "evo1_inference.yml").unlink()
    cfg = json.loads((d / "config.json").read_text())
    cfg["num_layerz"] = 3
    (d / "config.json").write_text(json.dumps(cfg))
    _error(d, "config.json: unknown config field 'num_layerz'")


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_truncated_file(tmp_path, fmt):
    if fmt == "pt":
        d = _copy(TINY_A, tmp_path / "c")
        f = d / "weights.pt"
    else:
        d = _copy(C1, tmp_path / "c")
        f = d / "model-00002-of-00002.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    assert f.name in _error(d, "truncated or corrupt")


def test_a_file_under_the_other_format_s_extension_says_so(tmp_path):
    """A torch.save file named .safetensors read as "header too large", and a safetensors file named .pt as
    a pickle torch "cannot read (Unsupported operand 56)", with advice to re-save it."""
    d = _copy(TINY_A, tmp_path / "pt")
    (d / "weights.pt").rename(d / "model.safetensors")
    _error(d, r"model.safetensors: is a PyTorch file \(torch.save\), not safetensors; rename it to .pt$")
    d = _copy(TINY_A, tmp_path / "st")
    (d / "weights.pt").unlink()
    shutil.copy(C1 / "model-00001-of-00002.safetensors", d / "weights.pt")
    _error(d, r"weights.pt: is a safetensors file, not a PyTorch pickle; rename it to .safetensors$")


def test_an_unreadable_weights_file_is_not_called_corrupt(monkeypatch):
    """A file we may not read (simulated: the tests run as root) read as "truncated or corrupt"."""
    import safetensors

    def denied(path, *args, **kwargs):
        raise OSError("Permission denied (os error 13)") if "safetensors" in str(path) else PermissionError(13, "Permission denied")

    monkeypatch.setattr(safetensors, "safe_open", denied)
    monkeypatch.setattr(torch, "load", denied)
    _error(C1, r"model-00001-of-00002.safetensors: cannot read it \(permission denied\)$")
    _error(TINY_A, r"weights.pt: cannot read it \(permission denied\)$")


def test_empty_directory(tmp_path):
    _error(tmp_path, "empty directory")


@pytest.mark.parametrize("name", ["model.pth", "last.ckpt"])
def test_a_folder_with_a_pth_or_ckpt_file_loads_it(tmp_path, name, ids):
    """Named directly these loaded; their folder said "no weights found"."""
    shutil.copy(TINY_A / "config.yml", tmp_path)
    shutil.copy(TINY_A / "weights.pt", tmp_path / name)
    ref = evo_cli.load_model(TINY_A, device="cpu")
    assert torch.equal(_logits(evo_cli.load_model(tmp_path, device="cpu"), ids), _logits(ref, ids))
    shutil.copy(TINY_A / "weights.pt", tmp_path)
    _error(tmp_path, rf"several PyTorch files \(({name}, weights.pt|weights.pt, {name})\); pass one of them$")


def test_no_weights(tmp_path):
    shutil.copy(TINY_A / "config.yml", tmp_path)
    _error(tmp_path, "no weights found")


def test_no_config(tmp_path):
    shutil.copy(TINY_A / "weights.pt", tmp_path)
    _error(tmp_path, "no model config found")


def test_a_device_or_pipe_is_not_read_as_its_folder(tmp_path):
    """-m /dev/null said "/dev: no weights found", and a FIFO beside checkpoints loaded the folder's."""
    shutil.copy(TINY_A / "config.yml", tmp_path)
    shutil.copy(TINY_A / "weights.pt", tmp_path)
    os.mkfifo(tmp_path / "pipe.pt")
    for path in (tmp_path / "pipe.pt", Path("/dev/null")):
        _error(path, rf"^{re.escape(str(path))}: not a regular file or a directory \(a device, pipe or socket\)")


def test_missing_path():
    _error("/no/such/checkpoint", "no such checkpoint")


def test_evo1_yml_wins_over_config_json(tmp_path, ids):
    """The evo package builds the model from its yml; config.json may disagree (here: rotary scale)."""
    d = _copy(C1, tmp_path / "c")
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(use_interpolated_rotary_pos_emb=True, rotary_emb_scaling_factor=16)
    (d / "config.json").write_text(json.dumps(cfg))
    assert evo_cli.load_model(d, device="cpu").config.rotary_scaling == 1.0
    (d / "evo1_inference.yml").unlink()
    assert evo_cli.load_model(d, device="cpu").config.rotary_scaling == 16.0


def test_evo1_torch_state_dict(tmp_path, ids):
    """``pytorch_model.bin`` with the same keys loads like the safetensors shards."""
    d = tmp_path / "bin"
    d.mkdir()
    shutil.copy(C1 / "config.json", d)
    sd = {}
    for shard in sorted(C1.glob("model-*.safetensors")):
        sd.update(load_file(str(shard)))
    torch.save(sd, d / "pytorch_model.bin")
    ref = evo_cli.load_model(C1, device="cpu")
    assert torch.allclose(_logits(evo_cli.load_model(d, device="cpu"), ids), _logits(ref, ids))


@pytest.mark.parametrize("case", [TINY_A, C1], ids=["vortex", "evo1"])
def test_native_round_trip(tmp_path, case, ids):
    model = evo_cli.load_model(case, device="cpu")
    save_native(model, tmp_path / "native", max_shard_bytes=100_000)
    assert len(list((tmp_path / "native").glob("model-*.safetensors"))) > 1
    again = evo_cli.load_model(tmp_path / "native", device="cpu")
    assert again.config == model.config
    assert torch.equal(_logits(again, ids), _logits(model, ids))


def test_bfloat16_keeps_filters_float32():
    model = evo_cli.load_model(TINY_A, device="cpu", dtype="bfloat16")
    params = dict(model.named_parameters())
    assert params["blocks.0.mlp.l1.weight"].dtype == torch.bfloat16
    assert params["blocks.2.filter.log_poles"].dtype == torch.float32
    assert params["blocks.1.filter.h"].dtype == torch.float32
    ids = torch.tensor([[65, 67, 71, 84] * 8])
    logits, want = _logits(model, ids), _logits(evo_cli.load_model(TINY_A, device="cpu", dtype="float32"), ids)
    # the float32 model's numbers within bf16 rounding (here 3% of the largest logit), not just finite ones
    assert logits.dtype == torch.float32 and (logits - want).abs().max() < 0.08 * want.abs().max()


def test_torch_forced_weights_only_says_so_for_te_state(monkeypatch):
    """TORCH_FORCE_WEIGHTS_ONLY_LOAD makes torch refuse our restricted unpickler for the published files'
    BytesIO Transformer Engine state: that read as "unreadable ... state (Can not safely load weights...)"."""
    monkeypatch.setenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(CheckpointError, match=r"weights.pt: blocks.0.projections._extra_state: Transformer Engine state "
                                              r"is read by evo's own restricted unpickler .* which "
                                              r"TORCH_FORCE_WEIGHTS_ONLY_LOAD forbids; unset it to load this checkpoint$"):
        evo_cli.load_model(TINY_B, device="cpu")


def test_bytesio_only_extra_allowed():
    """The safe-globals allow-list admits io.BytesIO and nothing else."""
    buf = io.BytesIO()
    torch.save({"x": torch.zeros(1), "meta": io.BytesIO(b"te")}, buf)
    buf.seek(0)
    with torch.serialization.safe_globals([io.BytesIO]):
        assert isinstance(torch.load(buf, weights_only=True)["meta"], io.BytesIO)


@pytest.mark.parametrize("field, value", [
    ("num_attention_heads", 0), ("hidden_size", 128.0), ("hidden_size", -128), ("hidden_size", "128"),
    ("hidden_size", True), ("hcs_filter_groups", -8), ("eps", "tiny"), ("eps", float("nan")), ("max_seqlen", 0),
    ("max_seqlen", -1), ("max_seqlen", "2048"), ("rotary_emb_base", 0), ("state_size", None),
    ("use_interpolated_rotary_pos_emb", "yes"), ("attn_layer_idxs", 3), ("mlp_activation", 1),
    ("inner_mlp_size", -5), ("proj_groups", 0),
])
def test_config_values_are_checked_at_load(tmp_path, field, value):
    """Every field's type and range is checked when the config is read: one line naming file and field."""
    d = _copy(TINY_A, tmp_path / "c")
    cfg = yaml.safe_load((d / "config.yml").read_text())
    cfg[field] = value
    (d / "config.yml").write_text(yaml.safe_dump(cfg))
    msg = _error(d, rf"config.yml: (missing config field )?'?{field}'?( |$)")
    assert "must be" in msg or "missing" in msg


@pytest.mark.parametrize("field, value", [
    ("num_heads", 0), ("hidden_size", 128.0), ("eps", "tiny"), ("rotary_scaling", 0), ("max_seqlen", "2048"),
    ("vocab_size", 4), ("short_filter_bias", "false"), ("block_types", "hcs"), ("num_kv_heads", -1),
])
def test_native_config_values_are_checked(tmp_path, field, value):
    d = save_native(evo_cli.load_model(TINY_A, device="cpu"), tmp_path / "native")
    cfg = json.loads((d / "config.json").read_text())
    cfg[field] = value
    (d / "config.json").write_text(json.dumps(cfg))
    assert "must be" in _error(d, rf"config.json: {field} ")


@pytest.mark.parametrize("change, match", [
    (lambda sd: {**sd, 5: torch.zeros(1)}, r"weights.pt: key 5 is a int, not a name"),
    (lambda sd: {**sd, "blocks.0.mlp.l1.weight": 3}, r"weights.pt: 'blocks.0.mlp.l1.weight' holds a int, not a dense"),
    (lambda sd: {**sd, "blocks.0.mlp.l1.weight": sd["blocks.0.mlp.l1.weight"].to_sparse()},
     r"weights.pt: 'blocks.0.mlp.l1.weight' holds a torch.sparse_coo tensor, not a dense tensor"),
])
def test_a_state_dict_of_other_things_than_named_dense_tensors(tmp_path, change, match):
    """Keys that are not names, values that are not tensors and sparse tensors: one line naming the
    file and the key (they raised TypeError, AttributeError and a sparse-copy RuntimeError)."""
    d = _copy(TINY_A, tmp_path / "c")
    torch.save(change(torch.load(d / "weights.pt", weights_only=True)), d / "weights.pt")
    _error(d, match)


def test_a_meta_tensor_is_named(tmp_path):
    """A state dict saved from a meta-device model: "NotImplementedError: Cannot copy out of meta tensor"."""
    d = _copy(TINY_A, tmp_path / "c")
    sd = torch.load(d / "weights.pt", weights_only=True)
    sd["blocks.0.mlp.l1.weight"] = torch.empty(sd["blocks.0.mlp.l1.weight"].shape, device="meta")
    torch.save(sd, d / "weights.pt")
    _error(d, r"weights.pt: 'blocks.0.mlp.l1.weight' holds a meta tensor \(a shape with no values")


def test_a_damaged_zip_checkpoint_is_one_line(tmp_path):
    """Bytes flipped inside a zip .pt: the pickle scan found nothing and hit an unset variable."""
    d = _copy(TINY_A, tmp_path / "c")
    data = bytearray((d / "weights.pt").read_bytes())
    data[2000:2100] = bytes(b ^ 0xFF for b in data[2000:2100])
    (d / "weights.pt").write_bytes(bytes(data))
    assert "weights.pt" in _error(d, r"weights\.pt")


def test_config_sizes_past_any_model_and_a_nested_json_are_refused(tmp_path):
    from evo_cli.checkpoints.convert import convert_checkpoint

    d = convert_checkpoint(TINY_A, tmp_path / "n")
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, "hidden_size": 10**12}))
    _error(d, r"hidden_size 1000000000000 is too large \(at most 16,777,216\)")
    (d / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    _error(d, r"config.json: not a readable JSON config")


def test_an_empty_model_name_is_an_error_not_the_current_folder(tmp_path, monkeypatch):
    """``load_model("")`` (an unset ``$MODEL`` on a command line) would open the current folder as a
    checkpoint, here one that holds a valid model."""
    save_native(evo_cli.load_model(TINY_A, device="cpu"), tmp_path)
    monkeypatch.chdir(tmp_path)
    assert evo_cli.load_model(".", device="cpu") is not None  # the folder is a checkpoint
    for name in ("", " "):
        with pytest.raises(CheckpointError, match="the model name or path is empty"):
            evo_cli.load_model(name, device="cpu")
        with pytest.raises(CheckpointError, match="the model name or path is empty"):
            describe_checkpoint(name)


def test_a_directory_with_two_checkpoints_is_refused_and_each_file_loads_as_itself(tmp_path, ids):
    """A vortex ``weights.pt`` + yml beside a native conversion: before, the directory loaded whichever
    the search found first, and ``weights.pt`` passed by name was read through the native config.json
    (identity key map: the vortex rows taken as ours, silently wrong logits)."""
    native = evo_cli.convert_checkpoint(TINY_A, tmp_path / "native")
    both = _copy(native, tmp_path / "both")
    for name in ("weights.pt", "config.yml"):
        shutil.copy(TINY_A / name, both / name)
    message = _error(both, r"holds two checkpoints, safetensors \(model-00001-of-00001.safetensors\) and a PyTorch "
                           r"file \(weights.pt\); pass the weights file")
    assert str(both) in message
    want = _logits(evo_cli.load_model(TINY_A, device="cpu"), ids)
    for path in (both / "weights.pt", both / "model.safetensors.index.json"):
        torch.testing.assert_close(_logits(evo_cli.load_model(path, device="cpu"), ids), want, rtol=0, atol=1e-5)


def test_a_missing_native_weight_is_named_as_stored(tmp_path):
    """A native checkpoint stores ``blocks.0.mlp.l1.weight`` as ``blocks.0.mlp.l1.weight.T``: before, the
    error named the key the file never holds."""
    native = evo_cli.convert_checkpoint(TINY_A, tmp_path / "n")
    shard = next(native.glob("model-*.safetensors"))
    sd = load_file(str(shard))
    del sd["blocks.0.mlp.l1.weight.T"]
    save_file(sd, str(shard))
    _error(native, r"missing tensor 'blocks\.0\.mlp\.l1\.weight\.T' \(needed for blocks\.0\.mlp\.l1\.weight\)$")


class _Payload:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_refused_te_state_names_its_file_and_key(tmp_path):
    """Before, the line named the key only (``blocks.0.projections._extra_state: ...``), not the file."""
    d = _copy(TINY_A, tmp_path / "c")
    sd = torch.load(d / "weights.pt", weights_only=True)
    value = io.BytesIO()
    torch.save({"scale_fwd": torch.ones(3), "payload": _Payload(tmp_path / "pwned")}, value)
    sd["blocks.0.projections._extra_state"] = value
    torch.save(sd, d / "weights.pt")
    _error(d, rf"^{re.escape(str(d / 'weights.pt'))}: blocks\.0\.projections\._extra_state: Transformer Engine "
              r"state refers to (io|builtins)\.open, which is not Transformer Engine state; refusing to unpickle code$")
    assert not (tmp_path / "pwned").exists()
