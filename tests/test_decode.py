"""Recurrent decoding and chunked prefill equal the full forward, for every prompt length."""

from __future__ import annotations

import contextlib

import pytest
import torch

from evo_cli.kernels import numba_available


@pytest.mark.parametrize("family", ["evo1", "evo2"])
@pytest.mark.parametrize("prompt_len", [1, 2, 5, 6, 7, 127, 128, 129, 300])
def test_decode_equals_full_forward(tiny_models, family, prompt_len):
    model = tiny_models[family]
    steps = 3
    ids = torch.randint(0, 512, (2, prompt_len + steps), generator=torch.Generator().manual_seed(prompt_len))
    with torch.no_grad():
        full = model(ids)
        state = model.new_state(2, prompt_len + steps)
        got = [model(ids[:, :prompt_len], state)]
        got += [model(ids[:, prompt_len + i : prompt_len + i + 1], state) for i in range(steps)]
    err = (torch.cat(got, 1) - full).abs().max().item()
    assert err < 1e-4, err


@pytest.mark.parametrize("family", ["evo1", "evo2"])
def test_chunked_prefill_equals_single_pass(tiny_models, family):
    model = tiny_models[family]
    ids = torch.randint(0, 512, (1, 400), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(ids)
        state = model.new_state(1, 400)
        chunks = [model(ids[:, a:b], state) for a, b in ((0, 128), (128, 129), (129, 300), (300, 400))]
    assert (torch.cat(chunks, 1) - full).abs().max().item() < 1e-4
    assert state.seqlen == 400


def test_state_helpers(tiny_models):
    model = tiny_models["evo2"]
    ids = torch.randint(0, 512, (2, 20), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        state = model.new_state(2, 30)
        model(ids[:, :10], state)
        fork = state.index_select([1, 1, 0])
        assert fork.batch_size == 3 and fork.seqlen == 10
        a = model(ids[[1, 1, 0], 10:], fork)
        b = model(ids[:, 10:], state)
    assert torch.allclose(a[0], b[1], atol=1e-5) and torch.allclose(a[2], b[0], atol=1e-5)
    with pytest.raises(ValueError, match="state holds 30 positions"):
        model(ids, state)


def test_cpu_models_store_wide_weights_column_major_from_the_start(monkeypatch):
    """Under --kernels torch (MKL's GEMV), CPU Linear weights are laid out for one-token products
    (benchmarks/README.md): column-major where a weight has more outputs than inputs, row-major
    otherwise; the numba loop reads every weight column-major, and switching kernels lays them out
    again. The layout is made when the model is built, not by the first decoding call: a product of
    few rows takes the numba loop only with a column-major weight, so a forward's bits would depend on
    whether the process had decoded before (a resumed run would not give the uninterrupted bytes)."""
    from evo_cli.model.init import motif_config, random_model

    def torch_layout(w):
        return (1, w.shape[0]) if w.shape[0] > w.shape[1] else (w.shape[1], 1)

    model = random_model(motif_config("evo2", hidden_size=32, num_layers=7, head_dim=16, inner_mlp_size=80), seed=0,
                         kernels="torch")
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert {m.weight.shape[0] > m.weight.shape[1] for m in linears} == {True, False}
    assert all(m.weight.stride() == torch_layout(m.weight) for m in linears)
    backends = ["torch", "numba"] if numba_available() else ["torch"]
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randint(0, 512, shape, generator=gen) for shape in [(1, 1), (1, 5), (2, 3), (1, 12)]]
    with torch.no_grad():
        for kernels in backends:
            model.set_kernels(kernels)
            want = all(m.weight.t().is_contiguous() for m in linears) if kernels == "numba" else \
                all(m.weight.stride() == torch_layout(m.weight) for m in linears)
            assert want, kernels
            before = [model(ids) for ids in inputs]
            model.new_state(1, 12)
            assert all(torch.equal(model(ids), b) for ids, b in zip(inputs, before)), kernels
        # weights coming back from another dtype get the layout too
        model.set_kernels("torch").double().float()
        assert all(m.weight.stride() == torch_layout(m.weight) for m in linears)
    # a backend this CPU cannot run fails when an op runs, not when the model is switched or loaded
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    model.set_kernels("triton")
    assert all(m.weight.stride() == torch_layout(m.weight) for m in linears)
    # off the CPU every weight is row-major, as a load straight to that device gives (meta stands in for a GPU)
    assert all(m.weight.is_contiguous() for m in model.to("meta").modules() if isinstance(m, torch.nn.Linear))
    # a model built on the CPU and initialised in place has the layout from the start
    from evo_cli.model.init import init_weights_
    from evo_cli.model.model import StripedHyena

    built = init_weights_(StripedHyena(model.config, kernels=backends[-1]), seed=0)
    with torch.no_grad():
        before = [built(ids) for ids in inputs]
        built.new_state(1, 12)
        assert all(torch.equal(built(ids), b) for ids, b in zip(inputs, before))


def test_rotary_angles_come_from_a_table_with_the_same_numbers(monkeypatch):
    """Angles sliced from the table are the directly computed ones, bit for bit; the table grows to
    the furthest position asked for, positions past ``table_positions`` are computed directly, and a
    table built under inference mode still works with autograd."""
    from evo_cli.model.layers import RotaryEmbedding

    rot = RotaryEmbedding(16, 10000.0, 4.0)
    monkeypatch.setattr(RotaryEmbedding, "table_positions", 2048)
    cpu = torch.device("cpu")
    for pos, L in ((0, 3), (7, 1), (250, 300), (2040, 8), (2045, 10), (5000, 2)):
        with torch.inference_mode():
            cos, sin = rot.angles(pos, L, cpu)
        t = torch.arange(pos, pos + L, dtype=torch.float32) / 4.0
        ang = torch.outer(t, rot.inv_freq)
        assert torch.equal(cos, ang.cos()) and torch.equal(sin, ang.sin()), (pos, L)
    assert rot._table[1].shape[0] == 2048  # grown by doubling, capped at table_positions
    q = torch.randn(1, 2, 1, 16, requires_grad=True)
    rot(q, q, 3)[0].sum().backward()
    assert q.grad is not None


def test_evo1_complex_filter_is_built_once_and_follows_the_weights():
    from evo_cli.model.init import motif_config, random_model

    model = random_model(motif_config("evo1", hidden_size=16, num_layers=2, head_dim=8, name="m"), seed=1)
    f = next(b.filter for b in model.blocks if b.kind == "hyena")
    first = f.modal()
    assert f.modal()[0] is first[0]  # reused: not rebuilt per decoding step
    with torch.no_grad():
        f.poles.mul_(0.5)  # new weights in place (as load_state_dict does)
    log_p, _ = f.modal()
    assert log_p is not first[0]
    want = torch.log(torch.complex(f.poles[..., 0, 0], f.poles[..., 0, 1]))
    assert torch.equal(log_p, want)
    # while training, the graph is built afresh each call
    f.poles.requires_grad_(True)
    assert f.modal()[0] is not f.modal()[0]


@pytest.mark.parametrize("family", ["evo1", "evo2"])
def test_long_plain_forward_runs_in_chunks_with_the_same_numbers(tiny_models, family, monkeypatch):
    """model(ids) past forward_chunk tokens runs chunked (fewer tokens per block call) and gives
    the single-pass logits; a hooked model is never split; last_block returns None either way."""
    model = tiny_models[family]
    ids = torch.randint(0, 512, (2, 300), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        full = model(ids)
        seen = []
        handle = model.blocks[0].register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[1]))
        assert (model(ids) - full).abs().max().item() == 0 and seen == [300]  # hooked: one pass
        handle.remove()
        monkeypatch.setattr(model, "forward_chunk", 128)
        calls = []
        monkeypatch.setattr(model, "_forward_in_chunks", _spy(model._forward_in_chunks, calls))
        chunked = model(ids)
        assert model(ids, last_block=2) is None and model(ids, return_logits=False) is None
    assert calls and chunked.shape == full.shape
    assert (chunked - full).abs().max().item() < 1e-4


