"""Embeddings: the references' hidden states, pooling, chunking, strands, batching, layer names."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from evo_cli.embedding import default_layer, embed, iter_embeddings, resolve_layer, resolve_layers
from evo_cli.errors import InputError
from evo_cli.io.fasta import reverse_complement
from evo_cli.model.init import motif_config
from evo_cli.model.tokenizer import decode
from evo_cli.registry import model_config

from .conftest import EVO1_CASES, EVO2_CASES, case_id

BASES = "ACGT"


def random_dna(n: int, seed: int) -> str:
    g = torch.Generator().manual_seed(seed)
    return "".join(BASES[i] for i in torch.randint(0, 4, (n,), generator=g).tolist())


def recorded_layer(case) -> str:
    with safe_open(str(case / "vectors.safetensors"), "pt") as f:
        return f.metadata()["embedding_layer"]


def hooked(model, seq: str, layer: str) -> torch.Tensor:
    """[L, D]: the layer's output on one full forward pass, captured directly."""
    out = {}
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: out.setdefault("h", o))
    with torch.no_grad():
        model(torch.tensor([list(seq.encode())]))
    handle.remove()
    return out["h"][0].float()


@pytest.mark.parametrize("case", EVO2_CASES, ids=case_id)
def test_evo2_recorded_embedding(load_case, case):
    model, v = load_case(case)
    layer = recorded_layer(case)
    seqs = [decode(row) for row in v["input_ids"]]
    got = embed(model, seqs, layer, pool="none")[layer]
    for i, ref in enumerate(v["embedding"]):
        assert (got[i] - ref).abs().max().item() < 1e-4
    means = embed(model, seqs, layer, pool="mean")[layer]
    assert (means - v["embedding"].mean(1)).abs().max().item() < 1e-5


@pytest.mark.parametrize("case", EVO1_CASES, ids=case_id)
def test_evo1_recorded_hidden_states(load_case, case):
    model, v = load_case(case)
    hs = v["hidden_states_b0"]  # [n_layers + 1, L, D]: embedding output, then each block's output
    names = ["embedding_layer"] + [f"blocks.{i}" for i in range(len(hs) - 1)]
    got = embed(model, [decode(v["input_ids"][0])], names, pool="none")
    for k, name in enumerate(names):
        assert (got[name][0] - hs[k]).abs().max().item() < 1e-4, name


@pytest.mark.parametrize("family", ["evo1", "evo2"])
@pytest.mark.parametrize("pool", ["mean", "none"])
def test_chunked_equals_unchunked(tiny_models, family, pool):
    """(max and last are checked chunked against the per-position values in test_pooling_definitions)"""
    model = tiny_models[family]
    seqs = [random_dna(201, 0), random_dna(97, 1)]
    layers = ["blocks.2", "blocks.-1.mlp.l3", "norm"]
    whole = embed(model, seqs, layers, pool=pool, chunk_size=1024)
    parts = embed(model, seqs, layers, pool=pool, chunk_size=37)
    for layer in whole:
        for a, b in zip(whole[layer], parts[layer]):
            assert a.shape == b.shape
            assert (a - b).abs().max().item() < 1e-4, layer


def test_pooling_definitions(tiny_models):
    model = tiny_models["evo2"]
    seqs = [random_dna(50, 2), random_dna(13, 3), random_dna(120, 4)]
    per_pos = embed(model, seqs, "blocks.3", pool="none")["blocks.3"]
    for pool, reduce in (("mean", lambda h: h.mean(0)), ("max", lambda h: h.amax(0)), ("last", lambda h: h[-1])):
        got = embed(model, seqs, "blocks.3", pool=pool, chunk_size=40)["blocks.3"]
        assert got.shape == (3, 32) and got.dtype == torch.float32
        for i, h in enumerate(per_pos):
            assert (got[i] - reduce(h)).abs().max().item() < 1e-5, pool


def test_batching_and_padding_match_single_sequences(tiny_models):
    """Right-padded batches of unequal lengths (and long sequences between them) give each sequence's
    own values, in input order."""
    model = tiny_models["evo2"]
    seqs = [random_dna(n, 10 + n) for n in (40, 7, 200, 41, 3, 90, 150)]
    layers = ["embedding_layer", "blocks.5.mlp.l3"]
    for pool in ("mean", "none"):
        batched = embed(model, seqs, layers, pool=pool, batch_size=3, chunk_size=100)
        for i, s in enumerate(seqs):
            alone = embed(model, [s], layers, pool=pool)
            for layer in layers:
                assert (batched[layer][i] - alone[layer][0]).abs().max().item() < 1e-5
        if pool == "none":
            assert [len(h) for h in batched["embedding_layer"]] == [len(s) for s in seqs]


