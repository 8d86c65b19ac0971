"""FP8 input projections (Evo 2 1B/20B/40B): TE state read safely, the projection bit for bit equal to
mmaemu on the stored scales, whole-model logits and scores equal to a plain re-implementation, convert
keeping the scales, and the mode choice with its errors."""

from __future__ import annotations

import io
import pickle

import pandas as pd
import pytest
import torch
from safetensors import safe_open

import evo_cli
from evo_cli import kernels as K
from evo_cli import runtime
from evo_cli.checkpoints.convert import convert_checkpoint
from evo_cli.errors import CheckpointError, InputError
from evo_cli.io.fasta import format_fasta

from .fp8util import TINY_A, hyena_blocks, plain_fp8_projection, scales_for, write_fp8_checkpoint
from .test_cli_score_variants import evo

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("fp8")
    return {form: write_fp8_checkpoint(root / form, form) for form in ("bytesio", "uint8")}


@pytest.fixture(scope="module")
def stored():
    return torch.load(TINY_A / "weights.pt", weights_only=True)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int16 if t.dtype == torch.bfloat16 else torch.int32)


def test_quantize_scales_rounds_and_saturates():
    x = torch.tensor([1.0, -3.0, 500.0, -1e6, 0.3, 0.28125, float("inf")])
    q = K.quantize_e4m3(x, torch.tensor(2.0)).float()
    # 0.6 rounds to the nearest E4M3 value 0.625; 0.5625 is one; +inf saturates as TE's cast does
    assert q.tolist() == [2.0, -6.0, 448.0, -448.0, 0.625, 0.5625, 448.0]


