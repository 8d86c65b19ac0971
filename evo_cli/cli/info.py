"""``evo info``: the parsed config of a checkpoint, without loading its weights."""

from __future__ import annotations

import json

import click

from .options import check_device, verbosity_options


def _one_device(ctx, param, value):
    # the model commands take a list (a split model); what info reports is resolved for one device
    if value is not None and "," in value:
        raise click.BadParameter(f"{value!r}: give one device (the runtime dtype is resolved for one; "
                                 "every device of a split model gets the same)")
    return check_device(ctx, param, value)


@click.command(short_help="Architecture, context, dtype and size of a model.")
@click.option("-m", "--model", "model", required=True, metavar="NAME|PATH", help="Published model name (see `evo models`) or a checkpoint file / directory.")
@click.option("--device", default="auto", show_default=True, metavar="auto|cpu|cuda[:N]", callback=_one_device,
              help="Device the runtime dtype is resolved for (nothing is loaded on it).")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16"]), default="auto", show_default=True,
              help="Runtime dtype to report; auto is float32 on CPU, bfloat16 on GPUs.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@verbosity_options
def info(model, device, dtype, as_json):
    """Show a checkpoint's architecture: block pattern, sizes, context, dtype, parameter count.

    A published model that is not downloaded is described from the config shipped with evo.

    \b
    evo info -m evo2_7b
    evo info -m ./my_checkpoint --json
    """
    from evo_cli.checkpoints import describe_checkpoint

    d = describe_checkpoint(model, device=device, dtype=dtype)
    if as_json:
        click.echo(json.dumps(d, indent=2, default=str))
        return
    width = max(len(k) for k in d)
    for k, v in d.items():
        click.echo(f"{k:<{width}}  {v:,}" if k == "parameters" else f"{k:<{width}}  {v}")  # JSON: a number