def test_stream_order_and_pieces(tiny_models):
    model = tiny_models["evo1"]
    seqs = [random_dna(n, n) for n in (20, 130, 5, 64)]
    pieces = list(iter_embeddings(model, seqs, ["blocks.1", "blocks.0"], pool="none", batch_size=4, chunk_size=50))
    assert [p.index for p in pieces] == sorted(p.index for p in pieces)
    long = [(p.layer, p.start, len(p.values)) for p in pieces if p.index == 1]
    assert long == [("blocks.1", 0, 50), ("blocks.0", 0, 50), ("blocks.1", 50, 50), ("blocks.0", 50, 50),
                    ("blocks.1", 100, 30), ("blocks.0", 100, 30)]
    seen = []
    list(iter_embeddings(model, seqs, "blocks.0", chunk_size=50, progress=seen.append))
    assert sum(seen) == sum(len(s) for s in seqs)


@pytest.mark.parametrize("chunk_size", [1024, 45])
def test_both_strands(tiny_models, chunk_size):
    model = tiny_models["evo2"]
    seqs = [random_dna(100, 5), random_dna(31, 6)]
    layer = "blocks.4.mlp.l3"
    both = embed(model, seqs, layer, pool="none", strand="both", chunk_size=chunk_size)[layer]
    for i, s in enumerate(seqs):
        fwd, rc = hooked(model, s, layer), hooked(model, reverse_complement(s), layer)
        # forward position i with reverse-complement position L-1-i
        assert (both[i] - (fwd + rc.flip(0)) / 2).abs().max().item() < 1e-4
        mean = embed(model, [s], layer, pool="mean", strand="both", chunk_size=chunk_size)[layer][0]
        assert (mean - (fwd.mean(0) + rc.mean(0)) / 2).abs().max().item() < 1e-5
        last = embed(model, [s], layer, pool="last", strand="both", chunk_size=chunk_size)[layer][0]
        assert (last - (fwd[-1] + rc[-1]) / 2).abs().max().item() < 1e-4
        top = embed(model, [s], layer, pool="max", strand="both", chunk_size=chunk_size)[layer][0]
        assert (top - (fwd.amax(0) + rc.amax(0)) / 2).abs().max().item() < 1e-4


def test_blocks_past_the_deepest_layer_do_not_run(tiny_models):
    model = tiny_models["evo2"]
    seq = random_dna(300, 7)
    fired = []
    handles = [model.blocks[i].register_forward_hook(lambda m, a, o, i=i: fired.append(i)) for i in (0, 3)]
    try:
        tokens = embed(model, [seq], "embedding_layer", pool="none", chunk_size=100)["embedding_layer"][0]
        assert fired == [] and torch.equal(tokens, model.embedding_layer.weight[torch.tensor(list(seq.encode()))])
        embed(model, [seq], "blocks.2", chunk_size=100)
        assert fired == [0, 0, 0]
        embed(model, [seq], "norm", chunk_size=100)
        assert fired == [0, 0, 0] + [0, 3] * 3
    finally:
        for h in handles:
            h.remove()


def test_layer_names():
    config = motif_config("evo2", hidden_size=32, num_layers=7, head_dim=8, name="not-published")
    assert resolve_layer(config, "blocks.-1") == "blocks.6"
    assert resolve_layer(config, "blocks.-7.mlp.l3") == "blocks.0.mlp.l3"
    assert resolve_layers(config, ["norm", "blocks.6", "blocks.-1", "embedding_layer"]) == ["norm", "blocks.6", "embedding_layer"]
    for bad in ("blocks.7", "blocks.-8", "blocks.1.mlp", "blocks.x", "layers.1", ""):
        with pytest.raises(InputError, match=r"valid layers are embedding_layer, blocks.N, blocks.N.mlp.l3 \(N in 0..6"):
            resolve_layer(config, bad)
    assert default_layer(config) == "blocks.3.mlp.l3"
    assert resolve_layers(config, None) == ["blocks.3.mlp.l3"]
    assert default_layer(model_config("evo2_7b")) == "blocks.28.mlp.l3"


