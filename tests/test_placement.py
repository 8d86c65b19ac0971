"""A model split over several devices (``evo_cli/model/placement.py``).

CPU only: ``cpu,cpu`` runs every split code path (the per-block device moves, per-block states, the
first device holding the embedding), but all parts are the same device, so it cannot show that
tensors really cross devices. The device routing of the loader is checked with the meta device as a
second, distinguishable device; the CUDA-only parts (cross-GPU copies, the current-device context
for Triton, free-memory balancing, ``auto`` splitting) are on the GPU checklist in benchmarks/README.md.
"""

from __future__ import annotations

import itertools
import random
import shlex

import pytest
import torch

import evo_cli
from evo_cli.checkpoints import open_checkpoint
from evo_cli.checkpoints.loader import build_model
from evo_cli.errors import InputError
from evo_cli.model.init import motif_config
from evo_cli.model.model import StripedHyena, keeps_float32
from evo_cli.model.placement import (
    auto_devices,
    balance,
    block_memory,
    devices_needed,
    parse_device_list,
    plan,
    rank_devices,
)
from evo_cli.runtime import local_rank, resolve_devices

from .conftest import CONFORMANCE
from .test_cli_score_variants import evo

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CASES = [CONFORMANCE / "evo1" / "c1_8k_style_L512", CONFORMANCE / "evo2" / "tiny_a"]
CPU = torch.device("cpu")


# --- device lists ------------------------------------------------------------------------------

def test_device_lists_parse():
    assert parse_device_list("cuda:0,cuda:1") == ["cuda:0", "cuda:1"]
    assert parse_device_list(" cpu , cpu,cpu") == ["cpu", "cpu", "cpu"]
    assert parse_device_list("auto") == ["auto"]
    assert resolve_devices("cpu,cpu") == [CPU, CPU]
    assert resolve_devices(["cpu", torch.device("cpu")]) == [CPU, CPU]
    assert resolve_devices("cpu") == [CPU]


@pytest.mark.parametrize("spec, message", [
    ("cpu,,cpu", "has an empty entry"),
    ("cpu,", "has an empty entry"),
    ("auto,cpu", "auto cannot be part of a list"),
    ("cpu,gpu", "unknown device 'gpu'"),
])
def test_bad_device_lists_are_one_line(spec, message):
    with pytest.raises(InputError, match=message) as e:
        resolve_devices(spec)
    assert "\n" not in str(e.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the message is for machines without a GPU")
def test_gpu_lists_without_gpu():
    with pytest.raises(InputError, match="no CUDA GPU is available"):
        resolve_devices("cuda:0,cuda:1")
    with pytest.raises(InputError, match="--devices-per-rank needs CUDA GPUs"):
        resolve_devices("auto", devices_per_rank=2)


@pytest.mark.parametrize("spec", ["cuda:0,cuda:0", "cuda,cuda:0", "cuda:1,cuda:0,cuda:1"])
def test_device_list_naming_a_gpu_twice_is_refused(spec):
    """Checked before the GPUs are looked for, so the same line on a machine without them."""
    with pytest.raises(InputError, match="names one GPU twice") as e:
        resolve_devices(spec)
    assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="names one GPU twice"):
        resolve_devices(spec.split(","))


def test_devices_per_rank_needs_device_auto():
    with pytest.raises(InputError, match="use --device auto, not cpu"):
        resolve_devices("cpu", devices_per_rank=2)


def test_rank_devices():
    assert rank_devices(2, 0, 4) == ["cuda:0", "cuda:1"]
    assert rank_devices(2, 1, 4) == ["cuda:2", "cuda:3"]
    assert rank_devices(1, 3, 8) == ["cuda:3"]
    assert rank_devices(4, 1, 8) == ["cuda:4", "cuda:5", "cuda:6", "cuda:7"]
    with pytest.raises(InputError, match=r"local rank 2 needs cuda:4..cuda:5, but 4 GPU\(s\) are visible"):
        rank_devices(2, 2, 4)
    with pytest.raises(InputError, match="at least 1"):
        rank_devices(0, 0, 4)


