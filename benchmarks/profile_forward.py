"""Profile one forward window (torch.profiler) and time it by CPU time of this process.

    python benchmarks/profile_forward.py --model evo-demo --length 2048          # a 2k window of evo-demo
    python benchmarks/profile_forward.py --length 8192 --threads 2               # 8k, the benchmark model

Prints the window's CPU seconds (``time.process_time``, best of ``--repeats``; the machine is shared,
so wall time is noisy), the GEMM floor (the model's weight-matmul FLOPs at the rate its own GEMM
shapes reach here, ``gemm_rate``), the arithmetic floor (that plus attention's matmul FLOPs and
every other FLOP of the window, ``other_work``, at the same rate, and one exp per attention score at
the fastest exp's rate), and the top ops by self CPU time, grouped as GEMM / attention / other.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from common import add_model_args  # noqa: E402
from profile_decode import load  # noqa: E402

GEMM = {"aten::mm", "aten::addmm", "aten::bmm", "mkldnn::_linear_pointwise"}
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
    """exps per CPU-second over 1 MB of float32 (in cache): the softmax's arithmetic. The faster of
    ``torch.exp`` and ``torch.exp2`` (an exp is exp2 of x * log2(e)): this torch computes exp2 about 3x
    faster than exp on AVX-512 (3.5 against 1.2 G per CPU-s), and its own softmax kernels do not run at
    torch.exp's rate either, so the slower one would overstate what an exp must cost."""
    x = torch.randn(1 << 18)
    y = torch.empty_like(x)
    return x.numel() / min(cpu_seconds(lambda: torch.exp(x, out=y), repeats, calls=20),
                           cpu_seconds(lambda: torch.exp2(x, out=y), repeats, calls=20))


def arithmetic_floor(gemm: float, attention: float, scores: float, rate: float, exps: float,
                     other: tuple[float, float] = (0.0, 0.0)) -> tuple[float, str]:
    """The arithmetic floor in CPU-s (GEMMs and attention's matmuls at ``rate``, its exps at ``exps``;
    ``other``: the rest's FLOPs, also at ``rate``, and exps, from ``other_work``) and one line that
    shows it beside the GEMM floor."""
    floor = (gemm + attention + other[0]) / rate + (scores + other[1]) / exps
    rest = (f" + {other[0] / 1e9:.1f} GFLOP of filters, norms and gates" if other[0] else "")
    rest_exps = f" + {other[1] / 1e6:.0f} M log-softmax exps" if other[1] else ""
    return floor, (f"GEMM {gemm / 1e9:.1f} GFLOP + attention {attention / 1e9:.1f} GFLOP{rest} at {rate / 1e9:.1f} "
                   f"GFLOP per CPU-s, {scores / 1e6:.0f} M attention exps{rest_exps} at {exps / 1e9:.2f} G per CPU-s: "
                   f"GEMM floor {gemm / rate:.3f} CPU-s, arithmetic floor {floor:.3f} CPU-s")


def gemm_rate(model, rows: int, repeats: int = 5) -> float:
    """FLOP per CPU-second of the model's own weight GEMMs at ``rows`` rows: every distinct
    ``nn.Linear`` shape (and the tied unembedding) timed alone, best of ``repeats`` after a warm-up,
    weighted by how often the model has it. Each shape takes the faster of ``F.linear`` (MKL) and
    oneDNN's GEMM (what the numba kernels run): the floor is the best rate this torch reaches. Small
    hidden sizes make thin GEMMs that run below the core's peak, and that is arithmetic the model
    cannot avoid."""
    onednn = importlib.import_module("evo_cli.kernels.linear.cpu")._ONEDNN
    gemms = [torch.nn.functional.linear] + ([lambda a, w: onednn(a, w, None, "none", [], "")] if onednn else [])
    shapes = Counter(tuple(m.weight.shape) for m in model.modules() if isinstance(m, torch.nn.Linear))
    shapes[tuple(model.embedding_layer.weight.shape)] += 1
    flops = seconds = 0.0
    for (out, inp), count in shapes.items():
        a, w = torch.randn(rows, inp), torch.randn(out, inp)
        n = max(1, int(4e8 // (2.0 * rows * inp * out)))  # a few ms per timing: CPU clocks are coarse
        flops += count * 2.0 * rows * inp * out
        best = float("inf")
        for gemm in gemms:
            gemm(a, w)
            best = min(best, cpu_seconds(lambda: gemm(a, w), repeats, calls=n))
        seconds += count * best
    return flops / seconds


def other_work(model, tokens: int, log_softmax: bool = True) -> tuple[float, float]:
    """(FLOPs, exps) of ``tokens`` tokens outside the GEMMs and attention: the Hyena featurizer's and
    filters' taps (2 FLOPs per tap and channel), the modal recurrence (4 per mode and channel; 8 for
    Evo 1's complex poles), the gates and skip terms, the norms (4 per element), residual adds, the
    MLP's gate, and with ``log_softmax`` (scoring) the log-softmax over the logits (3 FLOPs and one
    exp per vocabulary entry)."""
    c = model.config
    D, V = c.hidden_size, c.vocab_size
    per = 0.0
    for kind in c.block_types:
        per += 8 * D + 2 * D + c.inner_mlp_size  # two norms, two residual adds, the MLP's gate
        if kind == "attn":
            continue
        per += 2 * c.short_filter_length * 3 * D + D  # featurizer taps and its pre-gate
        if kind in ("hcs", "hcm"):
            taps = c.hcs_filter_length if kind == "hcs" else c.hcm_filter_length
            per += 2 * taps * D + 3 * D
        else:
            per += (8 if kind == "hyena" else 4) * c.state_size * D + 3 * D
    per += 4 * D + (3 * V if log_softmax else 0)  # the final norm, the log-softmax's sums
    return per * tokens, float(V * tokens if log_softmax else 0)


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
    floor, line = arithmetic_floor(gf, af, attention_scores(model, args.length, args.batch), rate, exp_rate(),
                                   other_work(model, args.batch * args.length, log_softmax=False))
    print(line)
    print(f"measured / GEMM floor {best / (gf / rate):.2f}x, measured / arithmetic floor {best / floor:.2f}x")
    print("  ".join(f"{k} {v / total:.0%}" for k, v in share.items()))
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.top))


if __name__ == "__main__":
    main()