@pytest.mark.parametrize("form", ["bytesio", "uint8"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_projection_equals_mmaemu_bit_for_bit(ckpts, stored, form, dtype):
    """blocks.N.projections under emulate = mmaemu.scaled_mm on the operands quantised with the stored
    scales, for inputs that saturate (|x * scale| > 448) and odd lengths (rows padded to 16)."""
    model = evo_cli.load_model(ckpts[form], device="cpu", dtype=dtype, fp8="emulate")
    assert model.fp8 == "emulate"
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(2, 21, 64, generator=g) * 2).to(dtype)
    x[0, 3, :5] = torch.tensor([40.0, -60.0, 9.0, -5.0, 100.0], dtype=dtype)  # saturate at scale ~100
    for i in (0, 2):
        proj = model.blocks[i].projections
        seen = {}
        handle = proj.register_forward_hook(lambda m, a, out: seen.update(inp=a[0], out=out))
        y = proj(x)
        handle.remove()
        si, sw = scales_for(i)
        assert (x.float() * si).abs().max() > 448
        want = plain_fp8_projection(x, stored[f"blocks.{i}.projections.weight"].to(dtype), si, sw, dtype)
        assert y.dtype == dtype and torch.equal(_bits(y), _bits(want))
        assert seen["inp"] is x and seen["out"] is y  # hooks see the FP8 GEMM's input and output


def test_stored_scales_on_the_module_and_weight_prepared_once(ckpts):
    model = evo_cli.load_model(ckpts["uint8"], device="cpu", fp8="emulate")
    proj = model.blocks[1].projections
    assert proj.fp8_scale_input.item() == scales_for(1)[0] and proj.fp8_scale_weight.item() == scales_for(1)[1]
    wq = proj.weight_fp8
    assert wq.dtype == torch.float8_e4m3fn and wq.shape == proj.weight.shape
    x = torch.randn(1, 5, 64)
    proj(x)
    proj(x * 10)
    assert proj.weight_fp8 is wq and proj.fp8_scale_input.item() == scales_for(1)[0]  # no amax update


def _plain_model(path, stored):
    """The model with --fp8 off and every projection's output replaced (forward hook) by the plain
    FP8 re-implementation on the stored weight and scales."""
    model = evo_cli.load_model(path, device="cpu", fp8="off")
    for i in hyena_blocks(stored):
        w = stored[f"blocks.{i}.projections.weight"]
        model.blocks[i].projections.register_forward_hook(
            lambda m, a, out, w=w, s=scales_for(i): plain_fp8_projection(a[0], w, *s, a[0].dtype))
    return model


def test_logits_emulate_differ_from_off_and_equal_a_plain_reimplementation(ckpts, stored):
    ids = torch.tensor([list(b"ACGTTGCAAGGCTTAACGTAGGCATTACGA"), list(b"TTGACCATGCAAGTCGATCGGATTACAGGC")])
    emulate = evo_cli.load_model(ckpts["bytesio"], device="cpu", fp8="emulate")
    off = evo_cli.load_model(ckpts["bytesio"], device="cpu", fp8="off")
    with torch.no_grad():
        le, lo, lp = emulate(ids), off(ids), _plain_model(ckpts["bytesio"], stored)(ids)
    assert (le - lo).abs().max() > 1e-2
    assert torch.equal(le, lp)


def test_evo_score_emulate_gives_the_plain_scores(ckpts, stored, tmp_path):
    seqs = {"a": "ACGTTGCAAGGCTTAACGTAGGCATTACGATT", "b": "GATTACAGGCATGCA"}
    (tmp_path / "in.fa").write_text("".join(format_fasta(k, v) for k, v in seqs.items()))
    out = {}
    for mode in ("emulate", "off"):
        code, _, err = evo("score", "--fasta", tmp_path / "in.fa", "-m", ckpts["uint8"], "--fp8", mode,
                           "-o", tmp_path / f"{mode}.tsv")
        assert code == 0, err
        out[mode] = pd.read_csv(tmp_path / f"{mode}.tsv", sep="\t")
    want = evo_cli.score_sequences(_plain_model(ckpts["uint8"], stored), list(seqs.values()))
    assert out["emulate"].mean_ll.tolist() == pytest.approx(want, abs=1e-6)
    assert (out["emulate"].mean_ll - out["off"].mean_ll).abs().min() > 1e-4


def test_split_per_sequence_and_per_block_of_rows_changes_nothing(ckpts, monkeypatch):
    model = evo_cli.load_model(ckpts["bytesio"], device="cpu", fp8="emulate")
    proj = model.blocks[0].projections
    x = torch.randn(3, 40, 64)
    whole = proj(x)
    assert all(torch.equal(proj(x[i : i + 1]), whole[i : i + 1]) for i in range(3))
    calls = []
    real = K.fp8.gemm.emulated_gemm
    monkeypatch.setattr(K.fp8.naive, "MAX_ROWS", 16)
    monkeypatch.setattr(K.fp8.gemm, "emulated_gemm", lambda a, *r: calls.append(a.shape[0]) or real(a, *r))
    assert torch.equal(proj(x), whole)
    assert calls == [16] * 9  # 3 sequences of 40 rows, each padded to 48, in GEMMs of at most 16 rows


def test_recurrent_decoding_equals_the_full_forward_under_emulate(ckpts):
    model = evo_cli.load_model(ckpts["bytesio"], device="cpu", fp8="emulate")
    ids = torch.tensor([list(b"ACGTTGCAAGGCTTAACG")])
    with torch.no_grad():
        full = model(ids)
        state = model.new_state(1, ids.shape[1])
        steps = [model(ids[:, :5], state)] + [model(ids[:, t : t + 1], state) for t in range(5, ids.shape[1])]
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-4, rtol=0)


def test_native_path_passes_torch_scaled_mm_the_same_operands(ckpts, monkeypatch):
    """No sm_89/sm_90 GPU here: torch._scaled_mm is stood in for by mmaemu (which takes its arguments),
    so native must give emulate's bits."""
    import mmaemu

    model = evo_cli.load_model(ckpts["bytesio"], device="cpu", fp8="emulate")
    x = torch.randn(2, 7, 64) * 3
    want = model.blocks[4].projections(x)
    monkeypatch.setattr(torch, "_scaled_mm", lambda a, b, scale_a, scale_b, out_dtype, use_fast_accum: mmaemu.scaled_mm(
        a, b, scale_a, scale_b, out_dtype=out_dtype, use_fast_accum=use_fast_accum, profile="hopper-te", splitk=1))
    model.set_fp8("native")
    assert torch.equal(model.blocks[4].projections(x), want)


