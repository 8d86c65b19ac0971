"""Forward-pass throughput and peak memory of a random StripedHyena at several lengths.

    python benchmarks/bench_forward.py                      # hidden 512, 14 layers, L = 1k, 8k, 64k
    python benchmarks/bench_forward.py --lengths 8192 --hidden 4096 --layers 32 --kernels triton

Each length runs in its own process so that peak memory is measured cleanly, after a 64-token
forward has loaded the compiled kernels. The model is random: the runtime's cost does not depend on
the weights.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from common import (PeakMemory, add_model_args, build, fmt_bytes, load_kernels, machine, run_each_length,  # noqa: E402
                    timed)


def one(args) -> dict:
    model = build(args)
    L = args.lengths[0]
    ids = torch.randint(0, 512, (args.batch, L), device=args.device)
    load_kernels(model)

    def forward():
        model(ids, return_logits=not args.no_logits)  # dropped at once: the peak is one forward's, not two

    with torch.inference_mode(), PeakMemory(args.device) as mem:
        seconds, _ = timed(forward, args.device, args.repeats)
    return {"length": L, "batch": args.batch, "seconds": seconds, "tokens_per_s": args.batch * L / seconds,
            "peak_bytes": mem.bytes, "kernels": args.kernels, "dtype": str(model.dtype).removeprefix("torch."),
            "machine": machine(), "params": sum(p.numel() for p in model.parameters())}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 8192, 65536])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--no-logits", action="store_true", help="skip the unembedding (as embedding extraction does)")
    p.add_argument("--json", action="store_true", help="one JSON line per length (internal)")
    args = p.parse_args()
    if args.json:
        print(json.dumps(one(args)))
        return
    rows = []
    for L, r in run_each_length(__file__, sys.argv[1:], args.lengths):
        rows.append(r)
        if "error" in r:
            continue
        print(f"L={L:>7}  {r['tokens_per_s']:>10,.0f} tok/s  {r['seconds'] * 1e3:>9.1f} ms  peak +{fmt_bytes(r['peak_bytes'])}",
              flush=True)
    ok = [r for r in rows if "error" not in r]
    if ok:
        print(f"\n{ok[0]['machine']}; {ok[0]['params']:,} params, {ok[0]['dtype']}, kernels={ok[0]['kernels']}")
        print("\n| L | tokens/s | time | peak memory |\n|---|---|---|---|")
        for r in ok:
            print(f"| {r['length']:,} | {r['tokens_per_s']:,.0f} | {r['seconds'] * 1e3:,.0f} ms | {fmt_bytes(r['peak_bytes'])} |")
    if len(ok) < len(rows):
        sys.exit(1)  # a failed length fails the run (the checklist reads the exit status)


if __name__ == "__main__":
    main()
