"""``evo selftest``: evo2's own forward-pass test on this install, PASS or FAIL with the numbers."""

from __future__ import annotations

import sys

import click

from .options import echo, load_model_cli, model_options, progress_bar


@click.command(short_help="Check this install's numbers with evo2's own test.")
@click.option("--expected", metavar="NAME", default=None,
              help="Published model whose recorded numbers to check against [default: the --model name]; "
                   "for a converted checkpoint given as a path.")
@model_options
def selftest(model, device, dtype, kernels, expected):
    """Run the evo2 repository's test on a published Evo 2 model: next-token cross-entropy over its four
    prompts, PASS when the mean is within 1e-3 of the value the test records for that model. Tells
    whether this hardware, dtype and --fp8 mode give the reference numbers."""
    from evo_cli.selftest import (TOLERANCE, check_architecture, check_selftest, projection_macs, run_selftest,
                                  upstream_prompts)

    name = check_selftest(model, expected)
    net = load_model_cli(model, device, dtype, kernels)
    check_architecture(net.config, name)  # before the CPU time estimate
    prompts = upstream_prompts()
    if net.fp8 == "emulate" and net.device.type == "cpu":
        hours = projection_macs(net.config, prompts) / 2e8 / 3600
        echo(f"FP8 emulation on the CPU (about 200 M multiply-adds/s per core): roughly {hours:,.1f} h for this test; "
             "a CUDA GPU runs mmaemu's kernels in minutes")
    with progress_bar("selftest", len(prompts), "prompts") as advance:
        result = run_selftest(net, name, prompts, progress=lambda i: advance())
    for seq, loss, acc in zip(result.names, result.losses, result.accuracies):
        click.echo(f"{seq}: loss {loss:.4f}, accuracy {100 * acc:.2f}%")
    verdict = "PASS" if result.passed else "FAIL"
    click.echo(f"{verdict} {name}: mean loss {result.mean_loss:.4f} (expected {result.expected_loss:.4f} +- {TOLERANCE:g}), "
               f"accuracy {result.mean_accuracy:.2f}% (expected {result.expected_accuracy:.2f}%); "
               f"fp8 {net.fp8}, {str(net.dtype).removeprefix('torch.')} on {net.device}")
    if not result.passed:
        sys.exit(1)