def test_e4m3_weight_stays_row_major_after_the_cpu_decode_layout(ckpts):
    """new_state on CPU stores the projection weights column-major (a faster GEMV); a later .to() rebuilds
    the E4M3 weight from them, and it must still be row-major: an FP8 GEMM takes the transposed weight
    only column-major (cuBLASLt rejects anything else, and mmaemu applies the same check)."""
    model = evo_cli.load_model(ckpts["bytesio"], device="cpu", fp8="emulate", kernels="torch")  # MKL's layout
    ids = torch.randint(0, 512, (1, 9), generator=torch.Generator().manual_seed(0))
    want = model(ids)
    model.new_state(1, 9)
    assert not model.blocks[4].projections.weight.is_contiguous()
    model.float()
    assert torch.equal(model(ids), want)
    # a cast keeps the float32 scales (a half scale would quantise otherwise) and rebuilds the E4M3 weight
    proj = model.blocks[4].projections
    scales = proj.fp8_scale_input.clone(), proj.fp8_scale_weight.clone()
    model.half()
    assert all(a.dtype == torch.float32 and torch.equal(a, b)
               for a, b in zip((proj.fp8_scale_input, proj.fp8_scale_weight), scales))
    assert torch.equal(proj.weight_fp8, K.quantize_e4m3(proj.weight, scales[1]).contiguous())


def test_mode_choice_and_its_errors(ckpts, monkeypatch, tmp_path):
    cpu = torch.device("cpu")
    assert runtime.resolve_fp8("auto", cpu, needs_fp8=False) == "off"
    assert runtime.resolve_fp8(None, cpu, needs_fp8=True) == "emulate"
    monkeypatch.setenv("EVO_FP8", "off")
    assert runtime.resolve_fp8(None, cpu, needs_fp8=True) == "off"
    # a mode from the environment that cannot run says where it came from
    for value, match in (("native", r"--fp8 native \(from EVO_FP8\) needs a GPU"), ("bogus", r"'bogus' \(from EVO_FP8\)")):
        monkeypatch.setenv("EVO_FP8", value)
        with pytest.raises(InputError, match=match):
            runtime.resolve_fp8(None, cpu, needs_fp8=True)
    monkeypatch.delenv("EVO_FP8")
    with pytest.raises(InputError, match="compute capability 8.9 or 9.x"):
        runtime.resolve_fp8("native", cpu, needs_fp8=True)
    monkeypatch.setattr(runtime, "mmaemu_available", lambda: False)
    with pytest.raises(InputError, match=r'pip install "evo-cli\[fp8\]"'):
        evo_cli.load_model(ckpts["bytesio"], device="cpu")
    (tmp_path / "in.fa").write_text(">a\nACGTACGT\n")
    code, _, err = evo("score", "--fasta", tmp_path / "in.fa", "-m", ckpts["bytesio"], "--fp8", "emulate", "-o", "-")
    assert code == 1 and err.count("\n") == 1 and 'pip install "evo-cli[fp8]"' in err
    # a model without FP8 state: auto runs it off; an FP8 mode is an error naming the state it lacks
    assert evo_cli.load_model(TINY_A, device="cpu").fp8 == "off"
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match=r"blocks\.0\.projections\._extra_state missing or empty"):
        evo_cli.load_model(TINY_A, device="cpu", fp8="emulate")
    # set in the environment, not on the command line: the line says so
    monkeypatch.setenv("EVO_FP8", "emulate")
    with pytest.raises(CheckpointError, match=r"for --fp8 emulate \(from EVO_FP8\); use --fp8 off"):
        evo_cli.load_model(TINY_A, device="cpu")


