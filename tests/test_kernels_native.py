"""The C++ CPU kernels (kernels/<op>/cpu.cpp, built by kernels/_native.py): attention against the blocked
PyTorch reference, RMSNorm (with the residual add) against its reference, their bits under chunking,
batching and threads, and the fallback where they cannot be built."""

from __future__ import annotations

import logging
import os
import shlex
import signal
import time

import pytest
import torch

from evo_cli import kernels as K
from evo_cli.kernels import _native
from evo_cli.kernels.attention import cpu as attention_cpu
from evo_cli.kernels.attention.cpu import HEAD_SIZES, native_attention
from evo_cli.kernels.attention.naive import causal_attention_ref
from evo_cli.kernels.norm.naive import rms_norm_ref
from evo_cli.model.init import motif_config, random_model

pytestmark = pytest.mark.skipif(_native.compiler() is None, reason="no C++ compiler on this machine")


def _qkv(B, H, Lq, offset, hd, seed=0):
    g = torch.Generator().manual_seed(seed)
    # q as the model makes it: [B, L, H, hd] seen as [B, H, L, hd]
    q = torch.randn(B, Lq, H, hd, generator=g).transpose(1, 2)
    k = torch.randn(B, H, offset + Lq, hd, generator=g) * 2
    v = torch.randn(B, H, offset + Lq, hd, generator=g)
    return q, k, v


@pytest.mark.parametrize("hd", HEAD_SIZES)
@pytest.mark.parametrize("B, H, Lq, offset", [(2, 3, 37, 0), (1, 2, 9, 300), (2, 1, 260, 5), (1, 1, 2, 511)])
def test_matches_reference(B, H, Lq, offset, hd):
    """Tiles of 8 queries with a short last one, key blocks of 256 crossed or not, cached keys or none."""
    q, k, v = _qkv(B, H, Lq, offset, hd)
    out = native_attention(q, k, v, offset)
    assert out is not None and out.shape == (B, H, Lq, hd) and out.dtype == torch.float32
    expected = causal_attention_ref(q.double(), k.double(), v.double(), offset)
    assert (out.double() - expected).abs().max().item() < 2e-5
    # the output is a [B, L, H, hd] tensor seen as [B, H, L, hd]: heads merge back without a copy
    assert out.transpose(1, 2).is_contiguous()


def test_same_bits_in_chunks_batches_and_threads():
    """A query's result depends on its own keys only: a full forward, the same positions in chunks over
    the cache, the head alone or beside others, and 1 or 2 threads give the same bits."""
    q, k, v = _qkv(3, 2, 700, 0, 32, seed=1)
    full = native_attention(q, k, v, 0)
    for a, b in [(0, 3), (3, 259), (259, 700)]:
        part = native_attention(q[:, :, a:b], k[:, :, :b], v[:, :, :b], a)
        assert torch.equal(part, full[:, :, a:b])
    assert torch.equal(native_attention(q[1:2], k[1:2], v[1:2], 0), full[1:2])
    # a strided last axis (copied) gets a contiguous one's bits
    strided = torch.empty(*k.shape[:3], 64)[..., ::2]
    strided.copy_(k)
    assert torch.equal(native_attention(q, strided, v, 0), full)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert torch.equal(native_attention(q, k, v, 0), full)
    finally:
        torch.set_num_threads(threads)


def test_dispatch():
    """The CPU kernels' backend runs it for chunks; the torch backend, a single query, other dtypes and
    head sizes run torch's kernels (within float32 rounding of it)."""
    q, k, v = _qkv(1, 2, 20, 40, 32, seed=2)
    fused = K.causal_attention(q, k, v, 40, backend="numba")
    assert torch.equal(fused, native_attention(q, k, v, 40))
    plain = K.causal_attention(q, k, v, 40, backend="torch")
    assert not torch.equal(fused, plain) and torch.allclose(fused, plain, atol=1e-5)
    assert native_attention(q.double(), k.double(), v.double(), 40) is None
    q48, k48, v48 = _qkv(1, 1, 4, 0, 128)
    assert native_attention(q48, k48, v48, 0) is None
    assert torch.allclose(K.causal_attention(q48, k48, v48, 0, backend="numba"),
                          causal_attention_ref(q48, k48, v48, 0), atol=1e-5)
    leaf = q.clone().requires_grad_()
    assert native_attention(leaf, k, v, 40) is None


