"""Non-model overhead at scale: `evo score-variants` over 20k-150k SNVs and `evo score` over as many
short FASTA records, with a tiny random model (hidden 8, 3 blocks) so the model costs little.

Each run is its own `evo` process under GNU time (/usr/bin/time -v): wall, CPU (user + system) and peak
RSS. Inputs are synthetic (seeded): a 3 Mb random contig, SNVs at random positions, records of 30-79 bp.

    python benchmarks/bench_scale.py --sizes 20000 50000 150000 --workdir /tmp/evo-scale
"""

from __future__ import annotations

import argparse
import random
import re
import subprocess
import sys
from pathlib import Path

import pysam

from evo_cli.checkpoints.native import save_native
from evo_cli.model.init import motif_config, random_model

EVO = [sys.executable, "-m", "evo_cli.cli.main"]


def make_inputs(work: Path, sizes: list[int], length: int = 3_000_000) -> None:
    if not (work / "model").exists():  # a rerun in the same folder keeps it
        save_native(random_model(motif_config("evo2", hidden_size=8, num_layers=3, head_dim=8, state_size=4,
                                              name="tiny"), seed=1), work / "model")
    rng = random.Random(0)
    seq = "".join(rng.choice("ACGT") for _ in range(length))
    with open(work / "ref.fa", "w") as f:
        f.write(">chr1\n" + "".join(seq[i : i + 60] + "\n" for i in range(0, length, 60)))
    pysam.faidx(str(work / "ref.fa"))
    for n in sizes:
        with open(work / f"v{n}.vcf", "w") as f:
            f.write(f"##fileformat=VCFv4.2\n##contig=<ID=chr1,length={length}>\n"
                    "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n")
            for p in sorted(rng.sample(range(100, length - 100), n)):
                ref = seq[p - 1]
                f.write(f"chr1\t{p}\tv{p}\t{ref}\t{rng.choice([b for b in 'ACGT' if b != ref])}\t.\t.\t.\n")
        with open(work / f"s{n}.fa", "w") as f:
            for i in range(n):
                s = rng.randrange(0, length - 200)
                f.write(f">r{i}\n{seq[s : s + rng.randrange(30, 80)]}\n")


def timed(args: list, cwd: Path) -> tuple[float, float, int]:
    """(wall s, CPU s, peak RSS MB) of one `evo` run."""
    done = subprocess.run(["/usr/bin/time", "-v", *EVO, *map(str, args)], cwd=cwd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-2000:])
    field = {m.group(1).strip(): m.group(2) for m in re.finditer(r"^\s*(.+?): (\S+)$", done.stderr, re.M)}
    h, m, s = ([0, 0] + field["Elapsed (wall clock) time (h:mm:ss or m:ss)"].split(":"))[-3:]
    wall = int(h) * 3600 + int(m) * 60 + float(s)
    cpu = float(field["User time (seconds)"]) + float(field["System time (seconds)"])
    return wall, cpu, int(field["Maximum resident set size (kbytes)"]) // 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[20000, 50000, 150000])
    p.add_argument("--workdir", type=Path, default=Path("/tmp/evo-scale"))
    p.add_argument("--batch-size", type=int, default=64)
    a = p.parse_args()
    a.workdir.mkdir(parents=True, exist_ok=True)
    make_inputs(a.workdir, a.sizes)
    print("| command | output | n | wall | CPU | us/item (wall) | peak RSS |\n|---|---|---|---|---|---|---|")
    for n in a.sizes:
        runs = [("score-variants", "file", ["score-variants", "--vcf", f"v{n}.vcf", "--fasta", "ref.fa", "-m", "model",
                                            "--window", 16, "-o", f"out{n}.tsv"]),
                ("score-variants", "stdout", ["score-variants", "--vcf", f"v{n}.vcf", "--fasta", "ref.fa", "-m",
                                              "model", "--window", 16, "-o", "/dev/null"]),
                ("score", "file", ["score", "--fasta", f"s{n}.fa", "-m", "model", "-o", f"sc{n}.tsv"])]
        for command, where, args in runs:
            for out in (a.workdir / f"out{n}.tsv", a.workdir / f"sc{n}.tsv"):
                out.unlink(missing_ok=True)
            wall, cpu, rss = timed([*args, "--batch-size", a.batch_size, "-q"], a.workdir)
            print(f"| {command} | {where} | {n:,} | {wall:.1f} s | {cpu:.1f} s | {wall / n * 1e6:.0f} | {rss} MB |",
                  flush=True)


if __name__ == "__main__":
    main()
