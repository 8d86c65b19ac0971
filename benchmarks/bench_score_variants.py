"""Variant scoring throughput with and without the shared prefix (``evo score-variants``).

    python benchmarks/bench_score_variants.py                          # W = 8192, 8 BRCA1 SNVs, benchmark model
    python benchmarks/bench_score_variants.py --variants 32 --strand both --device cuda --batch-size 16

Two variant sets from the Findlay 2018 BRCA1 VCF (tests/data/brca1): ``site`` takes the first N
records, three ALTs per position as in saturation screens; ``spread`` takes every third record, one
ALT per position as in a cohort VCF. Each set is scored with every window run in full (REF windows
deduplicated, as the Evo 2 notebook does) and with the prefix before the variant run once per site.
"window-equivalents" = tokens run / W. The model is random: the cost does not depend on the weights.
Both wall-clock and process CPU time are reported: on a shared machine the CPU time (with one
thread) is the steadier measure of the work done.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pysam  # noqa: E402
from common import add_model_args, build, machine  # noqa: E402

from evo_cli import score_variants  # noqa: E402

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "brca1"


def variant_set(kind: str, n: int, path: Path) -> Path:
    with pysam.VariantFile(str(DATA / "brca1_sge_first48.region.vcf")) as vf:
        recs = list(vf)
    chosen = recs[:n] if kind == "site" else recs[::3][:n]
    with pysam.VariantFile(str(path), "w", header=recs[0].header) as out:
        for rec in chosen:
            out.write(rec)
    return path


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--variants", type=int, default=8)
    p.add_argument("--window", type=int, default=8192)
    p.add_argument("--strand", choices=["forward", "both"], default="forward")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--sets", nargs="+", choices=["site", "spread"], default=["site", "spread"])
    args = p.parse_args()
    model = build(args)
    fasta = DATA / "GRCh37_chr17_41100001-41300000.fa"
    tokens = []
    model.embedding_layer.register_forward_hook(lambda m, i, o: tokens.append(i[0].numel()))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        score_variants(model, variant_set("site", 1, Path(tmp) / "warm.vcf"), fasta, window=64)  # warm-up
        for kind in args.sets:
            vcf = variant_set(kind, args.variants, Path(tmp) / f"{kind}.vcf")
            deltas = {}
            for share in (False, True):
                tokens.clear()
                t0, c0 = time.perf_counter(), time.process_time()
                df = score_variants(model, vcf, fasta, window=args.window, strand=args.strand,
                                    batch_size=args.batch_size, share_prefix=share)
                seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
                deltas[share] = df.delta.to_numpy()
                rows.append((kind, df.pos.nunique(), len(df), share, seconds, cpu, sum(tokens) / args.window))
                print(f"{kind:6} {'shared' if share else 'full':6}  {len(df) / seconds:8.3f} variants/s  "
                      f"{seconds:8.1f} s wall  {cpu:8.1f} s CPU  {sum(tokens) / args.window:6.2f} window-equivalents",
                      flush=True)
            print(f"       max |delta shared - delta full| = {abs(deltas[True] - deltas[False]).max():.2e}")
    params = sum(p.numel() for p in model.parameters())
    print(f"\n{machine()}; {params:,} params, {str(model.dtype).removeprefix('torch.')}, kernels={args.kernels}, "
          f"W = {args.window}, strand {args.strand}, batch size {args.batch_size}")
    print("\n| set | positions | variants | prefix sharing | window-equivalents | wall | variants/s (wall) "
          "| CPU | variants per CPU-s | speed-up (CPU) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for i, (kind, sites, n, share, seconds, cpu, weq) in enumerate(rows):
        speedup = f"{rows[i - 1][5] / cpu:.2f}x" if share else ""
        print(f"| {kind} | {sites} | {n} | {'yes' if share else 'no'} | {weq:.2f} | {seconds:.1f} s | {n / seconds:.3f} "
              f"| {cpu:.1f} s | {n / cpu:.3f} | {speedup} |")


if __name__ == "__main__":
    main()