def _spy(fn, calls):
    def wrapper(*args, **kwargs):
        calls.append(args)
        return fn(*args, **kwargs)

    return wrapper


@pytest.mark.parametrize("family", ["evo1", "evo2"])
def test_layerwise_equals_chunked(tiny_models, family):
    """One block at a time over the whole sequence gives the chunked path's logits and, at each
    yield, the same chunk's output of a hooked module of the last block."""
    model = tiny_models[family]
    ids = torch.randint(0, 512, (2, 150), generator=torch.Generator().manual_seed(5))
    last = min(model.config.layers_of("attn")[0] + 1, len(model.blocks) - 1)  # an attention block runs by then
    got = {}
    handle = model.blocks[last].mlp.l3.register_forward_hook(lambda m, a, out: got.__setitem__("h", out.clone()))
    try:
        with torch.no_grad():
            chunked = [(s, lg) for s, lg in model.forward_chunked(ids, 64)]
            layerwise = [(s, lg) for s, lg in model.forward_layerwise(ids, 64)]
            feats_c = [(s, got["h"]) for s, _ in model.forward_chunked(ids, 64, last_block=last)]
            feats_l = [(s, got["h"]) for s, _ in model.forward_layerwise(ids, 64, last_block=last)]
            assert all(lg is None for _, lg in model.forward_layerwise(ids, 64, return_logits=False))
    finally:
        handle.remove()
    assert [s for s, _ in layerwise] == [s for s, _ in chunked] == [0, 64, 128]
    assert torch.cat([lg for _, lg in layerwise], 1).shape == (2, 150, 512)
    assert max((a - b).abs().max().item() for (_, a), (_, b) in zip(chunked, layerwise)) < 1e-5
    assert [s for s, _ in feats_l] == [0, 64, 128]
    assert max((a - b).abs().max().item() for (_, a), (_, b) in zip(feats_c, feats_l)) < 1e-5


