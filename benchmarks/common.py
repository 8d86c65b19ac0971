"""Shared benchmark helpers: a random model of a chosen size, timing, peak memory.

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated``; on CPU, the growth of the process's peak
RSS over its value before the measured work (run one configuration per process for clean numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import torch

from evo_cli.model.init import motif_config, random_model
from evo_cli.runtime import keep_freed_memory


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hidden", type=int, default=512, help="hidden size (default 512)")
    p.add_argument("--layers", type=int, default=14, help="layers in the Evo 2 motif S M L A S M L (default 14)")
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--inner-mlp", type=int, default=None,
                   help="MLP inner size (default: about 8/3 hidden; 11008 in evo2_7b)")
    p.add_argument("--family", choices=["evo1", "evo2"], default="evo2")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None, help="default: float32 on CPU, bfloat16 on CUDA")
    p.add_argument("--kernels", choices=["auto", "triton", "numba", "torch"], default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--default-malloc", action="store_true",
                   help="keep glibc's default allocator settings (the CLI calls runtime.keep_freed_memory)")


def build(args):
    if not args.default_malloc:
        keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.float32 if args.device == "cpu" else torch.bfloat16)
    config = motif_config(args.family, hidden_size=args.hidden, num_layers=args.layers, head_dim=args.head_dim,
                          inner_mlp_size=args.inner_mlp, name=f"bench-{args.family}-{args.hidden}x{args.layers}")
    return random_model(config, seed=0, device=args.device, dtype=dtype, kernels=args.kernels)


def sync(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_bytes() -> int:
    """Resident memory now (Linux), file-backed mapped pages included."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def kv_cache_bytes(model, batch: int, positions: int, last_block: int | None = None) -> int:
    """Bytes of the KV cache of the attention blocks up to ``last_block`` (all when None)."""
    c = model.config
    n_attn = sum(1 for i in c.layers_of("attn") if last_block is None or i <= last_block)
    return n_attn * 2 * batch * c.num_kv_heads * c.head_dim * positions * model.dtype.itemsize


def load_kernels(model) -> None:
    """A 64-token forward and one decoding step of ``model``: what a process compiles or loads once
    (numba's kernels: about 130 MiB and 0.6 s; Triton's), so that a peak measured after it is the
    run's own memory."""
    ids = torch.full((1, 64), 65, dtype=torch.long, device=model.device)
    with torch.inference_mode():
        state = model.new_state(1, 65)
        model(ids, state)
        model(ids[:, :1], state)


class PeakMemory:
    """Context manager: ``.bytes`` is the peak memory the block added (see module docstring)."""

    def __init__(self, device):
        self.cuda = str(device).startswith("cuda")

    def __enter__(self):
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = peak_rss_bytes()
        return self

    def __exit__(self, *exc):
        self.bytes = (torch.cuda.max_memory_allocated() if self.cuda else peak_rss_bytes()) - self.base


def timed(fn, device, repeats: int = 1):
    """(best seconds over ``repeats`` runs after one warm-up, result of the last run)."""
    out = fn()
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best, out


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads (torch {torch.__version__})"


def run_isolated(script: str, argv: list[str]) -> dict:
    """Run ``script argv --json`` in a fresh process (clean peak-memory numbers) and parse its JSON line."""
    proc = subprocess.run([sys.executable, script, *argv, "--json"], capture_output=True, text=True)
    if proc.returncode:
        lines = proc.stderr.strip().splitlines()
        # the traceback's end, for a failure seen once on a lent GPU; callers report the last line
        print("\n".join(lines[-20:]), file=sys.stderr)
        return {"error": (lines or [f"exit status {proc.returncode}"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def without_options(argv: list[str], *names: str) -> list[str]:
    """argv without the options ``names`` and the numbers after each."""
    rest, skipping = [], False
    for a in argv:
        if a in names:
            skipping = True
        elif not (skipping and a.isdigit()):
            skipping = False
            rest.append(a)
    return rest


def run_each_length(script: str, argv: list[str], lengths: list[int]):
    """Yield ``(L, result)`` for each length, each run in its own process with argv's ``--lengths`` replaced."""
    rest = without_options(argv, "--lengths")
    for L in lengths:
        r = run_isolated(script, [*rest, "--lengths", str(L)])
        if "error" in r:
            print(f"L={L}: {r['error']}", file=sys.stderr)
        yield L, r


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1024
    return f"{n:.1f} GiB"
