"""The whole model with ``kernels="triton"`` against ``kernels="torch"``, on one random model.

    python benchmarks/check_backends.py --hidden 4096 --layers 32 --inner-mlp 11008 --lengths 8192

For each length: the largest logit difference relative to the largest logit, the fraction of positions
whose argmax agrees, and whether greedy decoding from a prompt of that length gives the same tokens.
The tests compare every fused op with its reference on tiny shapes; this checks the published shapes
in the dtype they run in (bf16 on a GPU), where rounding differs between the paths.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from common import add_model_args, build, machine  # noqa: E402

from evo_cli.generation import generate  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 8192])
    p.add_argument("--n-tokens", type=int, default=32, help="greedy tokens generated after a prompt of each length")
    args = p.parse_args()
    model = build(args)
    print(f"{machine()}; {sum(q.numel() for q in model.parameters()):,} params, {model.dtype}")
    print("\n| L | logits max diff / max logit | argmax agrees | greedy tokens equal |\n|---|---|---|---|")
    g = torch.Generator().manual_seed(0)
    for L in args.lengths:
        ids = torch.randint(0, 4, (1, L), generator=g)
        prompt = "".join("ACGT"[i] for i in ids[0].tolist())
        ids = torch.tensor([list(prompt.encode())], device=args.device)
        logits, tokens = {}, {}
        for kernels in ("torch", "triton"):
            model.set_kernels(kernels)
            with torch.inference_mode():
                logits[kernels] = model(ids).float()
            tokens[kernels] = generate(model, prompt, args.n_tokens, top_k=1, batch_size=1)[0].sequence
        ref, out = logits["torch"], logits["triton"]
        rel = ((out - ref).abs().max() / ref.abs().max()).item()
        agree = (out.argmax(-1) == ref.argmax(-1)).float().mean().item()
        print(f"| {L:,} | {rel:.2e} | {agree:.4f} | {tokens['torch'] == tokens['triton']} |", flush=True)


if __name__ == "__main__":
    main()
