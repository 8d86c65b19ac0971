"""Peak memory of a long sequence run chunk by chunk (all KV caches alive) against layer by layer
(one block over the whole sequence at a time: one KV cache plus the [L, D] hidden states).

    python benchmarks/bench_layerwise.py --layers 28 --length 16384 --threads 1

Each mode runs in its own process (clean peak RSS); logits are computed per chunk and dropped, as
`evo score` does. Prints the measured peak growth beside ``StripedHyena.long_forward_bytes``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from common import (PeakMemory, add_model_args, build, fmt_bytes, load_kernels, machine, run_isolated,  # noqa: E402
                    sync)


def one(args) -> dict:
    model = build(args)
    # drawn on the CPU (the same tokens on any device), then moved to the model's device: the
    # embedding does not take CPU indices for GPU weights
    ids = (torch.randint(0, 4, (1, args.length), generator=torch.Generator().manual_seed(0)) + 65).to(args.device)
    run = model.forward_layerwise if args.mode == "layerwise" else model.forward_chunked
    load_kernels(model)
    with torch.inference_mode(), PeakMemory(args.device) as mem:
        sync(args.device)
        t0, c0 = time.perf_counter(), time.process_time()
        for _start, logits in run(ids, args.chunk):
            del logits
        sync(args.device)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    est = model.long_forward_bytes(1, args.length, args.chunk)[args.mode]
    return {"mode": args.mode, "peak_bytes": mem.bytes, "estimate_bytes": est, "cpu_s": cpu, "wall_s": wall,
            "machine": machine(), "attention_blocks": len(model.config.layers_of("attn"))}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--length", type=int, default=16384)
    p.add_argument("--chunk", type=int, default=2048)
    p.add_argument("--mode", choices=["chunked", "layerwise"], default=None)
    p.add_argument("--json", action="store_true", help="one JSON line for one mode (internal)")
    args = p.parse_args()
    if args.json:
        print(json.dumps(one(args)))
        return
    argv = [a for a in sys.argv[1:]]
    failed = False
    for mode in ("chunked", "layerwise"):
        r = run_isolated(__file__, [*argv, "--mode", mode])
        if "error" in r:
            print(f"{mode}: {r['error']}", file=sys.stderr)
            failed = True
            continue
        # wall time is the one to read on a GPU (CPU time there is the host's launching)
        print(f"{mode:>9}: peak +{fmt_bytes(r['peak_bytes'])} (estimate {fmt_bytes(r['estimate_bytes'])}), "
              f"{r['wall_s']:.1f} s, {r['cpu_s']:.1f} CPU-s; {r['attention_blocks']} attention blocks; {r['machine']}",
              flush=True)
    if failed:
        sys.exit(1)  # the checklist reads the exit status


if __name__ == "__main__":
    main()
