"""Cost of the FP8 projections: per projection GEMM and per window of the benchmark model, by mode.

    python benchmarks/bench_fp8.py                                   # CPU: off vs emulate, short run
    python benchmarks/bench_fp8.py --device cuda --modes off emulate native --length 8192

``off`` is the plain matmul, ``emulate`` Hopper's FP8 GEMM through mmaemu (its exact float64 model on
a CPU, its CUDA kernels on a GPU), ``native`` torch._scaled_mm (sm_89 / sm_90 only). The projection
shapes are the benchmark model's (hidden 512 -> 1,536) and Evo 2 1B's (1,920 -> 5,760) at ``--rows``
rows; the window is a forward pass of the benchmark model over ``--length`` tokens with FP8 scales on
every Hyena projection (values do not matter for the cost). Best of ``--repeats`` after a warm-up.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from common import add_model_args, build, machine, timed  # noqa: E402

from evo_cli import kernels as K  # noqa: E402


def projection(mode, rows, k, n, device, dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, rows, k, generator=g).to(device, dtype)
    w = (torch.randn(n, k, generator=g) / k**0.5).to(device, dtype)
    si, sw = torch.tensor(64.0, device=device), torch.tensor(256.0, device=device)
    if mode == "off":
        return lambda: torch.nn.functional.linear(x, w)
    wq = K.quantize_e4m3(w, sw)
    return lambda: K.fp8_linear(x, wq, si, sw, mode=mode)


def fp8_model(args):
    model = build(args)
    model.add_fp8_state()
    for b in model.blocks:
        if b.kind != "attn":
            p = b.projections
            p.fp8_scale_input.fill_(448.0 / 8)
            p.fp8_scale_weight.fill_(448.0 / float(p.weight.abs().max()))
    return model.to(args.device)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--modes", nargs="+", default=["off", "emulate"], choices=["off", "emulate", "native"])
    p.add_argument("--rows", type=int, default=256, help="rows (tokens) of the per-projection GEMMs")
    p.add_argument("--length", type=int, default=256, help="tokens of the model window")
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args()
    if args.threads:  # before the GEMM table: build() sets it only for the window
        torch.set_num_threads(args.threads)
    if "emulate" in args.modes and not K.mmaemu_available():
        # a GPU machine without the package (no network to install it): time the other modes
        print("emulate skipped: mmaemu is not installed (pip install mmaemu)", file=sys.stderr)
        args.modes = [m for m in args.modes if m != "emulate"]
        if not args.modes:
            sys.exit("no mode left to time")
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.float32 if args.device == "cpu" else torch.bfloat16)
    print(machine())
    print(f"\n| GEMM (rows x in -> out) | {' | '.join(args.modes)} | multiply-adds/s ({args.modes[-1]}) |")
    print("|---|" + "---|" * (len(args.modes) + 1))
    for name, k, n in (("benchmark model", args.hidden, 3 * args.hidden), ("Evo 2 1B", 1920, 5760)):
        with torch.inference_mode():
            secs = [timed(projection(m, args.rows, k, n, args.device, dtype), args.device, args.repeats)[0] for m in args.modes]
        macs = args.rows * k * n
        cells = " | ".join(f"{s * 1e3:,.1f} ms" for s in secs)
        print(f"| {name}: {args.rows} x {k} -> {n} | {cells} | {macs / secs[-1] / 1e6:,.0f} M |", flush=True)
    model = fp8_model(args)
    hyena = sum(b.kind != "attn" for b in model.blocks)
    ids = torch.randint(0, 512, (1, args.length), device=args.device)
    secs = []
    for m in args.modes:
        model.set_fp8(m)
        with torch.inference_mode():
            secs.append(timed(lambda: model(ids), args.device, args.repeats)[0])
    print(f"\nwindow of {args.length} tokens, {hyena} FP8 projections ({args.hidden} -> {3 * args.hidden}), "
          f"{str(dtype).removeprefix('torch.')} on {args.device}:")
    for m, s in zip(args.modes, secs):
        print(f"  {m:>7}: {s:,.2f} s ({s / secs[0]:,.1f} x {args.modes[0]})")


if __name__ == "__main__":
    main()