@pytest.mark.parametrize("D", [8, 40, 128])
def test_rms_norm_matches_reference(D, monkeypatch):
    """16 lanes and a scalar tail; the add's sum exact; rows the same bits alone or split among threads."""
    g = torch.Generator().manual_seed(D)
    x, r, scale = torch.randn(3, 37, D, generator=g) * 3, torch.randn(3, 37, D, generator=g), torch.rand(D, generator=g)
    y = K.rms_norm(x, scale, 1e-6, backend="numba")
    assert (y.double() - rms_norm_ref(x.double(), scale.double(), 1e-6)).abs().max().item() < 1e-6
    u, y2 = K.add_rms_norm(x, r, scale, 1e-6, backend="numba")
    assert torch.equal(u, x + r)
    assert torch.equal(y2, K.rms_norm(x + r, scale, 1e-6, backend="numba"))
    assert torch.equal(K.rms_norm(x[1:2, 5:9], scale, 1e-6, backend="numba"), y[1:2, 5:9])
    # a strided input (copied) gets a contiguous one's bits
    assert torch.equal(K.rms_norm(x.transpose(0, 1).contiguous().transpose(0, 1), scale, 1e-6, backend="numba"), y)
    threads = torch.get_num_threads()
    monkeypatch.setattr(_native, "MIN_PART_WORK", 1)
    try:
        torch.set_num_threads(2)
        assert torch.equal(K.rms_norm(x, scale, 1e-6, backend="numba"), y)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("V", [512, 40, 7])
def test_token_logprobs_matches_reference(V, monkeypatch):
    """Strided logits and tokens (a chunk's positions 1..n-1), a row's bits alone, beside others and in
    threads; a token outside the vocabulary is an error, as gather's."""
    g = torch.Generator().manual_seed(V)
    logits, tokens = torch.randn(3, 50, V, generator=g) * 5, torch.randint(0, V, (3, 50), generator=g)
    lp = K.token_logprobs(logits[:, :-1], tokens[:, 1:], backend="numba")
    assert lp.shape == (3, 49) and lp.dtype == torch.float32
    expected = K.token_logprobs_ref(logits[:, :-1].double(), tokens[:, 1:])
    assert (lp.double() - expected).abs().max().item() < 4e-6
    assert torch.equal(K.token_logprobs(logits[1:2, 10:20], tokens[1:2, 11:21], backend="numba"), lp[1:2, 10:20])
    threads = torch.get_num_threads()
    monkeypatch.setattr(_native, "MIN_PART_WORK", 1)
    try:
        torch.set_num_threads(2)
        assert torch.equal(K.token_logprobs(logits[:, :-1], tokens[:, 1:], backend="numba"), lp)
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(IndexError):
        K.token_logprobs(logits, torch.full((3, 50), V), backend="numba")


@pytest.mark.parametrize("B,L,C,G,skip,carry", [(2, 263, 20, 5, True, True), (3, 9, 128, 8, False, True),
                                                 (1, 40, 48, 4, True, False)])
