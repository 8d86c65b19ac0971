"""Data parallel scaling of ``evo score-variants`` under torchrun (``evo_cli/distributed.py``).

    python benchmarks/bench_distributed.py                               # CPU: 1 rank x 1 thread vs 2 ranks x 1 thread
    python benchmarks/bench_distributed.py --device cuda --ranks 1 2 4 8 --window 8192 --variants 256

The benchmark model (random weights: the cost does not depend on them) is saved as a checkpoint,
then ``evo -vv score-variants`` scores Findlay 2018 BRCA1 SNVs (one ALT per position, as in a
cohort VCF; past 16, copies 2 kb further on) once per rank count: one rank is a plain ``evo``
process, more are ``torchrun --standalone --nproc-per-node N``. On CPU every process is pinned to its own
``--threads`` cores (its share of the cores is what a rank uses). Reported per run: the run's wall
time (from the command's closing line: model loading excluded; for ranks it includes waiting for the
slowest rank to load its model, and rank 0's merge), the chunk phase (from the moment every rank is
ready to the last rank's end), the speed-up of the chunk phase over the first rank count, and per
rank its chunks, busy time (computing chunks) over its time in the chunk phase (utilisation) and
its CPU time there. On a loaded machine CPU time per rank is the steadier measure: the speed-up in
CPU time is the one process's CPU time over the busiest rank's.
Outputs are checked to be byte-identical to the first run's.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pysam  # noqa: E402
import torch  # noqa: E402
from common import add_model_args, build, machine  # noqa: E402

from evo_cli.checkpoints.native import save_native  # noqa: E402

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "brca1"
FASTA = DATA / "GRCh37_chr17_41100001-41300000.fa"
EVO = str(Path(sys.executable).with_name("evo"))


def variants(n: int, path: Path, window: int) -> Path:
    """``n`` SNVs at distinct positions: every third record of the BRCA1 set, then copies shifted by
    2 kb steps with REF read from the FASTA there (the windows are what costs). Steps shrink where 2 kb
    would take the last copy's windows past the end of the 200 kb FASTA (over about 750 variants)."""
    with pysam.VariantFile(str(DATA / "brca1_sge_first48.region.vcf")) as vf, pysam.FastaFile(str(FASTA)) as fa:
        recs = list(vf)[::3]
        copies = -(-n // len(recs))
        first, last = min(r.pos for r in recs), max(r.pos for r in recs)
        step = min(2000, (fa.get_reference_length(fa.references[0]) - last - window // 2) // max(1, copies - 1))
        if step <= last - first:  # copies would overlap: positions no longer distinct
            sys.exit(f"{n} variants do not fit in {FASTA.name} with W = {window}")
        with pysam.VariantFile(str(path), "w", header=vf.header) as out:
            for i in range(n):
                rec = recs[i % len(recs)].copy()
                if i >= len(recs):
                    rec.pos += step * (i // len(recs))
                    ref = fa.fetch(fa.references[0], rec.pos - 1, rec.pos).upper()
                    rec.alleles = (ref, next(b for b in "ACGT" if b != ref))
                out.write(rec)
    return path


def run(ranks: int, args, model_dir: Path, vcf: Path, out: Path) -> dict:
    # -vv: a single process logs its chunks and times at debug level, ranks at info
    cmd = [EVO, "-vv", "score-variants", "-m", str(model_dir), "--vcf", str(vcf), "--fasta", str(FASTA),
           "--window", str(args.window), "--batch-size", str(args.batch_size), "--device", args.device,
           "--kernels", args.kernels, "-o", str(out)]
    if ranks > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"] + cmd
    env = dict(os.environ)
    pin = None
    if args.device == "cpu":
        env["OMP_NUM_THREADS"] = str(args.threads)
        cores = sorted(os.sched_getaffinity(0))[: ranks * args.threads]
        if len(cores) < ranks * args.threads:
            sys.exit(f"{ranks} ranks x {args.threads} threads need {ranks * args.threads} cores, {len(cores)} here")
        pin = lambda: os.sched_setaffinity(0, cores)  # noqa: E731 -- each rank then takes cores // ranks threads
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, preexec_fn=pin)
    if res.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{res.stderr[-3000:]}")
    seconds = float(re.search(r"evo: scored .* in ([\d.,]+) s", res.stderr).group(1).replace(",", ""))
    per_rank = [dict(rank=int(r), chunks=int(n), busy=float(b), wall=float(w), cpu=float(c)) for r, n, b, w, c in
                re.findall(r"evo: rank (\d+): (\d+) chunks .*?, busy ([\d.]+) s of ([\d.]+) s, ([\d.]+) CPU s",
                           res.stderr)]
    return {"ranks": ranks, "seconds": seconds, "per_rank": per_rank, "bytes": out.read_bytes()}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--variants", type=int, default=16)
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=2, help="also the records per chunk (the unit ranks share)")
    p.set_defaults(threads=1)
    args = p.parse_args()
    if args.device.startswith("cuda"):
        # one GPU per rank: a larger count would fail only after the smaller ones had run
        gpus = torch.cuda.device_count()
        if any(r > gpus for r in args.ranks):
            print(f"skipping {[r for r in args.ranks if r > gpus]} ranks: {gpus} GPU(s) here", file=sys.stderr)
            args.ranks = [r for r in args.ranks if r <= gpus]
            if not args.ranks:
                sys.exit("no rank count left to run")
    model = build(args)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        save_native(model.cpu(), tmp / "model")
        vcf = variants(args.variants, tmp / "in.vcf", args.window)
        for ranks in args.ranks:
            r = run(ranks, args, tmp / "model", vcf, tmp / f"out{ranks}.tsv")
            r["work"] = max(pr["wall"] for pr in r["per_rank"])
            r["cpu"] = max(pr["cpu"] for pr in r["per_rank"])  # the busiest rank's CPU time
            rows.append(r)
            same = "identical" if r["bytes"] == rows[0]["bytes"] else "DIFFERENT"
            print(f"{ranks} rank(s): run {r['seconds']:.1f} s, chunks {r['work']:.1f} s, "
                  f"{args.variants / r['work']:.2f} variants/s, x{rows[0]['work'] / r['work']:.2f} "
                  f"(CPU time x{rows[0]['cpu'] / r['cpu']:.2f}); output {same}",
                  flush=True)
            for pr in r["per_rank"]:
                print(f"   rank {pr['rank']}: {pr['chunks']} chunks, busy {pr['busy']:.1f} s of {pr['wall']:.1f} s "
                      f"({100 * pr['busy'] / max(pr['wall'], 1e-9):.0f}%), {pr['cpu']:.1f} CPU s", flush=True)
    params = sum(p.numel() for p in model.parameters())
    print(f"\n{machine()}; {params:,} params, {str(model.dtype).removeprefix('torch.')}, device {args.device}, "
          f"W = {args.window}, {args.variants} variants, batch size {args.batch_size}"
          + (f", {args.threads} thread(s) per rank" if args.device == "cpu" else ""))
    print("\n| ranks | run | chunk phase | variants/s | speed-up (wall) | speed-up (busiest rank's CPU time) "
          "| per rank: chunks, busy / wall (utilisation), CPU |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ranks = "; ".join(f"{pr['chunks']}, {pr['busy']:.1f} / {pr['wall']:.1f} s "
                          f"({100 * pr['busy'] / max(pr['wall'], 1e-9):.0f}%), {pr['cpu']:.1f} s"
                          for pr in r["per_rank"])
        print(f"| {r['ranks']} | {r['seconds']:.1f} s | {r['work']:.1f} s | {args.variants / r['work']:.2f} | "
              f"{rows[0]['work'] / r['work']:.2f}x | {rows[0]['cpu'] / r['cpu']:.2f}x | {ranks} |")


if __name__ == "__main__":
    main()
