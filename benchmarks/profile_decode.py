"""Profile one batch-1 decoding step (torch.profiler) and time decoding by CPU time of this process.

    python benchmarks/profile_decode.py --model evo-demo            # the bundled 1.7 M model
    python benchmarks/profile_decode.py                             # the benchmark model (random)

Prints steps/s measured as CPU seconds of this process (``time.process_time``; the machine is shared,
so wall time is noisy), best of ``--repeats``, and the profiler's top ops by self CPU time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from common import add_model_args, build  # noqa: E402

from evo_cli.model.cpu_decode import CpuDecoder  # noqa: E402


def load(args):
    if args.model:
        from evo_cli import load_model
        from evo_cli.runtime import keep_freed_memory

        if not args.default_malloc:
            keep_freed_memory()
        torch.set_num_threads(args.threads or 1)
        return load_model(args.model, device="cpu")
    return build(args)


def decode_rate(model, steps: int, prompt: int, repeats: int, modules: bool = False) -> float:
    """Best steps per CPU-second of batch-1 decoding after a ``prompt``-token prefill, stepping as
    ``evo generate`` does on a CPU (``CpuDecoder`` where it applies) or, with ``modules``, through
    ``model(token, state)``."""
    best = float("inf")
    ids = torch.randint(0, 4, (1, prompt + steps), generator=torch.Generator().manual_seed(0)) + 65
    with torch.inference_mode():
        for _ in range(repeats):
            state = model.new_state(1, prompt + steps)
            model(ids[:, :prompt], state, return_logits=False)
            decoder = None if modules else CpuDecoder.build(model, state)
            step = decoder.step if decoder is not None else lambda t: model(t, state)  # noqa: B023
            t0 = time.process_time()
            for p in range(prompt, prompt + steps):
                step(ids[:, p : p + 1])
            best = min(best, time.process_time() - t0)
    return steps / best


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--model", default=None, help="a model name or path (default: the random benchmark model)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--prompt", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--modules", action="store_true",
                   help="step through model(token, state) even where evo generate binds one kernel per block")
    args = p.parse_args()
    if args.threads is None:
        args.threads = 1
    model = load(args)
    torch.set_num_threads(args.threads)
    rate = decode_rate(model, args.steps, args.prompt, args.repeats, args.modules)
    with torch.inference_mode():
        bound = not args.modules and CpuDecoder.build(model, model.new_state(1, 2)) is not None
    print(f"batch-1 decode: {rate:,.1f} tokens per CPU-second ({1e3 / rate:.3f} ms/step, {args.threads} thread, "
          f"{'one bound kernel per block' if bound else 'through the modules'})")
    ids = torch.full((1, args.prompt + 64), 65)
    with torch.inference_mode():
        state = model.new_state(1, args.prompt + 64)
        model(ids[:, : args.prompt], state, return_logits=False)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for p_ in range(args.prompt, args.prompt + 64):
                model(ids[:, p_ : p_ + 1], state)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))


if __name__ == "__main__":
    main()