def test_local_rank_from_torchrun(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert local_rank() is None
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert local_rank() == 3
    monkeypatch.setenv("LOCAL_RANK", "x")
    with pytest.raises(InputError, match="LOCAL_RANK"):
        local_rank()


# --- balancing -----------------------------------------------------------------------------------

def _loads(sizes, owner, k, first=0):
    used = [first if d == 0 else 0 for d in range(k)]
    for b, d in zip(sizes, owner):
        used[d] += b
    return used


def test_balance_examples():
    assert balance([1] * 4, [1, 1]) == [0, 0, 1, 1]
    assert balance([1] * 4, [3, 1]) == [0, 0, 0, 1]  # a device with 3x the free memory takes 3x the blocks
    assert balance([1] * 4, [1, 1], first_bytes=2) == [0, 1, 1, 1]  # the embedding counts on device 0
    assert balance([5, 1, 1, 1, 1, 1], [1, 1]) == [0, 1, 1, 1, 1, 1]
    assert balance([1] * 7, [1, 1, 1]) == [0, 0, 1, 1, 2, 2, 2]  # ties: later devices take the extra blocks
    assert balance([3, 3, 3], [1, 1, 1]) == [0, 1, 2]
    with pytest.raises(InputError, match="cannot split 2 block"):
        balance([1, 1], [1, 1, 1])


def test_balance_is_optimal():
    """Against brute force over every split point: consecutive, non-empty, minimal largest fraction."""
    rng = random.Random(0)
    for _ in range(200):
        n, k = rng.randint(1, 8), rng.randint(1, 4)
        if n < k:
            continue
        sizes = [rng.randint(1, 20) for _ in range(n)]
        caps = [rng.randint(1, 5) for _ in range(k)]
        first = rng.randint(0, 10)
        owner = balance(sizes, caps, first)
        assert owner == sorted(owner) and set(owner) == set(range(k))
        got = max(u / c for u, c in zip(_loads(sizes, owner, k, first), caps))
        best = min(
            max(u / c for u, c in zip(_loads(sizes, [sum(i >= c for c in cuts) for i in range(n)], k, first), caps))
            for cuts in itertools.combinations(range(1, n), k - 1)
        )
        assert got == pytest.approx(best)


def test_devices_needed():
    gb = 10**9
    blocks = [1_645_000_000] * 50  # evo2_40b in bf16: 82 GB
    assert devices_needed(blocks, [80 * gb] * 4) == 2
    assert devices_needed(blocks, [141 * gb] * 2) == 1  # one H200 holds it
    assert devices_needed(blocks, [40 * gb] * 4) == 3
    assert devices_needed(blocks, [20 * gb] * 4) == 4  # not enough anywhere: all of them
    assert devices_needed(blocks, [80 * gb, 10 * gb, 80 * gb], first_bytes=gb) == 3


@pytest.fixture
def fake_gpus(monkeypatch):
    """Pretend to have GPUs with the given free bytes (only the memory queries; nothing runs on them)."""
    def install(*free):
        monkeypatch.setattr(torch.cuda, "device_count", lambda: len(free))
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d=None: (free[torch.device(d).index or 0], max(free)))
    return install