def test_missing_or_empty_state_of_one_block_names_its_key(tmp_path):
    def drop(sd):
        del sd["blocks.5.projections._extra_state"]

    def empty(sd):
        buf = io.BytesIO()
        torch.save(None, buf)
        sd["blocks.2.projections._extra_state"] = buf

    with pytest.raises(CheckpointError, match=r"missing tensor 'blocks\.5\.projections\._extra_state'"):
        evo_cli.load_model(write_fp8_checkpoint(tmp_path / "drop", transform=drop), device="cpu", fp8="emulate")
    code, _, err = evo("info", "-m", write_fp8_checkpoint(tmp_path / "empty", transform=empty))
    assert code == 0
    with pytest.raises(CheckpointError, match=r"blocks\.2\.projections\._extra_state holds no FP8 state"):
        evo_cli.load_model(tmp_path / "empty", device="cpu", fp8="emulate")


class _Payload:
    """Unpickling this creates a file: proof that the code would run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("form", ["bytesio", "uint8"])
def test_malicious_pickle_in_extra_state_is_refused_without_running(tmp_path, form):
    target = tmp_path / "pwned"
    state = {"scale_fwd": torch.ones(3), "payload": _Payload(target)}
    pickle.loads(pickle.dumps(state))  # the payload works: plain unpickling creates the file
    assert target.exists()
    target.unlink()
    if form == "bytesio":
        value = io.BytesIO()
        torch.save(state, value)
    else:
        value = torch.frombuffer(bytearray(pickle.dumps(state)), dtype=torch.uint8)
    ckpt = write_fp8_checkpoint(tmp_path / "ckpt", transform=lambda sd: sd.update({"blocks.0.projections._extra_state": value}))
    code, _, err = evo("info", "-m", ckpt)
    assert code == 1 and err.count("\n") == 1
    assert "blocks.0.projections._extra_state" in err and "refusing to unpickle code" in err and "open" in err
    with pytest.raises(CheckpointError, match="refusing to unpickle code"):
        evo_cli.load_model(ckpt, device="cpu", fp8="off")
    assert not target.exists()


def test_convert_keeps_the_scales_and_round_trips(ckpts, tmp_path):
    out = convert_checkpoint(ckpts["uint8"], tmp_path / "native")
    with safe_open(str(next(out.glob("model-*.safetensors"))), "pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("blocks.1.projections.fp8_scale_input").dtype == torch.float32
        assert f.get_tensor("blocks.1.projections.fp8_scale_input").item() == scales_for(1)[0]
        assert f.get_tensor("blocks.1.projections.fp8_scale_weight").item() == scales_for(1)[1]
    assert not any("weight_fp8" in k or "_extra_state" in k for k in keys)
    ids = torch.tensor([list(b"ACGTTGCAAGGCTTAACGTAGG")])
    a = evo_cli.load_model(ckpts["uint8"], device="cpu", fp8="emulate")
    b = evo_cli.load_model(out, device="cpu", fp8="emulate")
    with torch.no_grad():
        assert torch.equal(a(ids), b(ids))
    again = convert_checkpoint(out, tmp_path / "again")
    with safe_open(str(next(again.glob("model-*.safetensors"))), "pt") as f:
        assert f.get_tensor("blocks.6.projections.fp8_scale_weight").item() == scales_for(6)[1]


def test_info_and_models_say_what_the_checkpoint_holds(ckpts):
    code, out, err = evo("info", "-m", ckpts["uint8"], "--json")
    assert code == 0, err
    import json

    d = json.loads(out)
    assert d["fp8 state"].startswith("Transformer Engine FP8 scales (delayed scaling, amax history 16, DelayedScaling")
    assert d["fp8 mode"].startswith("emulate (Hopper FP8 GEMM bit for bit through mmaemu on cpu")
    code, out, _ = evo("info", "-m", TINY_A, "--json")
    assert json.loads(out)["fp8 state"] == "none" and json.loads(out)["fp8 mode"].startswith("off")


def test_sizes_not_a_multiple_of_16_are_zero_padded_without_changing_the_accumulation():
    """K = 40, N = 120: the padded GEMM equals mmaemu's accumulator of the unpadded operands (scales 1)."""
    import mmaemu

    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(1, 9, 40, generator=g) * 30, torch.randn(120, 40, generator=g) * 30
    one = torch.tensor(1.0)
    wq = K.quantize_e4m3(w, one)
    y = K.fp8_linear(x, wq, one, one, mode="emulate")
    acc = mmaemu.accumulate(K.quantize_e4m3(x[0], one), wq, use_fast_accum=True, profile="hopper-te", splitk=1)
    assert y.shape == (1, 9, 120) and torch.equal(y[0], acc)


