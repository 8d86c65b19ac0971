"""``evo models``, ``evo download`` and ``evo convert``: the published checkpoints and their files."""

from __future__ import annotations

import json
import re
import sys

import click

from .options import echo, is_quiet, status, verbosity_options

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str) -> int:
    """``4GB`` (10^9), ``4GiB`` (2^30), ``500MB``, ``123456`` (bytes) -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).upper() not in _UNITS:
        raise click.BadParameter(f"{text!r} is not a size (examples: 4GB, 500MB, 2GiB)", param_hint="--shard-size")
    size = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if size < 1:
        raise click.BadParameter("must be at least 1 byte", param_hint="--shard-size")
    return size


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _params(billions: float) -> str:
    return f"{billions:.3g}B" if billions >= 0.1 else f"{billions * 1000:.3g}M"


def _context(n: int) -> str:
    return f"{n >> 20}M" if n >= 1 << 20 else f"{round(n / 1000)}k"


@click.command("models", short_help="List the published and bundled models, and the cache.")
@click.option("--json", "as_json", is_flag=True, help="Print the registry and cache state as JSON.")
@verbosity_options
def models(as_json):
    """List the published models, with what is in the local Hugging Face cache, and the bundled ones."""
    from evo_cli.hub import hub_cache_dir, list_models

    rows = list_models()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    header = ["name", "family", "params", "context", "embedding layer", "fp8", "cached", "on disk", "download"]
    table = [[r["name"], r["family"], _params(r["params_billions"]), _context(r["context"]), r["embedding_layer"],
              "E4M3 (TE scales)" if r["needs_fp8"] else "-", r["cached"],
              _gb(r["size_on_disk"]) if r["size_on_disk"] else "-", "~" + _gb(r["download_bytes"]) if r["download_bytes"] else "-"] for r in rows]
    caption = f"Hugging Face cache: {hub_cache_dir()}\n{_FP8_NOTE}"
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        t = Table(caption=caption)
        for h in header:
            t.add_column(h, justify="right" if h in ("params", "context", "on disk", "download") else "left")
        for row in table:
            t.add_row(*row)
        console = Console()
        # a terminal too narrow for the table (80 columns) would get names cut to "evo2_…": plain lines instead
        if console.measure(t, options=console.options.update_width(1 << 16)).maximum <= console.width:
            console.print(t)
            return
    widths = [max(len(str(x)) for x in col) for col in zip(header, *table)]
    for row in [header, *table]:
        click.echo("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())
    if sys.stdout.isatty():
        click.echo(caption)


_FP8_NOTE = ("fp8: models trained with FP8 projections run them with --fp8 auto: native on sm_89/sm_90 GPUs, "
             'emulated through mmaemu elsewhere (pip install "evo-cli[fp8]"); `evo info -m NAME` shows the mode')


@click.command("download", short_help="Download published models into the Hugging Face cache.")
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
@verbosity_options
def download(names):
    """Download published models into the Hugging Face cache (HF_HUB_CACHE / HF_HOME); an interrupted
    download resumes. Prints where each model's files are."""
    from evo_cli.hub import download_model, resolve_spec

    for name in names:
        resolve_spec(name)
    for name in names:
        click.echo(download_model(name, quiet=is_quiet()))


@click.command("convert", short_help="Convert a checkpoint to the native safetensors layout.")
@click.argument("source", metavar="SRC")
# an existing file is refused by check_output_dir (exit 1, as other commands' outputs), not by click.Path
@click.option("-o", "--output", "output", required=True, metavar="DIR",
              help="Directory to create (must not exist, or be empty).")
@click.option("--dtype", type=click.Choice(["keep", "float32", "bfloat16"]), default="keep", show_default=True,
              help="Stored dtype; Hyena filters and rotary frequencies stay float32 unless kept as stored.")
@click.option("--shard-size", default="4GiB", show_default=True, metavar="SIZE",
              help="Largest shard file, e.g. 4GB, 500MB.")
@verbosity_options
def convert(source, output, dtype, shard_size):
    """Convert SRC (a checkpoint in any supported format, or a published model name) to the native
    layout: config.json + model-*.safetensors shards + index, which loads fastest (memory-mapped)."""
    from evo_cli.checkpoints.convert import convert_checkpoint

    max_bytes = parse_size(shard_size)
    with status(f"converting {source}"):
        out = convert_checkpoint(source, output, dtype=dtype, max_shard_bytes=max_bytes)
    shards = sorted(out.glob("model-*.safetensors"))
    echo(f"wrote {len(shards)} shard(s), {_gb(sum(p.stat().st_size for p in shards))}, to {out}")