def test_fir_gives_the_numba_loops_bits(B, L, C, G, skip, carry, monkeypatch):
    """Hyena-MR's filter (128 taps) in C++: the bits of numba's loop (and so of the decoding step), the
    history moved on alike; channel blocks of 16 with a short last one, tiles of 256 tokens crossed."""
    from evo_cli.kernels.fir import cpu as fir_cpu

    g = torch.Generator().manual_seed(L)
    x1v, x2, h = torch.randn(B, L, C, generator=g), torch.randn(B, L, C, generator=g), torch.randn(G, 128, generator=g)
    D = torch.randn(C, generator=g) if skip else None
    state = torch.randn(B, 127, C, generator=g) if carry else None
    ours = None if state is None else state.clone()
    got = fir_cpu.hyena_fir(x1v, x2, h, D, ours)
    assert _native.load("fir") is not None
    monkeypatch.setitem(_native._libs, "fir", None)  # numba's loop
    loop = None if state is None else state.clone()
    want = fir_cpu.hyena_fir(x1v, x2, h, D, loop)
    assert torch.equal(got, want) and (state is None or torch.equal(ours, loop))
    assert (got - K.hyena_fir_ref(x1v, x2, h, D, None if state is None else state.clone())).abs().max() < 1e-4


def test_hooked_post_norm_runs_unfused():
    """A hook on a block's post_norm sees it run (the residual add is then not fused into it), and the
    model's numbers are the same bits either way."""
    model = random_model(motif_config("evo2", hidden_size=32, num_layers=4, head_dim=16), seed=0)
    ids = torch.randint(0, 512, (2, 40), generator=torch.Generator().manual_seed(0))
    attn = model.config.layers_of("attn")[0]
    with torch.inference_mode():
        plain = model(ids)[0]
        seen = []
        handle = model.blocks[attn].post_norm.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
        try:
            hooked = model(ids)[0]
        finally:
            handle.remove()
    assert seen == [(2, 40, 32)] and torch.equal(hooked, plain)


def test_without_a_compiler(monkeypatch, tmp_path, caplog):
    """No compiler: one log line per kernel, and torch's ops run with the numbers they gave before."""
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(_native, "_libs", {})
    q, k, v = _qkv(1, 2, 16, 8, 32, seed=3)
    x, r, scale = q[0, 0].contiguous(), k[0, 0, :16].contiguous(), v[0, 0, 0].contiguous()
    with caplog.at_level(logging.INFO, logger=_native.__name__):
        assert native_attention(q, k, v, 8) is None
        out = K.causal_attention(q, k, v, 8, backend="numba")
        u, y = K.add_rms_norm(x, r, scale, 1e-6, backend="numba")
        y1 = K.rms_norm(x, scale, 1e-6, backend="numba")
        lp = K.token_logprobs(k[0], torch.zeros(k.shape[1:3], dtype=torch.int64), backend="numba")
    assert torch.equal(out, attention_cpu.causal_attention_cpu(q, k, v, 8))
    assert torch.equal(lp, K.token_logprobs_ref(k[0], torch.zeros(k.shape[1:3], dtype=torch.int64)))
    assert torch.equal(u, x + r) and torch.equal(y, rms_norm_ref(x + r, scale, 1e-6))
    assert torch.equal(y1, rms_norm_ref(x, scale, 1e-6))
    lines = sorted(r.getMessage() for r in caplog.records)
    assert len(lines) == 3 and "C++ kernel attention is not available" in lines[0], lines
    assert "C++ kernel logprob is not available" in lines[1] and "C++ kernel norm is not available" in lines[2], lines
    assert all(line.endswith("torch's ops run instead") for line in lines), lines


def test_without_a_compiler_the_filter_names_numbas_loop(monkeypatch, tmp_path, caplog):
    """The log line names what runs instead: for Hyena-MR's filter that is numba's loop, not torch."""
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(_native, "_libs", {})
    with caplog.at_level(logging.INFO, logger=_native.__name__):
        assert _native.load("fir") is None
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith("the C++ kernel fir is not available"), lines
    assert lines[0].endswith("numba's loop run instead"), lines


