"""k-th order Markov model of DNA: the baseline the demo model must beat (bits per base).

    python examples/markov_baseline.py --order 5 [--fasta other.fa]

Fitted on the training part of the E. coli K-12 genome (both strands, the held-out region and its
reverse complement excluded), with add-one smoothing; evaluated on the held-out region, and on the
first record of ``--fasta`` when given (e.g. phage lambda).
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np

from evo_cli.io.fasta import read_fasta

from demo_data import HELDOUT, encode_acgt, load_genome, training_parts


def kmer_codes(x: np.ndarray, k: int) -> np.ndarray:
    """Index of the k bases before each position t >= k (base-4 code), x holding 0..3 (or -1 for other)."""
    codes = np.zeros(len(x) - k, dtype=np.int64)
    for i in range(k):
        codes = codes * 4 + x[i : len(x) - k + i]
    return codes


def fit(parts: list[np.ndarray], order: int, pseudocount: float = 1.0) -> np.ndarray:
    """[4^order, 4] conditional log2-probabilities."""
    counts = np.full((4**order, 4), pseudocount)
    for x in parts:
        ok = _valid_windows(x, order)
        ctx = kmer_codes(np.where(x < 0, 0, x), order)
        np.add.at(counts, (ctx[ok], x[order:][ok]), 1)
    return np.log2(counts / counts.sum(1, keepdims=True))


def _valid_windows(x: np.ndarray, order: int) -> np.ndarray:
    bad = np.convolve((x < 0).astype(int), np.ones(order + 1, dtype=int), mode="valid") > 0
    return ~bad


def bits_per_base(logp: np.ndarray, x: np.ndarray, order: int) -> float:
    """Mean -log2 p over positions order..n-1 of x."""
    ok = _valid_windows(x, order)
    ctx = kmer_codes(np.where(x < 0, 0, x), order)
    return float(-logp[ctx[ok], x[order:][ok]].mean())


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--order", type=int, default=5)
    p.add_argument("--fasta", help="also evaluate on the first record of this FASTA")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    genome = load_genome()
    logp = fit([encode_acgt(s) for s in training_parts(genome)], args.order)
    heldout = encode_acgt(genome[HELDOUT[0] : HELDOUT[1]])
    res = {"order": args.order, "heldout_bits_per_base": bits_per_base(logp, heldout, args.order)}
    if args.fasta:
        res["fasta_bits_per_base"] = bits_per_base(logp, encode_acgt(read_fasta(args.fasta)[0].sequence), args.order)
    if args.json:
        print(json.dumps(res))
        return
    print(f"order-{args.order} Markov: {res['heldout_bits_per_base']:.4f} bits/base on held-out E. coli "
          f"[{HELDOUT[0]:,}, {HELDOUT[1]:,}) (uniform: {math.log2(4):.1f})")
    if args.fasta:
        print(f"order-{args.order} Markov: {res['fasta_bits_per_base']:.4f} bits/base on {args.fasta}")


if __name__ == "__main__":
    main()
