"""Profile one forward window (torch.profiler) and time it by CPU time of this process.

    python benchmarks/profile_forward.py --model evo-demo --length 2048          # a 2k window of evo-demo
    python benchmarks/profile_forward.py --length 8192 --threads 2               # 8k, the benchmark model

Prints the window's CPU seconds (``time.process_time``, best of ``--repeats``; the machine is shared,
so wall time is noisy), the matmul floor (the model's GEMM FLOPs at the rate one ``--length`` x
hidden x 3 hidden GEMM reaches here), and the top ops by self CPU time, grouped as GEMM / attention /
Hyena / other.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from common import add_model_args, build  # noqa: E402
from profile_decode import load  # noqa: E402

GEMM = {"aten::mm", "aten::addmm", "aten::bmm"}
ATTENTION = {"aten::_scaled_dot_product_flash_attention_for_cpu"}


def gemm_flops(model, L: int, batch: int) -> float:
    """FLOPs of the model's weight matmuls for ``batch`` x ``L`` tokens (logits included)."""
    n = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return 2.0 * batch * L * (n + model.embedding_layer.weight.numel())


def attention_flops(model, L: int, batch: int) -> float:
    """FLOPs of causal attention (QK^T and PV, half the square) over all attention blocks."""
    c = model.config
    return sum(2.0 * 2 * batch * c.num_heads * c.head_dim * L * L / 2 for _ in c.layers_of("attn"))


def matmul_rate(L: int, d: int, repeats: int = 3) -> float:
    """FLOP per CPU-second of an [L, d] x [d, 3d] GEMM (the Hyena projection's shape)."""
    a, w = torch.randn(L, d), torch.randn(3 * d, d)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        torch.nn.functional.linear(a, w)
        best = min(best, time.process_time() - t0)
    return 2.0 * L * d * 3 * d / best


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
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.process_time()
            model(ids)
            best = min(best, time.process_time() - t0)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            model(ids)
    rate = matmul_rate(args.length, model.config.hidden_size)
    gf, af = gemm_flops(model, args.length, args.batch), attention_flops(model, args.length, args.batch)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    share = {"GEMM": 0.0, "attention": 0.0, "other": 0.0}
    for e in events:
        share["GEMM" if e.key in GEMM else "attention" if e.key in ATTENTION else "other"] += e.self_cpu_time_total
    print(f"{args.batch} x {args.length} tokens, {args.threads} thread(s): {best:.3f} CPU-s per window "
          f"({best / args.threads:.3f} s if the threads ran in parallel)")
    print(f"GEMM {gf / 1e9:.1f} GFLOP, attention {af / 1e9:.1f} GFLOP; matmul rate {rate / 1e9:.1f} GFLOP per CPU-s; "
          f"GEMM floor {gf / rate:.3f} CPU-s, measured / floor {best / (gf / rate):.2f}x")
    print("  ".join(f"{k} {v / total:.0%}" for k, v in share.items()))
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.top))


if __name__ == "__main__":
    main()
