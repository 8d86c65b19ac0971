"""Embedding one long sequence: time and peak memory at several lengths, as ``evo embed`` runs it.

    python benchmarks/bench_embed.py                               # L = 64k, 256k, 1M; pool mean
    python benchmarks/bench_embed.py --lengths 1048576 --max-seconds 1800 --trace 65536

Each length runs in its own process (clean peak memory): a random model (see common.py), a random
DNA sequence, ``iter_embeddings`` in chunks with a carried state, output streamed to a temporary
Parquet file with the same writer as the CLI. ``--max-seconds`` stops a run early and reports how
far it got; ``--trace N`` prints elapsed time and resident memory every N positions on stderr, which
shows whether memory stays flat as the positions grow (with ``--json`` the run stays in this
process, so the trace streams even if the run is cut short).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from common import (add_model_args, build, fmt_bytes, kv_cache_bytes, load_kernels, machine, peak_rss_bytes,  # noqa: E402
                    rss_bytes, run_each_length)

from evo_cli.embedding import DEFAULT_CHUNK_SIZE, _last_block, iter_embeddings, resolve_layers  # noqa: E402
from evo_cli.io.embeddings import open_embedding_writer  # noqa: E402


class TimeUp(Exception):
    """--max-seconds has passed (raised from the progress callback to stop mid-sequence)."""


def one(args) -> dict:
    model = build(args)
    L = args.lengths[0]
    g = torch.Generator().manual_seed(0)
    seq = "".join("ACGT"[i] for i in torch.randint(0, 4, (L,), generator=g).tolist())
    layers = resolve_layers(model.config, args.layer)
    load_kernels(model)
    load_before = os.getloadavg()[0]
    base_peak, base_rss = peak_rss_bytes(), rss_bytes()
    done, trace, next_trace = 0, [], args.trace
    t0, cpu0 = time.perf_counter(), time.process_time()

    def progress(n):
        nonlocal done, next_trace
        done += n
        if args.trace and done >= next_trace:
            row = {"positions": done, "seconds": round(time.perf_counter() - t0, 1),
                   "cpu_seconds": round(time.process_time() - cpu0, 1), "rss_bytes": rss_bytes() - base_rss}
            trace.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
            next_trace += args.trace
        if args.max_seconds and time.perf_counter() - t0 > args.max_seconds:
            raise TimeUp

    with tempfile.TemporaryDirectory() as tmp:
        try:
            with open_embedding_writer(os.path.join(tmp, "out.parquet"), model.config.hidden_size, args.pool == "none") as w:
                for e in iter_embeddings(model, [seq], layers, args.pool, args.strand, 1, args.chunk_size, progress):
                    w.write("seq", L, e.layer, args.pool, e.values.numpy(), e.start)
        except TimeUp:
            pass
    seconds = time.perf_counter() - t0
    strands = 2 if args.strand == "both" else 1
    return {"length": L, "positions_done": done, "complete": done == strands * L, "seconds": seconds,
            "cpu_seconds": time.process_time() - cpu0,
            "bases_per_s": done / seconds, "peak_bytes": peak_rss_bytes() - base_peak,
            "kv_cache_bytes": kv_cache_bytes(model, 1, L, _last_block(layers)), "layers": layers, "pool": args.pool,
            "strand": args.strand, "chunk_size": args.chunk_size, "dtype": str(model.dtype).removeprefix("torch."),
            "machine": machine(), "params": sum(p.numel() for p in model.parameters()), "trace": trace,
            "load_average": [load_before, os.getloadavg()[0]]}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--lengths", type=int, nargs="+", default=[65536, 262144, 1048576])
    p.add_argument("--layer", action="append", default=None, help="layer(s) to embed (default: the model's default)")
    p.add_argument("--pool", choices=["mean", "last", "max", "none"], default="mean")
    p.add_argument("--strand", choices=["forward", "both"], default="forward")
    p.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE)
    p.add_argument("--max-seconds", type=float, default=None, help="stop a length after this long; report how far it got")
    p.add_argument("--trace", type=int, default=0, help="print time and memory every N positions (stderr)")
    p.add_argument("--save", metavar="PATH", help="also write the results (with the memory traces) as JSON")
    p.add_argument("--json", action="store_true", help="run one length in this process; print its result as JSON")
    args = p.parse_args()
    if args.json:
        print(json.dumps(one(args)))
        return
    rows = []
    for L, r in run_each_length(__file__, sys.argv[1:], args.lengths):
        rows.append(r)
        if "error" in r:
            continue
        status = "" if r["complete"] else f"  (stopped after {r['positions_done']:,} positions)"
        print(f"L={L:>8}  {r['bases_per_s']:>8,.0f} bases/s  {r['seconds']:>9.1f} s  peak +{fmt_bytes(r['peak_bytes'])}  "
              f"(KV cache {fmt_bytes(r['kv_cache_bytes'])}), load {r['load_average'][0]:.1f}-{r['load_average'][1]:.1f}{status}",
              flush=True)
    if args.save:
        with open(args.save, "w") as f:
            json.dump(rows, f, indent=1)
    ok = [r for r in rows if "error" not in r]
    if ok:
        r0 = ok[0]
        print(f"\n{r0['machine']}; {r0['params']:,} params, {r0['dtype']}; layers {', '.join(r0['layers'])}, "
              f"pool {r0['pool']}, strand {r0['strand']}, chunk {r0['chunk_size']}")
        print("\n| L | bases/s | time | CPU time | peak memory | of which KV cache |\n|---|---|---|---|---|---|")
        for r in ok:
            note = "" if r["complete"] else f" (first {r['positions_done']:,} positions)"
            print(f"| {r['length']:,} | {r['bases_per_s']:,.0f} | {r['seconds']:,.0f} s{note} | {r['cpu_seconds']:,.0f} s "
                  f"| {fmt_bytes(r['peak_bytes'])} | {fmt_bytes(r['kv_cache_bytes'])} |")


if __name__ == "__main__":
    main()
