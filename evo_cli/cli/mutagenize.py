"""``evo mutagenize`` (in-silico saturation mutagenesis) and ``evo plot`` (pictures of score files)."""

from __future__ import annotations

import click

from evo_cli.io.atomic import STDOUT
from evo_cli.io.fasta import STRANDS
from evo_cli.limits import MAX_BATCH_SIZE

from .options import (echo, full_command, hint_on_interrupt, load_model_cli, model_options, parse_regions,
                      progress_bar, verbosity_options)


@click.command("mutagenize", short_help="Saturation mutagenesis: every SNV of a region, scored.")
@click.option("--fasta", required=True, metavar="PATH",
              help="Reference FASTA, plain or bgzip (the .fai is built when missing).")
@click.option("--region", "region_texts", multiple=True, metavar="CHR:START-END", callback=parse_regions,
              help="Positions to mutate (1-based, inclusive; repeatable). CHR:START runs to the contig end, "
                   "CHR is the whole contig.")
@click.option("--regions", "bed", metavar="BED", default=None, help="Positions to mutate: BED intervals (0-based).")
@click.option("--record", "records", multiple=True, metavar="ID",
              help="Mutate a whole FASTA record, e.g. a designed construct (repeatable).")
@click.option("-o", "--output", default="-", metavar="PATH",
              help="Output: .tsv or .parquet (chrom, pos, ref, alt, ref_ll, alt_ll, delta), or .vcf.gz "
                   "(bgzip + tabix, score-variants INFO keys); - for TSV on stdout [default: stdout].")
@click.option("--format", "fmt", type=click.Choice(["tsv", "parquet", "vcf.gz"]), default=None,
              help="Output format [default: from the extension; TSV on stdout].")
@click.option("--plot", metavar="PATH", default=None,
              help="Also draw the heatmap: .png, .svg, .pdf or .html (needs evo-cli[plot]).")
@click.option("--bedgraph", metavar="PATH", default=None,
              help="Also write each position's mean delta as a track: .bedGraph, or .bw for bigWig "
                   "(needs evo-cli[bigwig]).")
@click.option("--window", type=click.IntRange(min=2), default=None,
              help="Window length in bases, as in score-variants "
                   "[default: 8192, or the model's context when shorter].")
@click.option("--strand", type=click.Choice(STRANDS), default="forward", show_default=True,
              help="both: average each score with that of the reverse-complement window.")
@click.option("--reduce", type=click.Choice(["mean", "sum"]), default="mean", show_default=True,
              help="Window score, as in score-variants: mean per-base log-likelihood, or its sum.")
@click.option("--batch-size", type=click.IntRange(1, MAX_BATCH_SIZE), default=8, show_default=True,
              help="Sequences per forward pass; also the positions per saved chunk of progress.")
@click.option("--chunk-size", type=click.IntRange(min=1), default=None,
              help="Tokens per forward call inside a window (bounds memory for long windows) [default: whole window].")
@click.option("--no-prefix-sharing", "no_share", is_flag=True,
              help="Score every window in full instead of sharing the prefix before the position (slower; same scores).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run of the same command.")
@model_options
def mutagenize(fasta, region_texts, bed, records, output, fmt, plot, bedgraph, window, strand, reduce, batch_size,
               chunk_size, no_share, resume, model, device, dtype, kernels):
    """In-silico saturation mutagenesis: every position x the three other bases, scored as score-variants does.

    \b
    evo mutagenize --fasta ref.fa --region chr17:41197700-41197800 -m evo2_7b -o scan.tsv --plot scan.png
    evo mutagenize --fasta constructs.fa --record design_3 -m evo2_7b -o design_3.vcf.gz --bedgraph design_3.bedGraph
    """
    from evo_cli.io.vcf import read_bed
    from evo_cli.mutagenesis import check_inputs, check_outputs, run_mutagenize
    from evo_cli.variants import DEFAULT_WINDOW

    if resume and output in STDOUT:
        raise click.UsageError("--resume needs an output file (-o PATH), not stdout")
    # every check that needs no model first: bad input fails in seconds
    fmt = check_outputs(output, fmt, plot=plot, bedgraph=bedgraph, resume=resume, inputs=(fasta, bed))
    regions = list(region_texts) + (read_bed(bed) if bed else [])
    total = check_inputs(fasta, regions, records)
    # the KV cache a batch of windows holds, for balancing a model split over devices
    loaded = load_model_cli(model, device, dtype, kernels, state_tokens=(window or DEFAULT_WINDOW) * batch_size)
    window = window or min(DEFAULT_WINDOW, loaded.config.max_seqlen)
    command = full_command(loaded, window=window, fmt=fmt, chunk_size=chunk_size or window)
    with hint_on_interrupt(output), progress_bar("mutagenizing", total, "positions") as advance:
        summary = run_mutagenize(loaded, fasta, output, regions=regions, records=records, format=fmt, window=window,
                                 strand=strand, reduce=reduce, batch_size=batch_size, share_prefix=not no_share,
                                 chunk_size=chunk_size, resume=resume, bedgraph=bedgraph, plot=plot,
                                 model_name=model, command=command, progress=advance)
    new = summary.scored - summary.resumed_scored  # skipped positions (N) cost nothing: not in the rate
    rate = f", {3 * new / summary.seconds:,.1f} variants/s" if summary.seconds > 0 and new else ""
    echo(f"scored {summary.variants:,} variants at {summary.scored:,} of {summary.positions:,} positions "
         f"in {summary.seconds:,.1f} s{rate}" + (f"; {summary.resumed:,} positions done before resuming"
                                                  if summary.resumed else ""))
    if summary.skipped:
        echo("skipped positions: " + ", ".join(f"{k} {v:,}" for k, v in sorted(summary.skipped.items())))


@click.command("plot", short_help="Draw a score file: heatmap, histogram or track.")
@click.argument("scores", metavar="SCORES")
@click.option("-o", "--output", required=True, metavar="PATH", help="Figure: .png, .svg, .pdf or .html.")
@click.option("--by", metavar="COLUMN", default=None,
              help="Variant tables: one histogram per value of this column or INFO field, e.g. a clinical label "
                   "carried over from the input VCF (at most 10 values).")
@click.option("--title", default=None, help="Figure title [default: the file name].")
@verbosity_options
def plot(scores, output, by, title):
    """Draw a score file: mutagenize tables as a heatmap, score-variants tables or VCFs as a delta
    histogram, `evo score --per-position` tables as a likelihood track (needs evo-cli[plot]).

    \b
    evo plot scored.vcf.gz --by FUNC_CLASS -o deltas.png
    evo plot scan.tsv -o scan.html
    """
    from evo_cli.plots import plot_scores

    kind = plot_scores(scores, output, by=by, title=title)
    echo(f"drew {scores} ({kind}) to {output}")