def test_plan_balances_by_free_gpu_memory(fake_gpus, caplog):
    config = motif_config("evo2", hidden_size=32, num_layers=14, head_dim=8, state_size=4)
    with torch.device("meta"):
        model = StripedHyena(config)
    sizes, first = block_memory(model, torch.bfloat16, 64)
    total = sum(sizes) + first
    gpus = [torch.device("cuda:0"), torch.device("cuda:1")]
    fake_gpus(total, total)
    assert plan(model, gpus, torch.bfloat16, 64).owners.count(0) in (6, 7)  # cuda:0 also holds the embedding
    fake_gpus(total, total // 3)  # cuda:1 has a third of the free memory: it gets about a quarter of the blocks
    assert plan(model, gpus, torch.bfloat16, 64).owners.count(1) in (3, 4)
    assert "needs" not in caplog.text
    fake_gpus(total // 4, total // 4)  # too small: planned anyway, with a warning per device
    plan(model, gpus, torch.bfloat16, 64)
    assert "the split needs" in caplog.text and "on cuda:1" in caplog.text


def test_auto_uses_as_many_gpus_as_needed(fake_gpus):
    config = motif_config("evo2", hidden_size=32, num_layers=14, head_dim=8, state_size=4)
    with torch.device("meta"):
        sizes, first = block_memory(StripedHyena(config), torch.bfloat16, 64)
    total = sum(sizes) + first
    fake_gpus(2 * total, 2 * total)
    assert auto_devices(config, torch.bfloat16, 64) is None  # one GPU holds it
    fake_gpus(total * 2 // 3, total * 2 // 3, total * 2 // 3, total)
    assert auto_devices(config, torch.bfloat16, 64) == [torch.device("cuda:0"), torch.device("cuda:1")]
    fake_gpus(total // 2, total // 2, total // 2, total // 2)
    assert auto_devices(config, torch.bfloat16, 64) == [torch.device(f"cuda:{i}") for i in range(3)]
    fake_gpus(total // 2)
    assert auto_devices(config, torch.bfloat16, 64) is None  # a single GPU: nothing to split over
    # a longer KV cache needs more GPUs
    fake_gpus(total * 2 // 3, total * 2 // 3, total * 2 // 3, total)
    assert len(auto_devices(config, torch.bfloat16, 64 + total // 1024)) > 2


def test_block_memory_counts_weights_and_states():
    config = motif_config("evo2", hidden_size=32, num_layers=7, head_dim=8, state_size=4)
    with torch.device("meta"):
        model = StripedHyena(config)
    sizes, first = block_memory(model, torch.bfloat16, state_tokens=100)
    weights = [sum(p.numel() * (4 if keeps_float32(f"blocks.{i}.{n}") else 2) for n, p in b.named_parameters())
               for i, b in enumerate(model.blocks)]
    d, hkv, hd = 32, config.num_kv_heads, config.head_dim
    # attention: k and v [1, Hkv, T, hd] in bf16; hyena: fir [1, K-1, 3D] + the inner state, float32
    inner = {"hcs": (config.hcs_filter_length - 1) * d, "hcm": (config.hcm_filter_length - 1) * d,
             "hcl": d * config.state_size}
    states = [2 * hkv * 100 * hd * 2 if k == "attn" else ((config.short_filter_length - 1) * 3 * d + inner[k]) * 4
              for k in config.block_types]
    assert sizes == [w + s for w, s in zip(weights, states)]
    assert first == (512 * d + d) * 2  # embedding and final norm
    assert all(t.device.type == "meta" for t in model.parameters())  # nothing was allocated


def test_the_kv_cache_a_run_needs_moves_the_split(tmp_path):
    """Evo 1 style, attention in block 8 of 9: with a long KV cache that block gets a device of its own."""
    from evo_cli.checkpoints.native import save_native
    from evo_cli.model.init import random_model

    config = motif_config("evo1", hidden_size=32, num_layers=9, head_dim=8, state_size=4)
    assert config.block_types[8] == "attn"
    path = save_native(random_model(config, seed=0), tmp_path / "m")
    short = evo_cli.load_model(path, device="cpu,cpu", dtype="float32", state_tokens=16)
    long = evo_cli.load_model(path, device="cpu,cpu", dtype="float32", state_tokens=100_000)
    assert short.placement.owners == (0,) * 4 + (1,) * 5  # device 0 also holds the embedding
    assert long.placement.owners == (0,) * 8 + (1,)


# --- a split model gives the unsplit numbers --------------------------------------------------------

@pytest.fixture(scope="module", params=CASES, ids=lambda c: c.parent.name)
def models(request):
    """(unsplit, split over cpu,cpu, split over cpu,cpu,cpu) of one conformance case."""
    load = lambda device: evo_cli.load_model(request.param, device=device, dtype="float32", kernels="torch")  # noqa: E731
    return load("cpu"), load("cpu,cpu"), load(["cpu"] * 3)


def test_split_follows_the_plan(models):
    whole, two, three = models
    assert whole.placement is None
    for split, k in ((two, 2), (three, 3)):
        n = len(split.blocks)
        assert split.placement.devices == (CPU,) * k
        assert list(split.placement.owners) == sorted(split.placement.owners) and set(split.placement.owners) == set(range(k))
        # the tiny blocks all weigh about the same: the parts differ by at most two blocks
        counts = [split.placement.owners.count(d) for d in range(k)]
        assert max(counts) - min(counts) <= 2, counts
        assert split.device == CPU and [split.block_device(i) for i in range(n)] == [CPU] * n
        for i, block in enumerate(split.blocks):
            assert {p.device for p in block.parameters()} == {split.block_device(i)}


def test_split_gives_the_same_logits_states_and_tokens(models):
    whole, two, three = models
    ids = torch.randint(0, 512, (2, 45), generator=torch.Generator().manual_seed(0))

    def stepped(m):
        """Chunked prefill, then one-token decoding with a carried state: (logits [2, 45, V], state)."""
        state = m.new_state(2, 45)
        got = [m(ids[:, a:b], state) for a, b in ((0, 17), (17, 40))] + [m(ids[:, p : p + 1], state) for p in range(40, 45)]
        return torch.cat(got, 1), state

    with torch.inference_mode():
        want = whole(ids)
        want_stepped, want_state = stepped(whole)
        assert (want_stepped - want).abs().max() < 1e-4
        for m in (two, three):
            assert torch.equal(m(ids), want)
            got, state = stepped(m)
            assert torch.equal(got, want_stepped) and state.seqlen == 45
            for i, (a, b) in enumerate(zip(want_state.layers, state.layers)):
                for field in vars(a):
                    t = getattr(b, field)
                    assert t.device == m.block_device(i) and torch.equal(getattr(a, field), t)
            # layer by layer (long sequences): each block over the whole sequence, its state on its device
            layerwise = torch.cat([out for _, out in m.forward_layerwise(ids, 16)], 1)
            assert torch.equal(layerwise, torch.cat([out for _, out in whole.forward_layerwise(ids, 16)], 1))
    prompts = ["ACGTTGCA", "GATTACAGATTACA"]
    greedy = [g.token_ids for g in evo_cli.generate(whole, prompts, 12, top_k=1, seed=1, prefill_chunk=5)]
    for m in (two, three):
        assert [g.token_ids for g in evo_cli.generate(m, prompts, 12, top_k=1, seed=1, prefill_chunk=5)] == greedy


def test_split_scores_and_embeds_the_same(models):
    whole, two, _ = models
    seqs = ["ACGTACGGTTAC" * 5, "TTGACA" * 3]
    assert evo_cli.score_sequences(two, seqs, chunk_size=16) == evo_cli.score_sequences(whole, seqs, chunk_size=16)
    layer = f"blocks.{len(whole.blocks) - 1}.mlp.l3"  # a block on the last device
    for kwargs in (dict(pool="mean"), dict(pool="last", chunk_size=16), dict(pool="none", chunk_size=16)):
        a, b = (evo_cli.embed(m, seqs, layers=[layer, "blocks.0"], **kwargs) for m in (whole, two))
        for key in a:
            pairs = zip(a[key], b[key]) if kwargs["pool"] == "none" else [(a[key], b[key])]
            assert all(torch.equal(x, y) for x, y in pairs)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.parent.name)
def test_parameters_states_and_activations_go_to_each_blocks_device(case):
    """With the meta device as the second device (distinguishable from the CPU): parameters, states
    and the activations entering each block land where the plan says."""
    model = build_model(open_checkpoint(case, None), [CPU, torch.device("meta")], torch.float32, "torch")
    owners = model.placement.owners
    assert set(owners) == {0, 1}
    for i, block in enumerate(model.blocks):
        want = "cpu" if owners[i] == 0 else "meta"
        assert {p.device.type for p in block.parameters()} == {want}
        assert {t.device.type for t in block.buffers()} <= {want}
    assert model.embedding_layer.weight.device == CPU and model.norm.scale.device == CPU
    state = model.new_state(1, 8)
    for i, s in enumerate(state.layers):
        assert {t.device.type for t in vars(s).values()} == {"cpu" if owners[i] == 0 else "meta"}
    # each block's input arrives on its device; stop at the first meta block (meta ops would import
    # torch._dynamo, seconds of start-up)
    seen = []

    def record(_module, args):
        seen.append(args[0].device.type)
        if args[0].device.type == "meta":
            raise _Reached

    for block in model.blocks:
        block.register_forward_pre_hook(record)
    with torch.inference_mode(), pytest.raises(_Reached):
        model(torch.tensor([[65, 67, 71, 84, 65]]), state)
    assert seen == ["cpu"] * owners.count(0) + ["meta"]


class _Reached(Exception):
    pass


# --- command line ------------------------------------------------------------------------------------

def test_cli_split_gives_the_same_bytes(tmp_path):
    fasta = tmp_path / "in.fa"
    fasta.write_text(">a\nACGTACGGTTACGATT\n>b\nTTGACAGG\n")
    outs = []
    for device in ("cpu", "cpu,cpu"):
        out = tmp_path / f"{device.replace(',', '_')}.tsv"
        code, _, err = evo("score", "--fasta", fasta, "-m", CASES[1], "--device", device, "-o", out, "-q")
        assert code == 0, err
        outs.append(out.read_bytes())
    assert outs[0] == outs[1] and len(outs[0]) > 20


@pytest.mark.parametrize("args, message", [
    (["--device", "cpu,,cpu"], "has an empty entry"),
    (["--device", "cpu", "--devices-per-rank", "2"], "use --device auto"),
    (["--device", "cpu,cpu,cpu,cpu,cpu,cpu,cpu,cpu"], "cannot split 7 block(s) over 8 devices"),
    (["--device", "cuda:0,cuda:0"], "names one GPU twice (cuda:0 and cuda:0)"),
])
def test_cli_bad_devices_are_one_line(tmp_path, args, message):
    fasta = tmp_path / "in.fa"
    fasta.write_text(">a\nACGT\n")
    code, _, err = evo("score", "--fasta", fasta, "-m", CASES[1], "-o", tmp_path / "out.tsv", *args)
    assert code != 0 and message in err and len(err.strip().splitlines()) == 1, err


def test_cli_duplicate_gpus_are_a_usage_error(tmp_path):
    fasta = tmp_path / "in.fa"
    fasta.write_text(">a\nACGT\n")
    code, _, err = evo("score", "--fasta", fasta, "-m", CASES[1], "-o", tmp_path / "out.tsv", "--device", "cuda,cuda:0")
    assert code == 2 and "names one GPU twice (cuda and cuda:0)" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out.tsv").exists()


def test_fp8_projections_count_their_e4m3_weights(fake_gpus, tmp_path, monkeypatch):
    """An FP8 model keeps an E4M3 copy of every Hyena projection weight (one byte an element) beside the
    weight: 201 MB a block for evo2_40b, 4.2 GB on each GPU of a 2-way split. The split and ``auto``
    counted without it."""
    config = motif_config("evo2", hidden_size=32, num_layers=14, head_dim=8, state_size=4)
    with torch.device("meta"):
        model = StripedHyena(config)
    plain, first = block_memory(model, torch.bfloat16, 64)
    sizes, first8 = block_memory(model, torch.bfloat16, 64, fp8=True)
    assert first8 == first and [s - p for s, p in zip(sizes, plain)] == [
        0 if kind == "attn" else 3 * 32 * 32 for kind in config.block_types]
    # a GPU that holds the model within 90 % of its memory, but not with the E4M3 weights too
    need = (sum(plain) + first) / 0.9
    assert sum(sizes) + first > 0.9 * (need + 1000)
    fake_gpus(int(need) + 1000, int(need) + 1000)
    assert auto_devices(config, torch.bfloat16, 64) is None
    assert auto_devices(config, torch.bfloat16, 64, fp8=True) == [torch.device("cuda:0"), torch.device("cuda:1")]
    # load_model tells the split whether the projections run in FP8
    import evo_cli.checkpoints.loader as loader

    from .fp8util import write_fp8_checkpoint

    seen = []

    def spy(model, devices, dtype, state_tokens, fp8=False):
        seen.append(fp8)
        return plan(model, devices, dtype, state_tokens, fp8)

    monkeypatch.setattr(loader, "plan", spy)
    ckpt = write_fp8_checkpoint(tmp_path / "fp8")
    for mode in ("emulate", "off"):
        evo_cli.load_model(ckpt, device="cpu,cpu", dtype="float32", fp8=mode)
    assert seen == [True, False]


def test_devices_per_rank_is_recorded_in_the_command(tmp_path, monkeypatch):
    """``--devices-per-rank`` is in the command an output records, as every other option with a value (it
    was left out: a rerun of the recorded command was not the run). The GPUs it asks for are faked: the
    model loads on the CPU."""
    import json

    import pyarrow.parquet as pq

    import evo_cli.cli.score as score_cli

    monkeypatch.setattr(score_cli, "load_model_cli", lambda model, *a, **k: evo_cli.load_model(model, device="cpu"))
    fasta = tmp_path / "in.fa"
    fasta.write_text(">a\nACGTACGT\n")
    for extra, recorded in (([], None), (["--devices-per-rank", "2"], "2")):
        out = tmp_path / f"s{len(extra)}.parquet"
        code, _, err = evo("score", "--fasta", fasta, "-m", CASES[1], "-o", out, "-q", *extra)
        assert code == 0, err
        command = shlex.split(json.loads(pq.read_schema(out).metadata[b"evo"])["command"])
        assert command[:2] == ["evo", "score"] and "--device" in command
        got = command[command.index("--devices-per-rank") + 1] if "--devices-per-rank" in command else None
        assert got == recorded


def test_a_run_resumes_across_placements_in_every_command(tmp_path):
    """Where the model runs (``--device``, ``--devices-per-rank``) does not change the results, so a progress
    file made with one placement is resumed with another, whichever command made it: the commands whose
    progress keeps the command line (score, embed, generate) refused a changed ``--device`` and would have
    refused a changed ``--devices-per-rank``, unlike score-variants and mutagenize. Another option still
    differs."""
    from evo_cli.generation import run_generate
    from evo_cli.runs import progress_metadata

    model = evo_cli.load_model(CASES[1], device="cpu", dtype="float32")
    base = "evo generate --model m --device {} --n-tokens 4 --batch-size 2"
    before = {"model": "m", "command": base.format("cuda:0") + " --devices-per-rank 2"}
    after = {"model": "m", "command": base.format("cuda:1,cuda:2")}
    assert progress_metadata(before) == progress_metadata(after) == {
        "model": "m", "command": "evo generate --model m --n-tokens 4 --batch-size 2"}
    assert progress_metadata({"command": base.format("cpu").replace("2", "3")}) != progress_metadata(after)
    out = tmp_path / "gen.fa"
    steps = []

    def stop_in_the_second_batch(n):
        steps.append(n)
        if len(steps) == 6:
            raise KeyboardInterrupt

    prompts = {"a": "ACGT", "b": "GGAT", "c": "TTAG"}
    with pytest.raises(KeyboardInterrupt):
        run_generate(model, prompts, 4, out, header=before, batch_size=2, seed=3, progress=stop_in_the_second_batch)
    gens, resumed = run_generate(model, prompts, 4, out, header=after, batch_size=2, resume=True)
    assert resumed == 2 and len(gens) == 3