def test_bad_inputs(tiny_models):
    model = tiny_models["evo2"]
    with pytest.raises(InputError, match="sequence 1 is empty"):
        embed(model, ["ACGT", ""])
    with pytest.raises(InputError, match="pool must be one of"):
        embed(model, ["ACGT"], pool="median")
    with pytest.raises(InputError, match="strand must be one of forward, both, not 'reverse'"):
        embed(model, ["ACGT"], strand="reverse")
    for batch_size in (0, 1 << 70):
        with pytest.raises(InputError, match=f"batch size must be from 1 to 1,048,576, not {batch_size}"):
            embed(model, ["ACGT"], batch_size=batch_size)
    with pytest.raises(InputError, match="chunk size must be at least 1, not 0"):
        embed(model, ["ACGT"], chunk_size=0)
    with pytest.raises(InputError, match="unknown layer"):
        embed(model, ["ACGT"], "blocks.99")


@pytest.mark.parametrize("module", ["blocks.0.mlp.l1", "blocks.0.mlp.act", "blocks.3.mlp.l1"])
def test_a_hook_on_the_mlp_keeps_what_the_layer_computed(tiny_models, module):
    """The MLP gates in place in the activation's buffer unless a hook may hold it: a forward hook on
    ``mlp.l1`` or ``mlp.act`` keeps the layer's own output, and the forward's numbers do not change."""
    model = tiny_models["evo2"]
    ids = torch.tensor([list(random_dna(64, 3).encode())])
    mlp = model.get_submodule(module.rsplit(".", 1)[0])
    with torch.inference_mode():
        plain = model(ids)
        seen = {}
        handles = [mlp.register_forward_pre_hook(lambda m, a: seen.update(x=a[0].clone())),
                   model.get_submodule(module).register_forward_hook(lambda m, a, o: seen.update(out=o))]
        try:
            assert torch.equal(model(ids), plain)
        finally:
            for h in handles:
                h.remove()
        want = mlp.l1(seen["x"])
        assert torch.equal(seen["out"], mlp.act(want) if module.endswith("act") else want)


@pytest.mark.parametrize("layers", [["blocks.11"], ["blocks.11", "blocks.11.mlp.l3"], ["norm", "blocks.13"],
                                    ["norm", "blocks.13.mlp.l3"]])
def test_the_deepest_block_output_runs_layer_by_layer(monkeypatch, layers):
    """A block's own output (``blocks.N``) and the last block beside ``norm`` sit in the last block run:
    when the KV caches would not fit they run layer by layer too (only ``blocks.N.mlp.l3`` did), with the
    chunked run's numbers."""
    import evo_cli.embedding as embedding
    from evo_cli.model.init import random_model

    # 14 layers of the Evo 2 motif: blocks 3 and 10 are attention, so layer by layer needs less memory
    model = random_model(motif_config("evo2", hidden_size=16, num_layers=14, head_dim=8, state_size=4, name="t14"),
                         seed=3)
    seq = random_dna(70, 1)
    kw = dict(layers=layers, pool="none", chunk_size=32)
    chunked = list(iter_embeddings(model, [seq], **kw))
    used = []
    real = model.forward_layerwise
    monkeypatch.setattr(model, "forward_layerwise", lambda *a, **k: (used.append(1), real(*a, **k))[1])
    monkeypatch.setattr(embedding, "free_memory_bytes", lambda device: 0)
    got = list(iter_embeddings(model, [seq], **kw))
    assert used == [1]
    assert [(e.layer, e.start) for e in got] == [(e.layer, e.start) for e in chunked]
    assert max((a.values - b.values).abs().max().item() for a, b in zip(got, chunked)) < 1e-5


def test_embed_takes_any_iterable_of_sequences(tiny_models):
    """A generator of sequences (``score_sequences`` takes one) ended in an IndexError."""
    model = tiny_models["evo2"]
    seqs = [random_dna(9, 1), random_dna(5, 2)]
    want = embed(model, seqs, ["blocks.2"])["blocks.2"]
    assert want.shape == (2, 32)
    assert torch.equal(embed(model, (s for s in seqs), ["blocks.2"])["blocks.2"], want)
    assert torch.equal(embed(model, seqs[0], ["blocks.2"])["blocks.2"], want[:1])
    # a string is one sequence in the streaming form too, not one per base
    assert [(e.index, e.layer) for e in iter_embeddings(model, seqs[0], ["blocks.2"])] == [(0, "blocks.2")]


def test_iter_embeddings_takes_a_generator(tiny_models):
    """A generator of sequences was consumed by the empty-sequence check and yielded nothing."""
    model = tiny_models["evo2"]
    seqs = [random_dna(9, 1), random_dna(5, 2)]
    want = [(e.index, e.values) for e in iter_embeddings(model, seqs, ["blocks.2"])]
    got = [(e.index, e.values) for e in iter_embeddings(model, (s for s in seqs), ["blocks.2"])]
    assert [i for i, _ in got] == [0, 1]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(got, want, strict=True))


