"""``evo convert``: every supported format to the native layout, with identical logits, kept dtypes and
a memory-mapped (zero-copy) load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import load_file

import evo_cli
from evo_cli.checkpoints.convert import convert_checkpoint
from evo_cli.cli.main import cli, main
from evo_cli.cli.models import parse_size

from .conftest import CASES, CONFORMANCE, case_id

TINY_A = CONFORMANCE / "evo2" / "tiny_a"


def _logits(model, ids):
    with torch.no_grad():
        return model(ids)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_round_trip_every_conformance_case(tmp_path, case, load_case):
    original, vectors = load_case(case)
    out = tmp_path / "native"
    res = CliRunner().invoke(cli, ["convert", str(case), "-o", str(out), "--shard-size", "200KB"])
    assert res.exit_code == 0, res.output
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 1 and all(p.stat().st_size <= 200_000 + 4096 for p in shards)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == [p.name for p in shards]
    native = evo_cli.load_model(out, device="cpu", dtype="float32", kernels="torch")
    assert native.config == original.config
    ids = vectors["input_ids"]
    assert torch.equal(_logits(native, ids), _logits(original, ids))
    assert (native(ids) - vectors["logits"]).abs().max() < 1e-4


def _stored_dtypes(directory: Path) -> dict[str, torch.dtype]:
    dtypes = {}
    for shard in directory.glob("model-*.safetensors"):
        with safe_open(str(shard), "pt") as f:
            dtypes.update({k: f.get_tensor(k).dtype for k in f.keys()})
    return dtypes


def test_dtype_options(tmp_path):
    """tiny_a stores bf16 weights with float32 poles, residues and inv_freq: ``keep`` keeps exactly that."""
    kept = _stored_dtypes(convert_checkpoint(TINY_A, tmp_path / "keep"))
    assert kept["blocks.0.mlp.l1.weight.T"] == kept["blocks.1.filter.h"] == torch.bfloat16
    assert kept["blocks.2.filter.log_poles"] == kept["blocks.3.inner_mha_cls.rotary_emb.inv_freq"] == torch.float32
    f32 = _stored_dtypes(convert_checkpoint(TINY_A, tmp_path / "f32", dtype="float32"))
    assert set(f32.values()) == {torch.float32}
    bf16 = _stored_dtypes(convert_checkpoint(TINY_A, tmp_path / "bf16", dtype="bfloat16"))
    assert bf16["blocks.0.mlp.l1.weight.T"] == torch.bfloat16 and bf16["blocks.1.filter.h"] == torch.float32
    with safe_open(str(next((tmp_path / "keep").glob("model-*"))), "pt") as f:
        assert f.metadata()["source_format"] == "vortex"


def _mapped_files() -> list[tuple[int, int, str]]:
    regions = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        regions.append((lo, hi, fields[5] if len(fields) > 5 else ""))
    return regions


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the process memory map (Linux)")
def test_native_load_is_zero_copy(tmp_path):
    """Every parameter and buffer of a float32 CPU load of a float32 native checkpoint lies inside the
    memory mapping of its shard file: nothing was copied."""
    out = convert_checkpoint(TINY_A, tmp_path / "n", dtype="float32", max_shard_bytes=100_000)
    shards = {str(p.resolve()) for p in out.glob("model-*.safetensors")}
    model = evo_cli.load_model(out, device="cpu", dtype="float32")
    regions = _mapped_files()
    for name, t in model.state_dict().items():
        ptr = t.data_ptr()
        owner = next((path for lo, hi, path in regions if lo <= ptr < hi), None)
        assert owner in shards, f"{name} is not backed by a shard mapping ({owner})"
    # a bf16 load of the same files has to convert, so it owns its memory
    bf = evo_cli.load_model(out, device="cpu", dtype="bfloat16")
    ptr = bf.blocks[0].mlp.l1.weight.data_ptr()
    assert not any(lo <= ptr < hi and path in shards for lo, hi, path in _mapped_files())


def test_linear_weights_are_stored_transposed_and_old_directories_still_load(tmp_path):
    """A native checkpoint stores each Linear weight [out, in] as ``<name>.T`` [in, out], so that a CPU
    model's column-major layout is a view of the mapping; a directory written before (``<name>``
    [out, in]) loads to the same model, laid out in memory."""
    from safetensors.torch import save_file

    out = convert_checkpoint(TINY_A, tmp_path / "n", dtype="float32")
    model = evo_cli.load_model(out, device="cpu", kernels="torch")
    stored = {}
    for shard in out.glob("model-*.safetensors"):
        stored.update(load_file(str(shard)))
    w = model.blocks[0].mlp.l1.weight
    assert "blocks.0.mlp.l1.weight" not in stored and torch.equal(stored["blocks.0.mlp.l1.weight.T"], w.t())
    assert w.t().is_contiguous() and "blocks.0.filter.h" in stored
    old = tmp_path / "old"
    old.mkdir()
    config = json.loads((out / "config.json").read_text())
    assert config["format"] == "evo-cli/striped-hyena/2"
    (old / "config.json").write_text(json.dumps({**config, "format": "evo-cli/striped-hyena/1"}))
    save_file({k.removesuffix(".T"): v.t().contiguous() if k.endswith(".T") else v for k, v in stored.items()},
              str(old / "model.safetensors"))
    again = evo_cli.load_model(old, device="cpu", kernels="torch")
    ids = torch.randint(0, 512, (1, 7), generator=torch.Generator().manual_seed(0))
    assert torch.equal(_logits(again, ids), _logits(model, ids))
    assert all(a.stride() == b.stride() for a, b in zip(again.parameters(), model.parameters()))
    # a format from a newer evo-cli says so
    (old / "config.json").write_text(json.dumps({**config, "format": "evo-cli/striped-hyena/3"}))
    with pytest.raises(evo_cli.errors.ConfigError, match="a newer evo-cli may read it"):
        evo_cli.load_model(old, device="cpu")
    # a stored transpose of the wrong shape or rank is named as stored
    for bad, shown in [(stored["blocks.0.mlp.l1.weight.T"][:, :-1], r"shape \[64, 175\] \(read as \[175, 64\]\)"),
                       (stored["blocks.0.mlp.l1.weight.T"][None], r"shape \[1, 64, 176\], the config")]:
        save_file({**stored, "blocks.0.mlp.l1.weight.T": bad.contiguous()}, str(old / "model.safetensors"))
        (old / "config.json").write_text(json.dumps(config))
        with pytest.raises(evo_cli.errors.CheckpointError, match=shown):
            evo_cli.load_model(old, device="cpu")
    # a published layout gets the same layout at load (in the copy its permutations make anyway)
    vortex = evo_cli.load_model(TINY_A, device="cpu", dtype="float32", kernels="torch")
    assert all(a.stride() == b.stride() for a, b in zip(vortex.parameters(), model.parameters()))


def test_output_is_atomic(tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "x").write_text("keep me")
    with pytest.raises(SystemExit) as e:
        main(["convert", str(TINY_A), "-o", str(out)])
    assert e.value.code == 1 and "exists and is not an empty directory" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["x"]
    with pytest.raises(SystemExit):
        main(["convert", str(tmp_path / "missing"), "-o", str(tmp_path / "new")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_a_symlink_output_is_written_through(tmp_path, capsys):
    """-o a link to an empty folder, or a dangling link, gets the checkpoint at its target (the link then
    leads to it); both ended in "cannot write LINK: Not a directory". A link to a full folder is refused."""
    ids = load_file(str(TINY_A / "vectors.safetensors"))["input_ids"][:, :16]
    ref = _logits(evo_cli.load_model(TINY_A, device="cpu"), ids)
    (tmp_path / "empty").mkdir()
    for link, target in (("to_empty", "empty"), ("dangling", "later")):
        (tmp_path / link).symlink_to(target)
        res = CliRunner().invoke(cli, ["convert", str(TINY_A), "-o", str(tmp_path / link)])
        assert res.exit_code == 0, res.output
        assert (tmp_path / link).is_symlink() and (tmp_path / target / "config.json").is_file()
        assert torch.equal(_logits(evo_cli.load_model(tmp_path / link, device="cpu"), ids), ref)
    with pytest.raises(SystemExit) as e:
        main(["convert", str(TINY_A), "-o", str(tmp_path / "to_empty")])
    assert e.value.code == 1 and f"{tmp_path / 'empty'}: exists and is not an empty directory" in capsys.readouterr().err


def test_community_layout_converts(tmp_path):
    """A checkpoint in a community layout converts like any other (the layouts are tested in test_hf_layouts)."""
    from .test_hf_layouts import write_community

    src = write_community(tmp_path / "aq", TINY_A, "aquiles")
    out = convert_checkpoint(src, tmp_path / "native")
    ids = load_file(str(TINY_A / "vectors.safetensors"))["input_ids"][:, :64]
    ref = evo_cli.load_model(TINY_A, device="cpu")
    assert torch.equal(_logits(evo_cli.load_model(out, device="cpu"), ids), _logits(ref, ids))


@pytest.mark.parametrize("text, size", [("4GB", 4 * 10**9), ("4GiB", 4 << 30), ("500mb", 500 * 10**6), ("123", 123),
                                        ("1.5KB", 1500)])
def test_parse_size(text, size):
    assert parse_size(text) == size


def test_bad_shard_size_is_a_usage_error():
    res = CliRunner().invoke(cli, ["convert", str(TINY_A), "-o", "x", "--shard-size", "lots"])
    assert res.exit_code == 2 and "Invalid value for --shard-size: 'lots' is not a size" in res.output
    res = CliRunner().invoke(cli, ["convert", str(TINY_A), "-o", "x", "--shard-size", "0"])
    assert res.exit_code == 2 and "Invalid value for --shard-size: must be at least 1 byte" in res.output


def test_only_linear_weights_are_read_transposed_and_never_twice(tmp_path, caplog):
    """``<name>.T`` stands for an nn.Linear weight only (a ``filter.h.T`` beside ``filter.h`` is an
    unused tensor, not the filter), and a weight stored both ways is refused."""
    from safetensors.torch import save_file

    from evo_cli.checkpoints.native import is_linear_weight
    from evo_cli.model.init import motif_config
    from evo_cli.model.model import StripedHyena

    for family in ("evo1", "evo2"):  # the names the checkpoint rule knows are the model's nn.Linear weights
        with torch.device("meta"):
            model = StripedHyena(motif_config(family, hidden_size=32, num_layers=7, head_dim=16))
        linear = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        assert linear == {k for k in model.state_dict() if is_linear_weight(k)}

    out = convert_checkpoint(TINY_A, tmp_path / "n", dtype="float32")
    shard = next(out.glob("model-*.safetensors"))
    stored = load_file(str(shard))
    want = _logits(evo_cli.load_model(out, device="cpu"), torch.arange(65, 75)[None])
    save_file({**stored, "blocks.1.filter.h.T": torch.zeros_like(stored["blocks.1.filter.h"])}, str(shard))
    assert torch.equal(_logits(evo_cli.load_model(out, device="cpu"), torch.arange(65, 75)[None]), want)
    assert "ignoring 1 tensor(s)" in caplog.text and "blocks.1.filter.h.T" in caplog.text
    save_file({**stored, "blocks.0.mlp.l1.weight": stored["blocks.0.mlp.l1.weight.T"].t().contiguous()}, str(shard))
    with pytest.raises(evo_cli.errors.CheckpointError,
                       match=r"holds both 'blocks.0.mlp.l1.weight' and 'blocks.0.mlp.l1.weight.T'"):
        evo_cli.load_model(out, device="cpu")


@pytest.mark.parametrize("size", [0, -5, 2.5])
def test_convert_checkpoint_refuses_a_shard_size_under_one_byte(tmp_path, size):
    """The CLI refused --shard-size 0, the Python API wrote one shard per tensor (77 files for tiny_a)."""
    from evo_cli.errors import InputError

    with pytest.raises(InputError, match=f"max_shard_bytes must be a whole number of at least 1, not {size}"):
        evo_cli.convert_checkpoint(CONFORMANCE / "evo2" / "tiny_a", tmp_path / "out", max_shard_bytes=size)
    assert not (tmp_path / "out").exists()
