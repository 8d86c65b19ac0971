"""A model split over several devices against the same model on one device, on one random model.

    python benchmarks/check_split.py --hidden 4096 --layers 32 --inner-mlp 11008 --split cuda:0,cuda:1

Saves a random model as a native checkpoint, loads it on the first device and then split, and prints:
where each block, its parameters and its inference state live (checked against the plan), the memory
each device holds after loading and its peak during loading (streamed loading: no device ever holds
more than its own part), the memory the plan expected, and whether the full forward, chunked prefill
plus one-token decoding and greedy generation give the unsplit numbers. The tests check the same on
CPU with ``cpu,cpu``; this is the check for real devices (cross-GPU copies, Triton on cuda:1).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from common import add_model_args, build, machine  # noqa: E402

import evo_cli  # noqa: E402
from evo_cli.checkpoints.native import save_native  # noqa: E402
from evo_cli.model.placement import block_memory  # noqa: E402


def run(model, ids, chunk, n_tokens):
    """(full logits, chunked-prefill + decode logits, greedy tokens), on the CPU."""
    L = ids.shape[1]
    with torch.inference_mode():
        full = model(ids).float().cpu()
        state = model.new_state(1, L)
        pieces = [model(ids[:, a : min(a + chunk, L - 8)], state) for a in range(0, L - 8, chunk)]
        pieces += [model(ids[:, p : p + 1], state) for p in range(L - 8, L)]
        stepped = torch.cat(pieces, 1).float().cpu()
    prompt = bytes(ids[0].tolist()).decode()
    tokens = evo_cli.generate(model, prompt, n_tokens, top_k=1, batch_size=1, prefill_chunk=chunk)[0].token_ids
    return full, stepped, tokens, state


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--split", default="cuda:0,cuda:1" if torch.cuda.is_available() else "cpu,cpu")
    p.add_argument("--length", type=int, default=4096)
    p.add_argument("--chunk", type=int, default=1000, help="prefill chunk (tokens)")
    p.add_argument("--n-tokens", type=int, default=32, help="greedy tokens generated after the prompt")
    args = p.parse_args()
    devices = [torch.device(d) for d in args.split.split(",")]
    cuda = devices[0].type == "cuda"
    args.device = "cpu"  # the random weights are drawn on the CPU, then saved
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if cuda else torch.float32)
    args.dtype = str(dtype).removeprefix("torch.")
    with tempfile.TemporaryDirectory() as tmp:
        save_native(build(args), os.path.join(tmp, "m"))
        path = os.path.join(tmp, "m")
        print(f"{machine()}; split over {args.split}, {dtype}, kernels {args.kernels}, L = {args.length:,}")
        g = torch.Generator().manual_seed(0)
        ids = torch.tensor([list(b"ACGT"[i] for i in torch.randint(0, 4, (args.length,), generator=g).tolist())])

        one = evo_cli.load_model(path, device=devices[0], dtype=dtype, kernels=args.kernels)
        # without its state: kept, that KV cache would count in the first device's memory below
        ref = run(one, ids.to(devices[0]), args.chunk, args.n_tokens)[:3]
        del one
        if cuda:
            torch.cuda.empty_cache()
            for d in devices:
                torch.cuda.reset_peak_memory_stats(d)
        split = evo_cli.load_model(path, device=devices, dtype=dtype, kernels=args.kernels, state_tokens=args.length)
    pl = split.placement
    print(f"plan: {pl.describe()}")
    blocks_ok = all({q.device for q in b.parameters()} == {pl.block_device(i)} for i, b in enumerate(split.blocks))
    sizes, first = block_memory(split, dtype, args.length)
    if cuda:
        print("\n| device | blocks | plan: weights + state | allocated after load | peak during load |\n|---|---|---|---|---|")
        for d, dev in enumerate(devices):
            mine = [i for i, o in enumerate(pl.owners) if o == d]
            planned = sum(sizes[i] for i in mine) + (first if d == 0 else 0)
            print(f"| {dev} | {mine[0]}-{mine[-1]} | {planned / 2**30:.2f} GiB | "
                  f"{torch.cuda.memory_allocated(dev) / 2**30:.2f} GiB | {torch.cuda.max_memory_allocated(dev) / 2**30:.2f} GiB |")
    got = run(split, ids.to(devices[0]), args.chunk, args.n_tokens)
    states_ok = all({t.device for t in vars(s).values()} == {pl.block_device(i)} for i, s in enumerate(got[3].layers))
    print(f"\nparameters on their block's device: {blocks_ok}; states on their block's device: {states_ok}")
    print(f"full forward: max |split - one device| = {(got[0] - ref[0]).abs().max().item():.3e} "
          f"(max |logit| {ref[0].abs().max().item():.1f}); identical: {torch.equal(got[0], ref[0])}")
    print(f"chunked prefill + decoding: max diff {(got[1] - ref[1]).abs().max().item():.3e}; "
          f"vs the full forward {(got[1] - got[0]).abs().max().item():.3e}")
    print(f"greedy tokens equal: {got[2] == ref[2]}")
    if cuda:
        print("peak per device over the runs: "
              + ", ".join(f"{d} {torch.cuda.max_memory_allocated(d) / 2**30:.2f} GiB" for d in devices))


if __name__ == "__main__":
    main()
