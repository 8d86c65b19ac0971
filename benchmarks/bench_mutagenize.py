"""Saturation mutagenesis throughput: ``evo mutagenize`` against ``evo score-variants`` on the same SNVs.

    python benchmarks/bench_mutagenize.py --threads 1                            # 200 positions, W = 8192
    python benchmarks/bench_mutagenize.py --threads 1 --positions 8 --window 2048 --start 97718

A region of the BRCA1 test FASTA (tests/data/brca1) is mutated position by position (three SNVs
each); the same SNVs go to score-variants as a VCF, three records per position as saturation
screens list them. Both run in this process, one after the other, with the same window, strand and
batch size; the table gives wall time, process CPU time (the steadier measure on a shared machine),
variants/s, tokens run in window-equivalents (tokens / W) and the ratio. ``--at-start`` takes the
region at the contig start instead, where windows are clipped and coincide. The model is random:
the cost does not depend on the weights.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import add_model_args, build, machine  # noqa: E402

from evo_cli import score_variants  # noqa: E402
from evo_cli.mutagenesis import mutagenize  # noqa: E402

FASTA = Path(__file__).resolve().parent.parent / "tests" / "data" / "brca1" / "GRCh37_chr17_41100001-41300000.fa"
CHROM = "GRCh37_chr17_41100001_41300000"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--positions", type=int, default=200)
    p.add_argument("--start", type=int, default=97718, help="first position (1-based; default: in BRCA1 exon 24)")
    p.add_argument("--at-start", action="store_true", help="the region at the contig start (clipped windows)")
    p.add_argument("--window", type=int, default=8192)
    p.add_argument("--strand", choices=["forward", "both"], default="forward")
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args()
    model = build(args)
    start = 1 if args.at_start else args.start
    region = f"{CHROM}:{start}-{start + args.positions - 1}"
    tokens = []
    model.embedding_layer.register_forward_hook(lambda m, i, o: tokens.append(i[0].numel()))
    mutagenize(model, FASTA, f"{CHROM}:{start}-{start}", window=64)  # warm-up
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for name in ("mutagenize", "score-variants"):
            tokens.clear()
            t0, c0 = time.perf_counter(), time.process_time()
            if name == "mutagenize":
                df = mutagenize(model, FASTA, region, window=args.window, strand=args.strand,
                                batch_size=args.batch_size)
            else:
                vcf = Path(tmp) / "snvs.vcf"
                header = (f"##fileformat=VCFv4.2\n##contig=<ID={CHROM},length=200000>\n"
                          "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n")
                vcf.write_text(header + "".join(f"{r.chrom}\t{r.pos}\t.\t{r.ref}\t{r.alt}\t.\t.\t.\n"
                                                for r in runs["mutagenize"].itertuples()))
                df = score_variants(model, vcf, FASTA, window=args.window, strand=args.strand,
                                    batch_size=args.batch_size)
            seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
            runs[name] = df
            weq = sum(tokens) / args.window
            rows.append((name, len(df), seconds, cpu, weq))
            print(f"{name:14} {len(df)} variants  {len(df) / seconds:8.3f} variants/s  {seconds:8.1f} s wall  "
                  f"{cpu:8.1f} s CPU  {weq:7.2f} window-equivalents", flush=True)
    diff = abs(runs["mutagenize"].delta.to_numpy() - runs["score-variants"].delta.to_numpy()).max()
    print(f"max |delta mutagenize - delta score-variants| = {diff:.2e}")
    params = sum(p.numel() for p in model.parameters())
    print(f"\n{machine()}; {params:,} params, {str(model.dtype).removeprefix('torch.')}, kernels={args.kernels}, "
          f"W = {args.window}, strand {args.strand}, batch size {args.batch_size}, region {region}")
    print("\n| command | variants | window-equivalents | wall | variants/s (wall) | CPU | variants per CPU-s |")
    print("|---|---|---|---|---|---|---|")
    for name, n, seconds, cpu, weq in rows:
        print(f"| {name} | {n} | {weq:.2f} | {seconds:.1f} s | {n / seconds:.3f} | {cpu:.1f} s | {n / cpu:.3f} |")
    (_, _, s1, c1, _), (_, _, s2, c2, _) = rows
    print(f"\nmutagenize / score-variants: {c2 / c1:.2f}x (CPU), {s2 / s1:.2f}x (wall)")


if __name__ == "__main__":
    main()
