"""Checkpoint load time and peak memory by format: a vortex ``.pt`` (the published Evo 2 layout, rows
permuted at load) against the native safetensors directory ``evo convert`` writes.

    python benchmarks/bench_load.py                       # hidden 1024, 14 layers, float32 on CPU
    python benchmarks/bench_load.py --hidden 2048 --layers 14

The files are written once, then each load runs in its own process (files in the page cache, so this
measures the loader, not the disk).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from common import add_model_args, build, fmt_bytes, machine, rss_bytes, run_isolated  # noqa: E402

import evo_cli  # noqa: E402
from evo_cli.checkpoints.formats import column_split_perm, interleave_perm  # noqa: E402
from evo_cli.checkpoints.native import save_native  # noqa: E402


def write_vortex(model, path: Path) -> None:
    """Our layout back to the published vortex layout (inverse row permutations, Hyena-MR taps flipped)."""
    c = model.config
    inter = interleave_perm(c.hidden_size).argsort()
    qkv = column_split_perm(c.hidden_size, c.num_heads).argsort()
    sd = {}
    for name, t in model.state_dict().items():
        if name.endswith(("projections.weight", "short_filter_weight")):
            t = t.index_select(0, inter)
        elif name.endswith("Wqkv.weight"):
            t = t.index_select(0, qkv)
        elif name.endswith("filter.h") and c.block_types[int(name.split(".")[1])] == "hcm":
            t = t.flip(-1)
        sd[name] = t.contiguous()
    torch.save(sd, path)


def one(args) -> dict:
    config = evo_cli.ModelConfig.from_native(json.loads(Path(args.dir, "native", "config.json").read_text()))
    rss = rss_bytes()
    t0 = time.perf_counter()
    if args.format == "vortex":
        model = evo_cli.load_model(Path(args.dir, "model.pt"), device="cpu", dtype=args.dtype, config=config)
    else:
        model = evo_cli.load_model(Path(args.dir, "native"), device="cpu", dtype=args.dtype)
    seconds = time.perf_counter() - t0
    return {"format": args.format, "seconds": seconds, "rss_bytes": rss_bytes() - rss,
            "machine": machine(), "params": sum(p.numel() for p in model.parameters()),
            "dtype": str(model.dtype).removeprefix("torch.")}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.set_defaults(hidden=1024, device="cpu")
    p.add_argument("--format", choices=["vortex", "native"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--dir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.family != "evo2":
        p.error("the vortex layout written here is Evo 2's: use --family evo2")
    if args.json:
        print(json.dumps(one(args)))
        return
    with tempfile.TemporaryDirectory(prefix="evo-bench-load-") as tmp:
        args.dtype = "float32"
        model = build(args)
        write_vortex(model, Path(tmp, "model.pt"))
        save_native(model, Path(tmp, "native"))
        size = Path(tmp, "model.pt").stat().st_size
        del model
        passthrough = ["--hidden", str(args.hidden), "--layers", str(args.layers), "--head-dim", str(args.head_dim),
                       "--family", args.family]
        rows = [run_isolated(__file__, [*passthrough, "--dir", tmp, "--format", fmt, "--dtype", dtype])
                for fmt, dtype in (("vortex", "float32"), ("native", "float32"), ("native", "bfloat16"))]
    for r in rows:
        if "error" in r:
            print(r["error"], file=sys.stderr)
            return
    print(f"{rows[0]['machine']}; {rows[0]['params']:,} params, {fmt_bytes(size)} of float32 weights")
    print("\n| format | loaded as | load time | resident memory after load |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['format']} | {r['dtype']} | {r['seconds'] * 1e3:,.0f} ms | +{fmt_bytes(r['rss_bytes'])} |")


if __name__ == "__main__":
    main()
