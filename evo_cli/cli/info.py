"""``evo info``: the parsed config of a checkpoint, without loading its weights."""

from __future__ import annotations

import json

import click

from .options import verbosity_options


@click.command()
@click.option("-m", "--model", "model", required=True, metavar="NAME|PATH", help="Model name or checkpoint path.")
@click.option("--device", default="auto", show_default=True, help="Device the dtype is resolved for.")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16"]), default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@verbosity_options
def info(model, device, dtype, as_json):
    """Show a checkpoint's architecture: block pattern, sizes, context, dtype, parameter count."""
    from evo_cli.checkpoints import describe_checkpoint

    d = describe_checkpoint(model, device=device, dtype=dtype)
    if as_json:
        click.echo(json.dumps(d, indent=2, default=str))
        return
    width = max(len(k) for k in d)
    for k, v in d.items():
        click.echo(f"{k:<{width}}  {v}")

