"""Train the bundled demo model `evo-demo`: a small Evo 2-style StripedHyena on E. coli K-12.

    python examples/train_demo_model.py --out evo_cli/models/evo-demo      # ~25 min on 2 CPU cores

The defaults are the settings of the shipped model.

Trains through the runtime's own PyTorch path (the naive kernels, autograd) on random windows of
both strands of the genome, holding out a contiguous 100 kb region (see demo_data.py), with a fixed
seed; then writes the model in the native format (bfloat16 weights, float32 filters) and a JSON
log. Evaluation on the held-out region is done with `evo score` (see the model card).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from demo_data import HELDOUT, load_genome, training_parts
from evo_cli.checkpoints.native import save_native
from evo_cli.model.init import init_weights_, motif_config
from evo_cli.model.model import StripedHyena


def config(args):
    return motif_config("evo2", hidden_size=args.hidden, num_layers=args.layers, head_dim=args.head_dim,
                        state_size=16, filter_groups=args.hidden // 16, max_seqlen=args.context, name="evo-demo")


class Windows:
    """Random training windows of ``length + 1`` tokens from both strands, seeded."""

    def __init__(self, parts: list[str], length: int, seed: int):
        self.parts = [np.frombuffer(p.encode(), dtype=np.uint8) for p in parts]
        sizes = np.array([len(p) - length - 1 for p in self.parts], dtype=np.float64)
        self.weights = sizes / sizes.sum()
        self.length = length
        self.rng = np.random.default_rng(seed)

    def batch(self, n: int) -> torch.Tensor:
        rows = []
        for part in self.rng.choice(len(self.parts), size=n, p=self.weights):
            start = self.rng.integers(0, len(self.parts[part]) - self.length - 1)
            rows.append(self.parts[part][start : start + self.length + 1])
        return torch.from_numpy(np.stack(rows).astype(np.int64))


def lr_at(step: int, args) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def heldout_bits(model, genome: str, length: int, n_windows: int) -> float:
    """Bits per base on evenly spaced windows of the held-out region (Evo 2 scoring: no BOS)."""
    model.eval()
    starts = np.linspace(HELDOUT[0], HELDOUT[1] - length, n_windows).astype(int)
    ids = torch.tensor([list(genome[s : s + length].encode()) for s in starts])
    logits = model(ids)
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    model.train()
    return nll.item() / math.log(2)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="output directory (native checkpoint)")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--context", type=int, default=2048, help="max_seqlen recorded in the config")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=1100)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--eval-every", type=int, default=100)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    genome = load_genome()
    data = Windows(training_parts(genome), args.seq_len, args.seed)
    model = init_weights_(StripedHyena(config(args), kernels="torch"), args.seed)
    # tied embeddings: keep initial logits near uniform
    model.embedding_layer.weight.data.mul_(args.hidden**-0.5)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() == 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.dim() == 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay}, {"params": rest, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    log = {"args": {k: str(v) for k, v in vars(args).items()}, "steps": []}
    t0 = time.perf_counter()
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args)
        x = data.batch(args.batch)
        logits = model(x[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            # keep the long filters stable: real poles strictly inside the unit circle
            for block in model.blocks:
                if getattr(block, "kind", "") == "hcl":
                    block.filter.log_poles.clamp_(max=-1e-3)
        if step % 25 == 0 or step == args.steps - 1:
            entry = {"step": step, "train_bits": loss.item() / math.log(2), "minutes": (time.perf_counter() - t0) / 60}
            if args.eval_every and (step % args.eval_every == 0 or step == args.steps - 1):
                entry["heldout_bits"] = heldout_bits(model, genome, args.seq_len, 16)
            log["steps"].append(entry)
            print(json.dumps(entry), flush=True)
    log["train_minutes"] = (time.perf_counter() - t0) / 60
    model.eval().requires_grad_(False)
    for name, param in model.named_parameters():
        if ".filter." not in name:
            param.data = param.data.to(torch.bfloat16)
    save_native(model, args.out, metadata={"trained_by": "examples/train_demo_model.py"})
    (args.out / "training_log.json").write_text(json.dumps(log, indent=1) + "\n")
    print(f"trained {args.steps} steps in {log['train_minutes']:.1f} min; wrote {args.out}")


if __name__ == "__main__":
    main()