def test_cli_spells_out_the_fp8_modes_of_the_kernels():
    from evo_cli.cli.options import FP8_MODES

    assert FP8_MODES == K.FP8_MODES


def test_moving_the_model_rebuilds_the_fp8_weight(ckpts):
    model = evo_cli.load_model(ckpts["bytesio"], device="cpu", fp8="emulate")
    x = torch.randn(1, 5, 64)
    want = model.blocks[0].projections(x)
    model.to("cpu")
    assert model.blocks[0].projections.weight_fp8.dtype == torch.float8_e4m3fn
    assert torch.equal(model.blocks[0].projections(x), want)


class _Scripted(torch.nn.Module):
    def forward(self, x):
        return x


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_torchscript_program_in_extra_state_is_refused():
    """torch.load would hand a TorchScript archive to torch.jit.load, which runs its code."""
    from evo_cli.checkpoints.te_state import decode_extra_state

    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(_Scripted()), buf)
    with pytest.raises(CheckpointError, match="k: Transformer Engine state is a TorchScript program; refusing"):
        decode_extra_state(buf, "k")


def test_a_model_split_over_devices_gives_the_unsplit_fp8_logits(ckpts):
    ids = torch.tensor([list(b"ACGTTGCAAGGCTTAACGTAGG")])
    one = evo_cli.load_model(ckpts["bytesio"], device="cpu", fp8="emulate")
    split = evo_cli.load_model(ckpts["bytesio"], device="cpu,cpu", fp8="emulate")
    assert split.fp8 == "emulate"
    with torch.no_grad():
        assert torch.equal(split(ids), one(ids))


def test_a_resume_under_another_fp8_mode_or_dtype_is_refused(ckpts, tmp_path):
    """score-variants and mutagenize record no command among their settings: the FP8 mode and the dtype
    must be settings of their own, or a run resumed under ``--fp8 emulate`` (or bfloat16) would mix its
    scores with the chunks an ``--fp8 off`` float32 run left."""
    from evo_cli.variants import run_score_variants

    from .test_cli_score_variants import FA, SNVS, _interrupt_after

    out = tmp_path / "scores.tsv"
    off = evo_cli.load_model(ckpts["bytesio"], device="cpu", dtype="float32", fp8="off")
    with pytest.raises(KeyboardInterrupt):
        run_score_variants(off, SNVS, FA, out, window=32, batch_size=3, progress=_interrupt_after(2))
    emulate = evo_cli.load_model(ckpts["bytesio"], device="cpu", dtype="float32", fp8="emulate")
    with pytest.raises(InputError, match=r"settings differ \(fp8: 'off' then, 'emulate' now\)"):
        evo_cli.score_variants(emulate, SNVS, FA, out, window=32, batch_size=3, resume=True)
    bf16 = evo_cli.load_model(ckpts["bytesio"], device="cpu", dtype="bfloat16", fp8="off")
    with pytest.raises(InputError, match=r"settings differ \(dtype: 'float32' then, 'bfloat16' now\)"):
        evo_cli.score_variants(bf16, SNVS, FA, out, window=32, batch_size=3, resume=True)
    assert not out.exists()


