"""Generation throughput and peak memory: batch 1 and 8, 256 and 4096 new tokens.

    python benchmarks/bench_generate.py                              # the benchmark model, CPU table
    python benchmarks/bench_generate.py --batches 1 --n-tokens 256 --threads 1

Each configuration runs in its own process so that peak memory is measured cleanly. tokens/s counts
generated tokens (batch x n_tokens) over the whole ``generate`` call (prefill of a short prompt plus
one decode step per token), after a short warm-up run; peak memory is the growth over the loaded
model's footprint (CPU: peak RSS). The inference state is allocated once per
generation, sized for prompt + n_tokens, so peak memory grows with the generated length only by the
KV cache of the attention layers (reported beside it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from common import (PeakMemory, add_model_args, build, fmt_bytes, kv_cache_bytes, machine,  # noqa: E402
                    run_isolated, sync, without_options)

from evo_cli.generation import generate  # noqa: E402


def one(args) -> dict:
    model = build(args)
    batch, n = args.batches[0], args.n_tokens[0]
    g = torch.Generator().manual_seed(0)
    prompts = ["".join("ACGT"[i] for i in torch.randint(0, 4, (args.prompt_len,), generator=g).tolist())
               for _ in range(batch)]
    kw = dict(top_k=4, temperature=1.0, seed=0, batch_size=batch)
    with PeakMemory(args.device) as mem:
        generate(model, prompts, 8, **kw)
        sync(args.device)
        t0 = time.perf_counter()
        generate(model, prompts, n, **kw)
        sync(args.device)
        seconds = time.perf_counter() - t0
    return {"batch": batch, "n_tokens": n, "prompt_len": args.prompt_len, "seconds": seconds,
            "tokens_per_s": batch * n / seconds, "peak_bytes": mem.bytes,
            "kv_cache_bytes": kv_cache_bytes(model, batch, args.prompt_len + n - 1), "kernels": args.kernels,
            "dtype": str(model.dtype).removeprefix("torch."), "machine": machine(),
            "params": sum(p.numel() for p in model.parameters())}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--n-tokens", type=int, nargs="+", default=[256, 4096])
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--json", action="store_true", help="one JSON line for one configuration (internal)")
    args = p.parse_args()
    if args.json:
        print(json.dumps(one(args)))
        return
    passthrough = without_options(sys.argv[1:], "--batches", "--n-tokens")
    rows = []
    for batch in args.batches:
        for n in args.n_tokens:
            r = run_isolated(__file__, [*passthrough, "--batches", str(batch), "--n-tokens", str(n)])
            rows.append(r)
            if "error" in r:
                print(f"batch {batch}, {n} tokens: {r['error']}", file=sys.stderr)
                continue
            print(f"batch {batch:>2}  {n:>5} tokens  {r['tokens_per_s']:>8,.1f} tok/s  {r['seconds']:>8.1f} s  "
                  f"peak +{fmt_bytes(r['peak_bytes'])}  KV cache {fmt_bytes(r['kv_cache_bytes'])}", flush=True)
    ok = [r for r in rows if "error" not in r]
    if ok:
        print(f"\n{ok[0]['machine']}; {ok[0]['params']:,} params, {ok[0]['dtype']}, kernels={ok[0]['kernels']}, "
              f"prompt {ok[0]['prompt_len']} tokens")
        print("\n| batch | new tokens | tokens/s | time | peak memory | of which KV cache |\n|---|---|---|---|---|---|")
        for r in ok:
            print(f"| {r['batch']} | {r['n_tokens']:,} | {r['tokens_per_s']:,.1f} | {r['seconds']:,.1f} s | "
                  f"{fmt_bytes(r['peak_bytes'])} | {fmt_bytes(r['kv_cache_bytes'])} |")
    if len(ok) < len(rows):
        sys.exit(1)  # a failed configuration fails the run (the checklist reads the exit status)


if __name__ == "__main__":
    main()