@pytest.mark.parametrize("long", [False, True])
def test_a_suspended_stream_leaves_no_hook_on_the_model(tiny_models, long):
    """The capture hooks stayed on the caller's model while an ``iter_embeddings`` generator was
    suspended (or kept half-read): the model then ran long inputs in one pass and decoded off the fast
    CPU path, and every forward's output was held. Two streams over one model interleave correctly."""
    model = tiny_models["evo2"]
    seqs = [random_dna(n, n) for n in (30, 12, 25)]
    kw = dict(pool="none", chunk_size=10 if long else 100, batch_size=1)
    want = list(iter_embeddings(model, seqs, ["blocks.2", "norm"], **kw))
    a = iter_embeddings(model, seqs, ["blocks.2", "norm"], **kw)
    b = iter_embeddings(model, seqs[::-1], "blocks.4", **kw)
    first = next(a)
    assert not any(m._forward_hooks for m in model.modules())
    next(b)
    assert not any(m._forward_hooks for m in model.modules())
    got = [first] + list(a)
    assert [(e.index, e.layer, e.start) for e in got] == [(e.index, e.layer, e.start) for e in want]
    assert all(torch.equal(x.values, y.values) for x, y in zip(got, want))
    b.close()


def test_outputs_are_normal_tensors(tiny_models):
    """The values were inference tensors (made under ``torch.inference_mode``): normalising them in
    place, or training a classifier head on them, raised a RuntimeError."""
    from evo_cli.scoring import iter_sequence_scores

    model = tiny_models["evo2"]
    seqs = [random_dna(9, 1), random_dna(30, 2)]
    for pool in ("mean", "none"):
        for e in iter_embeddings(model, seqs, ["blocks.2"], pool=pool, chunk_size=16):
            assert not e.values.is_inference()
            e.values /= e.values.norm()  # in place
    w = torch.ones(32, 2, requires_grad=True)
    (e.values @ w).sum().backward()  # autograd saves values for the gradient of w
    assert w.grad.shape == (32, 2)
    for s in iter_sequence_scores(model, seqs, chunk_size=16):
        assert not s.logprobs.is_inference()
        s.logprobs.clamp_(min=-10)


def test_lower_case_sequences_from_python_are_warned_about(tiny_models, caplog):
    """A soft-masked (lower-case) base is a token of its own, which the models rarely saw: the CLI
    upper-cases what it reads, the Python API takes the tokens as given and now says so, once per call."""
    from evo_cli.scoring import score_sequences

    model = tiny_models["evo2"]
    with caplog.at_level("WARNING"):
        embed(model, ["ACGTACGT", "GGCAT"], "blocks.1")
        score_sequences(model, ["ACGTACGT", "GGCAT"])
    assert not caplog.records
    with caplog.at_level("WARNING"):
        embed(model, ["ACGTACGT", "ggcAT", "acgt"], "blocks.1")
        score_sequences(model, ["ACGTACGT", "ggcAT", "acgt"])
    assert [r.getMessage().split(":")[1] for r in caplog.records] == [" sequence 1 holds lower-case bases"] * 2


def test_bfloat16_model_moved_by_the_user_gives_float32_and_leaves_torch_as_it_was(tiny_models):
    """A model the caller moved with ``.to(torch.bfloat16)``: float32 values near the float32 model's,
    the same under ``no_grad`` and ``inference_mode``; grad mode and torch's threads unchanged after."""
    import copy

    model = copy.deepcopy(tiny_models["evo2"]).to(torch.bfloat16)
    seqs = [random_dna(20, 5), random_dna(3, 6)]
    want = embed(tiny_models["evo2"], seqs, "blocks.3")["blocks.3"]
    threads = torch.get_num_threads()
    got = embed(model, seqs, "blocks.3")["blocks.3"]
    assert got.dtype == torch.float32 and (got - want).abs().max().item() < 0.05 * want.abs().max().item()
    assert [h.dtype for h in embed(model, seqs, "blocks.3", pool="none")["blocks.3"]] == [torch.float32] * 2
    with torch.no_grad():
        assert torch.equal(embed(model, seqs, "blocks.3")["blocks.3"], got)
    with torch.inference_mode():
        assert torch.equal(embed(model, seqs, "blocks.3")["blocks.3"], got)
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled() and torch.get_num_threads() == threads
