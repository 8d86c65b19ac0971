"""The whole model with ``kernels="triton"`` against ``kernels="torch"``, on one random model.

    python benchmarks/check_backends.py --hidden 4096 --layers 32 --inner-mlp 11008 --lengths 8192

For each length: the largest logit difference relative to the largest logit, the fraction of positions
whose argmax agrees, and whether greedy decoding from a prompt of that length gives the same tokens.
The tests compare every fused op with its reference on tiny shapes; this checks the published shapes
in the dtype they run in (bf16 on a GPU), where rounding differs between the paths.

Then, per backend, the CUDA-graph decoding step (``evo_cli/model/graph.py``, what ``generate`` replays
on one GPU) against the same fixed-shape step run eagerly and against the plain ``model(tokens, state)``
step: whether the graph was captured (a failed capture falls back with a warning), whether the three
give the same greedy tokens after the first length's prompt, and their largest logit differences. On a
CPU there is no graph: the eager step against the plain one.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from common import add_model_args, build, machine  # noqa: E402

from evo_cli.generation import generate  # noqa: E402
from evo_cli.model.graph import StaticDecoder  # noqa: E402


def decode(model, ids, n: int, how: str):
    """(captured or None, greedy tokens, logits [n, vocab]) of ``n`` steps after the prompt ``ids``
    [1, L]: its last token is the first step's input. ``how``: graph, eager (the static step without a
    graph) or plain (the normal forward step)."""
    with torch.inference_mode():
        state = model.new_state(1, ids.shape[1] + n)
        model(ids[:, :-1], state, return_logits=False)
        dec = None if how == "plain" else StaticDecoder(model, state, graph=how == "graph")
        step = (lambda t: model(t, state)) if dec is None else dec.step
        tok, tokens, logits = ids[:, -1:], [], []
        for _ in range(n):
            out = step(tok)[:, -1].float().clone()  # the graph's logits buffer is overwritten by each replay
            tok = out.argmax(-1, keepdim=True)
            tokens.append(tok.item())
            logits.append(out[0])
    return (dec.graph is not None) if how == "graph" else None, tokens, torch.stack(logits)


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

    L = args.lengths[0]
    ids = torch.randint(0, 4, (1, L), generator=g).to(args.device) + 65
    ways = ("graph", "eager", "plain") if torch.device(args.device).type == "cuda" else ("eager", "plain")
    print(f"\ndecoding {args.n_tokens} greedy tokens after {L:,} prompt tokens: {' / '.join(ways)} steps")
    print("\n| kernels | graph captured | same tokens | max logit diff graph - eager | max logit diff eager - plain |"
          "\n|---|---|---|---|---|")
    for kernels in ("torch", "triton"):
        model.set_kernels(kernels)
        runs = {how: decode(model, ids, args.n_tokens, how) for how in ways}
        same = all(r[1] == runs["plain"][1] for r in runs.values())
        diff = lambda a, b: f"{(runs[a][2] - runs[b][2]).abs().max().item():.2e}" if a in runs else "n/a"  # noqa: E731
        captured = runs["graph"][0] if "graph" in runs else "n/a (CPU)"
        print(f"| {kernels} | {captured} | {same} | {diff('graph', 'eager')} | {diff('eager', 'plain')} |", flush=True)


if __name__ == "__main__":
    main()