def test_built_once_per_cpu(monkeypatch, tmp_path):
    """The build lands in the cache under a name that covers source, compiler and CPU; a new process
    (here: an emptied table of loaded kernels) loads it without building again, and another CPU builds
    its own."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(_native, "_libs", {})
    assert _native.load("attention") is not None
    built = sorted((tmp_path / "evo" / "native").iterdir())
    assert len(built) == 1 and built[0].name.startswith("attention-") and built[0].suffix == ".so"
    calls = []
    monkeypatch.setattr(_native, "_compile", lambda *a: calls.append(a))
    monkeypatch.setattr(_native, "_libs", {})
    assert _native.load("attention") is not None and calls == []
    monkeypatch.setattr(_native, "_cpu_identity", lambda: "another cpu")
    monkeypatch.setattr(_native, "_libs", {})
    _native.load("attention")  # its "build" (the stub) writes nothing, so the load fails and says so
    assert len(calls) == 1 and calls[0][2].name != built[0].name


def test_a_damaged_build_is_built_again(monkeypatch, tmp_path):
    """A build cut short (a full disk, an interrupted copy of a cache) is built again, not left failing.
    (Another CPU's name: this process has the usual build loaded, and loading a path again reuses it.)"""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(_native, "_libs", {})
    monkeypatch.setattr(_native, "_cpu_identity", lambda: "a damaged build's cpu")
    built = _native._target("norm", _native.compiler())
    built.parent.mkdir(parents=True)
    built.write_bytes(b"cut short")
    assert _native.load("norm") is not None and built.stat().st_size > 1000


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_child_forked_during_a_build_loads_kernels():
    """A process forked while another of its threads builds a kernel (the loader's lock held) loads
    kernels in the child: the lock is not inherited held, where the child used to wait forever."""
    assert _native.load("norm") is not None
    _native._lock.acquire()  # as a build in another thread holds it
    try:
        pid = os.fork()
        if pid == 0:  # the child: the kernel it inherited, through the lock
            os._exit(0 if _native.load("norm") is not None else 1)
        for _ in range(200):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.01)
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child waited for a lock held by a thread it does not have")
    finally:
        _native._lock.release()
    assert os.waitstatus_to_exitcode(status) == 0


def _fake_compiler(tmp_path, body: str) -> str:
    path = tmp_path / "fake-c++"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


