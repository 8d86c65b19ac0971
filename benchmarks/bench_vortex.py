"""evo against vortex (the reference engine) in one process, same weights, same inputs.

    pip install --no-deps vtx==1.1.0 einops tqdm
    python benchmarks/bench_vortex.py --threads 2 --length 8192          # the benchmark model
    python benchmarks/bench_vortex.py --threads 1 --length 2048 --repeats 3

Alternates the two forwards ``--repeats`` times and keeps the smallest CPU time of each (this
process's ``time.process_time``: the machine is shared, wall time is noisy), so both see the same
conditions. See ``vortex_harness.py`` for how vortex runs on a CPU.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from common import add_model_args, build, machine  # noqa: E402
from vortex_harness import vortex_model  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--length", type=int, default=8192)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    logging.disable(logging.WARNING)
    ours = build(args)
    theirs = vortex_model(ours, max_seqlen=args.length)
    ids = torch.randint(0, 4, (1, args.length), generator=torch.Generator().manual_seed(0)) + 65
    best = {"evo": float("inf"), "vortex": float("inf")}
    with torch.inference_mode():
        a, b = ours(ids[:, :256]), theirs(ids[:, :256])[0]
        for _ in range(args.repeats):
            for name, fn in (("evo", lambda: ours(ids)), ("vortex", lambda: theirs(ids)[0])):
                t0 = time.process_time()
                out = fn()
                best[name] = min(best[name], time.process_time() - t0)
                if name == "evo":
                    a = out
                else:
                    b = out
    print(f"{machine()}; {sum(p.numel() for p in ours.parameters()):,} params, float32, {args.threads} thread(s), "
          f"L = {args.length:,}")
    print(f"evo {best['evo']:.2f} CPU-s, vortex {best['vortex']:.2f} CPU-s: vortex / evo = "
          f"{best['vortex'] / best['evo']:.2f}x; logits max |evo - vortex| = {(a - b.float()).abs().max().item():.3g} "
          f"(max |logit| {a.abs().max().item():.3g})")


if __name__ == "__main__":
    main()
