"""Profile one forward window (torch.profiler) and time it by CPU time of this process.

    python benchmarks/profile_forward.py --model evo-demo --length 2048          # a 2k window of evo-demo
    python benchmarks/profile_forward.py --length 8192 --threads 2               # 8k, the benchmark model

Prints the window's CPU seconds (``time.process_time``, best of ``--repeats``; the machine is shared,
so wall time is noisy), the GEMM floor (the model's weight-matmul FLOPs at the rate its own GEMM
shapes reach here, ``gemm_rate``), the arithmetic floor (that plus attention's matmul FLOPs at
the same rate and one exp per attention score at torch.exp's rate), and the top ops by self CPU
time, grouped as GEMM / attention / other.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from common import add_model_args  # noqa: E402
from profile_decode import load  # noqa: E402

GEMM = {"aten::mm", "aten::addmm", "aten::bmm"}
ATTENTION = {"aten::_scaled_dot_product_flash_attention_for_cpu"}


def gemm_flops(model, L: int, batch: int) -> float:
    """FLOPs of the model's weight matmuls for ``batch`` x ``L`` tokens (logits included)."""
    n = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return 2.0 * batch * L * (n + model.embedding_layer.weight.numel())


def attention_scores(model, L: int, batch: int, offset: int = 0, blocks: int | None = None) -> float:
    """Attention scores (query-key pairs, causal) of ``batch`` x ``L`` tokens after ``offset`` cached
    ones, over all heads of ``blocks`` attention blocks (default: all of the model's). Each score
    costs 4 head_dim FLOPs of matmul (QK^T and PV) and one exp."""
    c = model.config
    blocks = len(c.layers_of("attn")) if blocks is None else blocks
    return batch * (L * offset + L * (L + 1) / 2) * c.num_heads * blocks


def attention_flops(model, L: int, batch: int, offset: int = 0, blocks: int | None = None) -> float:
    """Matmul FLOPs of causal attention, as ``attention_scores``."""
    return 4.0 * model.config.head_dim * attention_scores(model, L, batch, offset, blocks)


def cpu_seconds(fn, repeats: int, calls: int = 1) -> float:
    """Best CPU seconds (``time.process_time``) of one ``fn()``, timed ``calls`` at a time."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        for _ in range(calls):
            fn()
        best = min(best, (time.process_time() - t0) / calls)
    return best


def exp_rate(repeats: int = 3) -> float:
    """exp per CPU-second of torch.exp over 1 MB of float32 (in cache): the softmax's arithmetic."""
    x = torch.randn(1 << 18)
    y = torch.empty_like(x)
    return x.numel() / cpu_seconds(lambda: torch.exp(x, out=y), repeats, calls=20)


def arithmetic_floor(gemm: float, attention: float, scores: float, rate: float, exps: float) -> tuple[float, str]:
    """The arithmetic floor in CPU-s (GEMMs and attention's matmuls at ``rate``, its exps at ``exps``)
    and one line that shows it beside the GEMM floor."""
    floor = gemm / rate + attention / rate + scores / exps
    return floor, (f"GEMM {gemm / 1e9:.1f} GFLOP + attention {attention / 1e9:.1f} GFLOP at {rate / 1e9:.1f} GFLOP "
                   f"per CPU-s, {scores / 1e6:.0f} M attention exps at {exps / 1e9:.2f} G per CPU-s: GEMM floor "
                   f"{gemm / rate:.3f} CPU-s, arithmetic floor {floor:.3f} CPU-s")


def gemm_rate(model, rows: int, repeats: int = 5) -> float:
    """FLOP per CPU-second of the model's own weight GEMMs at ``rows`` rows: every distinct
    ``nn.Linear`` shape (and the tied unembedding) timed alone, best of ``repeats`` after a warm-up,
    weighted by how often the model has it. Small hidden sizes make thin GEMMs that run below the
    core's peak, and that is arithmetic the model cannot avoid."""
    shapes = Counter(tuple(m.weight.shape) for m in model.modules() if isinstance(m, torch.nn.Linear))
    shapes[tuple(model.embedding_layer.weight.shape)] += 1
    flops = seconds = 0.0
    for (out, inp), count in shapes.items():
        a, w = torch.randn(rows, inp), torch.randn(out, inp)
        torch.nn.functional.linear(a, w)
        n = max(1, int(4e8 // (2.0 * rows * inp * out)))  # a few ms per timing: CPU clocks are coarse
        flops += count * 2.0 * rows * inp * out
        seconds += count * cpu_seconds(lambda: torch.nn.functional.linear(a, w), repeats, calls=n)
    return flops / seconds


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--model", default=None, help="a model name or path (default: the random benchmark model)")
    p.add_argument("--length", type=int, default=8192)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args()
    args.threads = args.threads or 1
    model = load(args)
    torch.set_num_threads(args.threads)
    ids = torch.randint(0, 4, (args.batch, args.length), generator=torch.Generator().manual_seed(0)) + 65
    with torch.inference_mode():
        model(ids[:, :256])
        best = cpu_seconds(lambda: model(ids), args.repeats)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            model(ids)
    rate = gemm_rate(model, args.batch * args.length)
    gf, af = gemm_flops(model, args.length, args.batch), attention_flops(model, args.length, args.batch)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    share = {"GEMM": 0.0, "attention": 0.0, "other": 0.0}
    for e in events:
        share["GEMM" if e.key in GEMM else "attention" if e.key in ATTENTION else "other"] += e.self_cpu_time_total
    print(f"{args.batch} x {args.length} tokens, {args.threads} thread(s): {best:.3f} CPU-s per window "
          f"({best / args.threads:.3f} s if the threads ran in parallel)")
    floor, line = arithmetic_floor(gf, af, attention_scores(model, args.length, args.batch), rate, exp_rate())
    print(line)
    print(f"measured / GEMM floor {best / (gf / rate):.2f}x, measured / arithmetic floor {best / floor:.2f}x")
    print("  ".join(f"{k} {v / total:.0%}" for k, v in share.items()))
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.top))


if __name__ == "__main__":
    main()
