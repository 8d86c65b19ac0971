"""The metrics of the evo-demo model card: bits per base with `evo score`, against a Markov baseline.

    python examples/evaluate_demo_model.py [--model evo-demo] [--order 5] [--whole]

Cuts the held-out E. coli region and phage lambda into consecutive windows of the model's context
(the last window of each sequence is shorter), scores them with the `evo score` command, and prints
bits per base next to the k-th order Markov model. With --whole it also scores each sequence as one
record (chunked, past the training length), the card's 1.842 on the held-out region.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

from demo_data import HELDOUT, SHARED, encode_acgt, load_genome, training_parts
from evo_cli.io.fasta import format_fasta, read_fasta
from markov_baseline import bits_per_base, fit


def windows_fasta(path: Path, name: str, seq: str, width: int) -> Path:
    path.write_text("".join(format_fasta(f"{name}_{i}", seq[i : i + width]) for i in range(0, len(seq) - 1, width)))
    return path


def evo_bits(model: str, fasta: Path) -> float:
    out = fasta.with_suffix(".tsv")
    subprocess.run([sys.executable, "-m", "evo_cli.cli.main", "score", "-q", "--model", model, "--fasta", str(fasta),
                    "-o", str(out)], check=True)
    d = pd.read_csv(out, sep="\t")
    return float(-d["sum_ll"].sum() / (d["length"] - 1).sum() / math.log(2))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="evo-demo")
    p.add_argument("--window", type=int, default=2048, help="window length (the model's context)")
    p.add_argument("--order", type=int, default=5, help="Markov order")
    p.add_argument("--whole", action="store_true", help="also score each sequence as one record")
    args = p.parse_args()
    genome = load_genome()
    lam = read_fasta(SHARED / "lambda_virus.fa")[0].sequence
    sets = {"held-out E. coli": genome[HELDOUT[0] : HELDOUT[1]], "phage lambda": lam}
    logp = fit([encode_acgt(s) for s in training_parts(genome)], args.order)
    whole = f" {args.model}, one sequence |" if args.whole else ""
    print(f"| sequence | {args.model} |{whole} Markov order {args.order} | uniform |\n|---|---|{'---|' * bool(whole)}---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, seq) in enumerate(sets.items()):
            ours = evo_bits(args.model, windows_fasta(Path(tmp) / f"set{i}.fa", f"set{i}", seq, args.window))
            one = ""
            if args.whole:
                one = f" {evo_bits(args.model, windows_fasta(Path(tmp) / f'whole{i}.fa', f'whole{i}', seq, len(seq))):.3f} |"
            markov = bits_per_base(logp, encode_acgt(seq), args.order)
            print(f"| {label} ({len(seq):,} bp) | {ours:.3f} |{one} {markov:.3f} | 2.0 |")


if __name__ == "__main__":
    main()
