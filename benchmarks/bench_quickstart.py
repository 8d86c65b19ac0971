"""CPU time of the README's quick start (``evo score-variants``, evo-demo, the 36 SNVs of examples/data).

    OMP_NUM_THREADS=1 python benchmarks/bench_quickstart.py [--repeat 3] [--deltas before.tsv] [--narrow] [--breakdown]

Prints the process CPU time of each run (after one warm-up run), the number of forward calls and
tokens, the run's arithmetic (``profile_forward.py``'s floor: GEMMs, attention and every other FLOP at
the matmul rate its own GEMM shapes reach here, one exp per attention score and per logit at
the fastest exp's rate), and with ``--deltas`` writes the
``delta`` column, to compare two versions of the code
(``--compare before.tsv``: the largest absolute difference). ``--breakdown``: one more run with each
op family of ``evo_cli.kernels`` timed where it is called (process CPU time; the timers add a little),
and the rest of the run beside them.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import evo_cli.kernels as K
from evo_cli import score_variants
from evo_cli.checkpoints import load_model
from evo_cli.model.init import random_model
from evo_cli.scoring import _CPU_STEP
from evo_cli.runtime import keep_freed_memory
from profile_forward import (arithmetic_floor, attention_flops, attention_scores, exp_rate, gemm_flops,  # noqa: E402
                             gemm_rate, other_work)

DATA = Path(__file__).resolve().parent.parent / "examples" / "data"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--deltas", help="write the deltas here (one per line)")
    p.add_argument("--compare", help="deltas written by an earlier run: print the largest absolute difference")
    p.add_argument("--breakdown", action="store_true", help="one more run, with each op family timed")
    p.add_argument("--narrow", action="store_true",
                   help="evo-demo's layers at hidden size 8 (random weights): the same ops with almost no "
                        "arithmetic, so the time left is the cost per op")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the CLI does
    model = load_model("evo-demo", device="cpu")
    if args.narrow:
        c = model.config
        model = random_model(dataclasses.replace(c, hidden_size=8, num_heads=1, num_kv_heads=1, inner_mlp_size=16,
                                                 hcs_filter_groups=8, hcm_filter_groups=8), seed=0)
    calls, tokens = [], []

    work = {"gemm": 0.0, "attention": 0.0, "scores": 0.0}

    def count(module, inputs, output):
        calls.append(1)
        tokens.append(inputs[0].numel())
        work["gemm"] += gemm_flops(model, inputs[0].shape[1], inputs[0].shape[0])

    def count_attention(module, inputs):
        (B, L), pos = inputs[0].shape[:2], inputs[2]  # MHA(x, state, pos): queries at pos..pos+L-1
        work["attention"] += attention_flops(model, L, B, pos, blocks=1)
        work["scores"] += attention_scores(model, L, B, pos, blocks=1)

    model.embedding_layer.register_forward_hook(count)
    for i in model.config.layers_of("attn"):
        model.blocks[i].inner_mha_cls.register_forward_pre_hook(count_attention)
    vcf, fasta = DATA / "thrA_snvs.vcf", DATA / "ecoli_first20kb.fa"
    df = score_variants(model, vcf, fasta)  # warm-up
    times = []
    for _ in range(args.repeat):
        calls.clear()
        tokens.clear()
        work.update(gemm=0.0, attention=0.0, scores=0.0)
        c0 = time.process_time()
        df = score_variants(model, vcf, fasta)
        times.append(time.process_time() - c0)
    print(f"CPU-s per run: {', '.join(f'{t:.3f}' for t in times)} (best {min(times):.3f}); "
          f"{len(calls)} forward calls, {sum(tokens)} tokens, {len(df)} variants, {args.threads} thread(s)")
    # the rows of a typical call: a site's REF + 3 ALT suffixes, scoring._CPU_STEP tokens each
    rate, exps = gemm_rate(model, 4 * _CPU_STEP), exp_rate()
    floor, line = arithmetic_floor(work["gemm"], work["attention"], work["scores"], rate, exps,
                                   other_work(model, sum(tokens)))
    print(line)
    print(f"measured / GEMM floor {min(times) / (work['gemm'] / rate):.2f}x, "
          f"measured / arithmetic floor {min(times) / floor:.2f}x")
    deltas = df.delta.to_numpy()
    if args.deltas:
        Path(args.deltas).write_text("".join(f"{float(d)!r}\n" for d in deltas))
    if args.compare:
        before = [float(x) for x in Path(args.compare).read_text().split()]
        print(f"max |delta - delta before| = {max(abs(a - b) for a, b in zip(deltas, before)):.3e}")
    if args.breakdown:
        breakdown(model, vcf, fasta)


# what --breakdown times: the kernels' entry points, which the blocks call for every op but the
# residual adds, the MLP's gate and the embedding
FAMILIES = {"linear": "nn.Linear products", "causal_attention": "attention", "hyena_fir": "Hyena-SE / -MR filters",
            "rms_norm": "RMSNorm", "add_rms_norm": "residual add + RMSNorm", "hyena_featurize": "featurizer", "hyena_modal": "Hyena-LR / Evo 1 filter",
            "rotate_halves": "rotary"}


def breakdown(model, vcf, fasta) -> None:
    """One run of the quick start with every ``FAMILIES`` function timed where it is called."""
    spent, calls = collections.Counter(), collections.Counter()
    originals = {name: getattr(K, name) for name in FAMILIES}

    def timed(name, fn):
        def call(*a, **kw):
            c0 = time.process_time()
            try:
                return fn(*a, **kw)
            finally:
                spent[name] += time.process_time() - c0
                calls[name] += 1
        return call

    try:
        for name, fn in originals.items():
            setattr(K, name, timed(name, fn))
        c0 = time.process_time()
        score_variants(model, vcf, fasta)
        total = time.process_time() - c0
    finally:
        for name, fn in originals.items():
            setattr(K, name, fn)
    print(f"\n| part | CPU-s | calls |\n|---|---|---|")
    for name, t in spent.most_common():
        print(f"| {FAMILIES[name]} | {t:.3f} | {calls[name]:,} |")
    print(f"| everything else (adds, MLP gate, embedding, log-softmax, scoring, Python) | {total - sum(spent.values()):.3f} | - |")
    print(f"| the run, timers included | {total:.3f} | - |")


if __name__ == "__main__":
    main()