def test_forward_long_picks_layerwise_when_the_kv_caches_do_not_fit(tiny_models):
    from evo_cli.model.init import motif_config, random_model

    one_attn = tiny_models["evo2"].long_forward_bytes(1, 100_000, 8192)
    assert one_attn["layerwise"] > one_attn["chunked"]  # one attention block: chunked is smaller
    model = random_model(motif_config("evo2", hidden_size=16, num_layers=14, head_dim=8, state_size=4, name="t14"), seed=0)
    ids = torch.zeros(1, 10, dtype=torch.long)
    small = model.long_forward_bytes(1, 10, 4)
    assert small["layerwise"] < small["chunked"]  # two attention blocks, hidden = Hkv * hd
    assert model.forward_long(ids, 4).__name__ == "forward_chunked"
    assert model.forward_long(ids, 4, free_bytes=small["chunked"]).__name__ == "forward_chunked"
    assert model.forward_long(ids, 4, free_bytes=small["chunked"] - 1).__name__ == "forward_layerwise"


@pytest.mark.parametrize("family", ["evo1", "evo2"])
def test_static_decode_step_equals_the_normal_step(tiny_models, family):
    """The fixed-shape step that CUDA graphs capture (run eagerly on CPU) gives the normal step's
    logits and leaves the same state, from any prefill length."""
    from evo_cli.model.graph import StaticDecoder

    model = tiny_models[family]
    ids = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        a, b = model.new_state(2, 24), model.new_state(2, 24)
        model(ids[:, :7], a)
        model(ids[:, :7], b)
        dec = StaticDecoder(model, b)
        assert dec.graph is None  # CPU: no graph, the static step runs eagerly
        for p in range(7, 24):
            want = model(ids[:, p : p + 1], a)
            got = dec.step(ids[:, p : p + 1])
            assert (got - want).abs().max().item() < 1e-5, p
        with pytest.raises(ValueError):
            dec.step(ids[:, :1])
    assert a.seqlen == b.seqlen == 24
    for sa, sb in zip(a.layers, b.layers):
        for name in vars(sa):
            assert (getattr(sa, name) - getattr(sb, name)).abs().max().item() < 1e-5


def test_static_decoder_without_memory_for_the_capture_falls_back(tiny_models, monkeypatch):
    """The capture copies the state (a second KV cache); when that copy does not fit, decoding goes on
    without a graph instead of ending in a traceback."""
    from evo_cli.model.cache import InferenceState
    from evo_cli.model.graph import StaticDecoder

    model = tiny_models["evo2"]
    ids = torch.randint(0, 512, (1, 12), generator=torch.Generator().manual_seed(3))

    def no_memory(self):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    with torch.no_grad():
        a, b = model.new_state(1, 12), model.new_state(1, 12)
        model(ids[:, :5], a)
        model(ids[:, :5], b)
        monkeypatch.setattr(InferenceState, "clone", no_memory)
        dec = StaticDecoder(model, b, graph=True)
        assert dec.graph is None
        for p in range(5, 12):
            want = model(ids[:, p : p + 1], a)
            assert (dec.step(ids[:, p : p + 1]) - want).abs().max().item() < 1e-5