def test_a_compiler_that_is_not_one(monkeypatch, tmp_path, caplog):
    """CXX naming a program that prints bytes that are not text and builds nothing: one log line, no
    kernel (the caller's PyTorch path), never an exception (undecodable output used to be one)."""
    monkeypatch.setenv("CXX", _fake_compiler(tmp_path, r"printf '\377\376 not a compiler\n'; exit 0"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(_native, "_libs", {})
    with caplog.at_level(logging.INFO, logger=_native.__name__):
        assert _native.load("norm") is None
    assert [r.getMessage() for r in caplog.records if "not available" in r.getMessage()] != []
    assert len(caplog.records) == 1, [r.getMessage() for r in caplog.records]


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")
def test_a_compiler_that_hangs_is_stopped_whole(monkeypatch, tmp_path, caplog):
    """A build past its time limit is a log line, and every process of the compiler ends with it (g++
    runs cc1plus and as as its children, which used to run on after the driver was killed)."""
    pidfile = tmp_path / "child.pid"
    body = f'case "$1" in --version) echo fake 1.0;; *) sleep 30 & echo $! > {pidfile}; wait;; esac'
    monkeypatch.setenv("CXX", _fake_compiler(tmp_path, body))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(_native, "_libs", {})
    monkeypatch.setattr(_native, "BUILD_TIMEOUT", 0.5)
    start = time.monotonic()
    with caplog.at_level(logging.INFO, logger=_native.__name__):
        assert _native.load("norm") is None
    assert time.monotonic() - start < 10 and "timed out" in caplog.records[-1].getMessage()
    child = int(pidfile.read_text())
    for _ in range(100):  # the kill is delivered at once; give the kernel a moment to end it
        if not _running(child):
            break
        time.sleep(0.01)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("the compiler's child process outlived the time limit")
    assert list((tmp_path / "evo" / "native").iterdir()) == []  # no partial build left


def test_a_compiler_with_arguments(monkeypatch, tmp_path):
    """CXX as build tools set it, a command with words (``ccache g++``, ``g++ -m64``): the kernel
    builds, where the whole string was taken for a program's name."""
    monkeypatch.setenv("CXX", f"env EVO_TEST=1 {shlex.quote(_native.compiler())}")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(_native, "_libs", {})
    assert _native.load("norm") is not None


def test_every_kernel_same_bits_on_1_2_3_threads(monkeypatch):
    """Every C++ kernel split among 1, 2 and 3 threads (heads, rows, channel blocks of 16 with a short
    last one) gives the same bits, the filter's moved history included."""
    from evo_cli.kernels.fir import cpu as fir_cpu

    g = torch.Generator().manual_seed(7)
    q, k, v = _qkv(2, 3, 19, 21, 32, seed=7)
    x, r, scale = torch.randn(5, 7, 40, generator=g), torch.randn(5, 7, 40, generator=g), torch.rand(40, generator=g)
    logits, tokens = torch.randn(3, 11, 70, generator=g), torch.randint(0, 70, (3, 11), generator=g)
    x1v, x2, h = torch.randn(2, 30, 50, generator=g), torch.randn(2, 30, 50, generator=g), torch.randn(5, 40, generator=g)
    D, state = torch.randn(50, generator=g), torch.randn(2, 39, 50, generator=g)
    monkeypatch.setattr(_native, "MIN_PART_WORK", 1)
    threads, runs = torch.get_num_threads(), []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            moved = state.clone()
            runs.append([native_attention(q, k, v, 21), *K.add_rms_norm(x, r, scale, 1e-6, backend="numba"),
                         K.token_logprobs(logits, tokens, backend="numba"), fir_cpu.hyena_fir(x1v, x2, h, D, moved), moved])
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for run in runs[1:] for a, b in zip(runs[0], run))


@pytest.mark.parametrize("hd", HEAD_SIZES)
def test_a_later_keys_nonfinite_value_stays_out_of_earlier_queries(hd):
    """A value that is NaN or infinite at position 12 leaves the queries before it as they are alone
    (a masked key's weight is 0, and 0 times NaN or infinity is NaN: the tile's earlier queries, and a
    cached key block crossed by the diagonal, took it in); the query at 12 and after are NaN, as torch's."""
    for offset, bad in [(0, 12), (250, 255)]:
        q, k, v = _qkv(1, 2, 16, offset, hd, seed=hd)
        v[:, :, bad, 3] = float("nan")
        v[:, :, bad, 5] = float("inf")
        out = native_attention(q, k, v, offset)
        before = bad - offset
        alone = native_attention(q[:, :, :before], k[:, :, :bad], v[:, :, :bad], offset)
        assert torch.equal(out[:, :, :before], alone) and alone.isfinite().all()
        assert out[:, :, before:].isnan().any(-1).all()


def test_no_cache_in_the_working_directory(monkeypatch, tmp_path, caplog):
    """A relative XDG_CACHE_HOME (invalid, says the XDG spec) or a home that cannot be found (``~`` left
    as it is) is a log line and torch's path, not a cache made in whatever folder the user runs from."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(_native, "_libs", {})
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")
    with caplog.at_level(logging.INFO, logger=_native.__name__):
        assert _native.load("norm") is None
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setattr(_native.os.path, "expanduser", lambda p: p)  # as with no HOME and no passwd entry
    monkeypatch.setattr(_native, "_libs", {})
    with caplog.at_level(logging.INFO, logger=_native.__name__):
        assert _native.load("norm") is None
    assert list(tmp_path.iterdir()) == []
    assert len(caplog.records) == 2 and all("XDG_CACHE_HOME" in r.getMessage() for r in caplog.records)
