"""Recurrent decoding speed: tokens/s of one-token steps after a prefilled prompt (greedy, batch 1).

    python benchmarks/bench_decode.py --hidden 4096 --layers 32 --kernels triton   # evo2_7b-shaped, GPU
    python benchmarks/bench_decode.py --kernels torch                              # the unfused path

Each step reads every weight once, so at batch 1 decoding is bound by memory bandwidth: the table
gives the weight bytes read per second next to tokens/s. The model is random (speed does not depend
on the weights); the prompt is random tokens.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from common import add_model_args, build, machine, sync  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--prompt", type=int, default=1024, help="prompt tokens prefilled before decoding")
    p.add_argument("--steps", type=int, default=128, help="decoding steps timed")
    p.add_argument("--batch", type=int, default=1)
    args = p.parse_args()
    model = build(args)
    weight_bytes = sum(t.numel() * t.element_size() for t in model.parameters())
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 512, (args.batch, args.prompt), generator=g).to(args.device)
    with torch.inference_mode():
        state = model.new_state(args.batch, args.prompt + args.steps + 8)
        token = model(prompt, state)[:, -1:].argmax(-1)
        # warm-up steps compile / autotune the step kernels
        for _ in range(4):
            token = model(token, state)[:, -1:].argmax(-1)
        sync(args.device)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            token = model(token, state)[:, -1:].argmax(-1)
        sync(args.device)
        seconds = (time.perf_counter() - t0) / args.steps
    params = sum(t.numel() for t in model.parameters())
    print(f"{machine()}; {params:,} params, {str(model.dtype).removeprefix('torch.')}, "
          f"kernels={args.kernels}, batch {args.batch}, prompt {args.prompt}")
    print("\n| tokens/s | ms/token | weight GB/s |\n|---|---|---|")
    print(f"| {args.batch / seconds:,.1f} | {seconds * 1e3:,.2f} | {weight_bytes / seconds / 1e9:,.3g} |")


if __name__ == "__main__":
    main()