@pytest.mark.parametrize("failing", ["warm-up", "capture"])
def test_static_decoder_failed_capture_undoes_the_warm_up(tiny_models, monkeypatch, failing):
    """The capture's two warm-up steps advance the state (and write the KV cache at position 0); when
    they or the capture then fail, decoding goes on without a graph from the state the prefill left.
    No CUDA here: the stream and graph calls are stood in for, and one raises after the warm-up steps
    ran (as an allocation can) or at the capture (as an op that cannot be captured does)."""
    from evo_cli.model.graph import StaticDecoder

    class Stream:
        def wait_stream(self, other):
            pass

    caller, calls = Stream(), []

    @contextlib.contextmanager
    def on_stream(stream):
        calls.append(("stream", stream))
        yield
        if failing == "warm-up":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    def capture(graph):
        raise RuntimeError("operation not permitted when stream is capturing")

    for name, fake in {"device": lambda d: contextlib.nullcontext(), "Stream": Stream, "CUDAGraph": object,
                       "current_stream": lambda *d: caller, "stream": on_stream, "graph": capture,
                       "set_stream": lambda st: calls.append(("set_stream", st)),
                       "synchronize": lambda *d: calls.append(("synchronize",))}.items():
        monkeypatch.setattr(torch.cuda, name, fake)
    model = tiny_models["evo2"]
    ids = torch.randint(0, 512, (1, 12), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        a, b = model.new_state(1, 12), model.new_state(1, 12)
        model(ids[:, :5], a)
        model(ids[:, :5], b)
        dec = StaticDecoder(model, b, graph=True)
        assert dec.graph is None
        # the warm-up ran on a side stream; the fallback is back on the caller's, with every kernel done
        assert calls[0][0] == "stream" and calls[0][1] is not caller
        assert calls[1:] == [("set_stream", caller), ("synchronize",)], calls
        for sa, sb in zip(a.layers, b.layers):
            for name in vars(sa):
                assert torch.equal(getattr(sa, name), getattr(sb, name))
        for p in range(5, 12):
            want = model(ids[:, p : p + 1], a)
            assert (dec.step(ids[:, p : p + 1]) - want).abs().max().item() < 1e-5


@pytest.mark.parametrize("family", ["evo1", "evo2"])
@pytest.mark.parametrize("kernels", ["torch", "numba"])
def test_a_model_built_under_inference_mode_decodes(kernels, family):
    """Weights created under torch.inference_mode are inference tensors (no version counter, no views
    outside inference mode): laying them out for decoding and caching the rotary table must work
    with them, and give the numbers of a model built normally."""
    from evo_cli.model.init import motif_config, random_model

    if kernels == "numba" and not numba_available():
        pytest.skip("numba is not installed")
    config = motif_config(family, hidden_size=32, num_layers=7, head_dim=8, inner_mlp_size=80)
    ids = torch.randint(0, 512, (2, 6), generator=torch.Generator().manual_seed(0))
    outs = []
    for inference in (True, False):
        with torch.inference_mode(inference):
            model = random_model(config, seed=3, kernels=kernels)
        with torch.inference_mode():
            state = model.new_state(2, 6)
            outs.append(torch.cat([model(ids[:, t : t + 1], state) for t in range(6)], 1))
    assert torch.allclose(outs[0], outs[1], atol=1e-5)


def test_a_cast_keeps_the_float32_tensors_as_loading_does():
    """``.to(bfloat16)`` / ``.half()`` / ``.double()`` after building keep the Hyena filters and rotary
    frequencies float32, with their values: the same model as one built in that dtype, and a float64
    model runs with its float32 states (it raised a dtype mismatch)."""
    from evo_cli.model.init import motif_config, random_model
    from evo_cli.model.model import keeps_float32

    config = motif_config("evo2", hidden_size=32, num_layers=7, head_dim=16, inner_mlp_size=80)
    ids = torch.randint(0, 512, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = random_model(config, seed=0, dtype=torch.bfloat16)(ids)
        cast = random_model(config, seed=0).to(torch.bfloat16)
        kept = dict(random_model(config, seed=0).named_parameters())
        assert all(p.dtype == torch.float32 and torch.equal(p, kept[n])
                   for n, p in cast.named_parameters() if keeps_float32(n))
        assert torch.equal(cast(ids), want)
        wide = random_model(config, seed=0).double()
        assert wide.blocks[0].mlp.l1.weight.dtype == torch.float64 and wide.blocks[2].filter.D.dtype == torch.float32
        state = wide.new_state(1, 12)
        steps = torch.cat([wide(ids[:, :7], state), wide(ids[:, 7:], state)], 1)
        assert torch.allclose(steps.float(), random_model(config, seed=0)(ids), atol=1e-4)


def test_last_block_is_checked():
    """``last_block`` runs blocks 0..last_block (-1: none, the embedding only); other values are refused
    (-2 ran all but the last block, as a Python slice, and 100 ran every block and returned None)."""
    from evo_cli.model.init import motif_config, random_model

    model = random_model(motif_config("evo2", hidden_size=32, num_layers=7, head_dim=16, inner_mlp_size=80), seed=0)
    ids = torch.randint(0, 512, (1, 6), generator=torch.Generator().manual_seed(0))
    ran = []
    hooks = [b.register_forward_hook(lambda m, i, o, k=k: ran.append(k)) for k, b in enumerate(model.blocks)]
    try:
        with torch.no_grad():
            for last, blocks in [(-1, 0), (0, 1), (3, 4), (6, 7)]:
                ran.clear()
                assert model(ids, last_block=last) is None and ran == list(range(blocks)), last
            for bad in (7, -2, 2.0, True):
                with pytest.raises(ValueError, match="last_block must be a block index from 0 to 6, or -1"):
                    model(ids, last_block=bad)
            with pytest.raises(ValueError, match="the state holds blocks 0..3; this forward runs blocks 0..6"):
                model(ids, model.new_state(1, 6, last_block=3))
    finally:
        for h in hooks:
            h.remove()