def test_native_needs_every_device_of_a_split_model(monkeypatch):
    """A model split over an sm_90 GPU and another device: ``native`` would run other arithmetic (or none)
    on the second, so ``auto`` emulates and ``native`` names the device that cannot."""
    first, second = torch.device("cpu", 0), torch.device("cpu", 1)  # stand-ins: only the first "has" FP8
    monkeypatch.setattr(runtime, "fp8_native_supported", lambda d: d == first)
    assert runtime.resolve_fp8("auto", first, needs_fp8=True) == "native"
    assert runtime.resolve_fp8("auto", [first, second], needs_fp8=True) == "emulate"
    with pytest.raises(InputError, match=r"--fp8 native needs a GPU .* not cpu:1; use --fp8 emulate"):
        runtime.resolve_fp8("native", [first, second], needs_fp8=True)
    assert runtime.resolve_fp8("off", [first, second], needs_fp8=True) == "off"


def _named(path, name):
    """The FP8 checkpoint at ``path`` renamed to a published model (``registry.match_config`` goes by name)."""
    yml = path / "config.yml"
    yml.write_text(yml.read_text().replace("model_name: tiny-sh2-tiny_a", f"model_name: {name}"))
    return path


def test_auto_follows_the_model_not_the_scales_in_its_file(tmp_path, monkeypatch):
    """The published 7B files carry Transformer Engine state too, but the 7B models do not need FP8 (evo2 runs
    them in bf16 without TE): ``auto`` runs them off off the GPUs that have FP8 (it emulated them: ~46x slower
    on a CPU), native on those; 1B/20B/40B are emulated there. ``evo info`` and ``-v`` say which and why."""
    from evo_cli.checkpoints import fp8_decision, open_checkpoint

    seven = _named(write_fp8_checkpoint(tmp_path / "7b"), "evo2_7b")
    one = _named(write_fp8_checkpoint(tmp_path / "1b"), "evo2_1b_base")
    cpu = torch.device("cpu")
    mode, why = fp8_decision(open_checkpoint(seven), None, cpu)
    assert mode == "off" and "evo2_7b does not need FP8 projections" in why and "no sm_89/sm_90 GPU" in why
    assert evo_cli.load_model(seven, device="cpu").fp8 == "off"
    assert evo_cli.load_model(seven, device="cpu", fp8="emulate").fp8 == "emulate"  # asked for: still runs
    mode, why = fp8_decision(open_checkpoint(one), None, cpu)
    assert mode == "emulate" and why == "evo2_1b_base was trained with FP8 projections; no sm_89/sm_90 GPU here"
    monkeypatch.setattr("evo_cli.checkpoints.fp8_native_on", lambda devices: True)  # as on an H100
    mode, why = fp8_decision(open_checkpoint(seven), None, cpu)
    assert mode == "native" and "where Transformer Engine would" in why
    assert fp8_decision(open_checkpoint(TINY_A), None, cpu)[0] == "off"  # no scales: nothing to run natively
    monkeypatch.undo()
    code, out, err = evo("info", "-m", seven, "--json")
    assert code == 0, err
    import json

    assert json.loads(out)["fp8 mode"].startswith("off (plain matmul projections): evo2_7b does not need FP8")
    (tmp_path / "in.fa").write_text(">a\nACGTACGT\n")
    code, _, err = evo("score", "--fasta", tmp_path / "in.fa", "-m", seven, "-o", tmp_path / "s.tsv", "-v")
    assert code == 0 and "FP8 projections: off (evo2_7b does not need FP8 projections" in err, err


def test_auto_emulating_on_a_cpu_says_so(ckpts, tmp_path):
    (tmp_path / "in.fa").write_text(">a\nACGTACGT\n")
    code, _, err = evo("score", "--fasta", tmp_path / "in.fa", "-m", ckpts["uint8"], "-o", tmp_path / "s.tsv")
    assert code == 0 and err.count("FP8 projections emulated on the CPU (the checkpoint carries FP8 scales") == 1, err
    code, _, err = evo("score", "--fasta", tmp_path / "in.fa", "-m", ckpts["uint8"], "-o", tmp_path / "t.tsv",
                       "--fp8", "emulate")
    assert code == 0 and "emulated on the CPU" not in err, err  # asked for
