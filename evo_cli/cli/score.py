"""``evo score`` (sequence log-likelihoods) and ``evo score-variants`` (zero-shot variant effects)."""

from __future__ import annotations

from pathlib import Path

import click

from evo_cli.io.atomic import STDOUT, same_destination
from evo_cli.io.fasta import STRANDS
from evo_cli.limits import MAX_BATCH_SIZE

from .options import echo, full_command, hint_on_interrupt, load_model_cli, model_options, progress_bar, region_option


@click.command("score-variants", short_help="Zero-shot variant effects of a VCF: ALT vs REF.")
@click.option("--vcf", required=True, metavar="PATH", help="Variants: VCF (plain, gzip or bgzip) or BCF.")
@click.option("--fasta", required=True, metavar="PATH",
              help="Reference FASTA, plain or bgzip (the .fai is built when missing).")
@click.option("-o", "--output", default="-", metavar="PATH",
              help="Output: .vcf, .vcf.gz (bgzip + tabix), .tsv or .parquet; - for stdout (VCF unless --format) "
                   "[default: stdout].")
@click.option("--format", "fmt", type=click.Choice(["vcf", "vcf.gz", "tsv", "parquet"]), default=None,
              help="Output format [default: from the extension; VCF on stdout].")
@click.option("--window", type=click.IntRange(min=2), default=None,
              help="Window length in bases, centred on the variant and clipped at contig ends "
                   "[default: 8192, or the model's context when shorter].")
@click.option("--strand", type=click.Choice(STRANDS), default="forward", show_default=True,
              help="both: average each score with that of the reverse-complement window.")
@region_option
@click.option("--reduce", type=click.Choice(["mean", "sum"]), default="mean", show_default=True,
              help="Window score: mean per-base log-likelihood (the Evo 2 method), or its sum (delta = the "
                   "whole-window log-likelihood ratio).")
@click.option("--regions", "bed", metavar="BED", default=None, help="Only variants in these BED intervals (0-based).")
@click.option("--batch-size", type=click.IntRange(1, MAX_BATCH_SIZE), default=8, show_default=True,
              help="Sequences per forward pass; also the records per saved chunk of progress.")
@click.option("--chunk-size", type=click.IntRange(min=1), default=None,
              help="Tokens per forward call inside a window (bounds memory for long windows) [default: whole window].")
@click.option("--skip-ref-mismatch", is_flag=True,
              help="Skip records whose REF differs from the FASTA or runs past the end of its contig instead of "
                   "failing (status ref_mismatch, past_contig_end).")
@click.option("--no-prefix-sharing", "no_share", is_flag=True,
              help="Score every window in full instead of sharing the prefix before the variant (slower; same scores).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run of the same command.")
@model_options
def score_variants(vcf, fasta, output, fmt, window, strand, regions, reduce, bed, batch_size, chunk_size,
                   skip_ref_mismatch, no_share, resume, model, device, dtype, kernels):
    """Zero-shot variant effects: the model's log-likelihood of the ALT window minus that of the REF window.

    \b
    evo score-variants --vcf clinvar.vcf.gz --fasta GRCh38.fa -m evo2_7b -o scored.vcf.gz
    evo score-variants --vcf in.vcf --fasta ref.fa -m evo2_7b -o scores.tsv --strand both --region chr17:41196312-41277500
    evo score-variants --vcf in.vcf --fasta ref.fa -m evo2_7b -o - | bcftools view -i 'INFO/EVO_DELTA<-0.001'
    """
    from evo_cli.io.vcf import read_bed
    from evo_cli.variants import DEFAULT_WINDOW, check_output, check_variants, run_score_variants

    if resume and output in STDOUT:
        raise click.UsageError("--resume needs an output file (-o PATH), not stdout")
    # check the output, read the VCF and check REF before loading the model: bad input fails in seconds
    fmt = check_output(output, fmt, resume, inputs=(vcf, fasta, bed))
    regions = list(regions) + (read_bed(bed) if bed else [])
    total = check_variants(vcf, fasta, regions, skip_ref_mismatch)
    loaded = load_model_cli(model, device, dtype, kernels, state_tokens=(window or DEFAULT_WINDOW) * batch_size)
    context = loaded.config.max_seqlen
    if window is None:
        window = min(DEFAULT_WINDOW, context)
        if window < DEFAULT_WINDOW:
            echo(f"window {window:,} bases: the default {DEFAULT_WINDOW:,} clipped to the model's context")
    command = full_command(loaded, window=window, fmt=fmt, chunk_size=chunk_size or window)
    with hint_on_interrupt(output), progress_bar("scoring", total, "variants") as advance:
        summary = run_score_variants(loaded, vcf, fasta, output, format=fmt, window=window, strand=strand,
                                     regions=regions, batch_size=batch_size, skip_ref_mismatch=skip_ref_mismatch,
                                     share_prefix=not no_share, chunk_size=chunk_size, reduce=reduce, resume=resume,
                                     model_name=model, command=command, progress=advance)
    new = summary.variants - summary.resumed
    rate = f", {new / summary.seconds:,.1f} variants/s" if summary.seconds > 0 and new and summary.scored else ""
    echo(f"scored {summary.scored:,} of {summary.variants:,} variants ({summary.records:,} records) "
          f"in {summary.seconds:,.1f} s{rate}" + (f"; {summary.resumed:,} done before resuming" if summary.resumed else ""))
    if summary.skipped:
        reasons = ", ".join(f"{reason} {n:,}" for reason, n in summary.skipped.most_common())
        echo(f"skipped {sum(summary.skipped.values()):,}: {reasons}")
    # a device or pipe (-o /dev/null) gets no index, sorted or not
    if (summary.indexed is False and (fmt == "vcf.gz" or str(output).endswith((".vcf.gz", ".vcf.bgz")))
            and Path(output).is_file()):
        echo(f"warning: {output} is not indexed: its records are not sorted by position (sort the input VCF, "
              f"e.g. bcftools sort, for a tabix index)")


@click.command("score", short_help="Log-likelihood of each sequence of a FASTA file.")
@click.option("--fasta", required=True, metavar="PATH", help="Sequences to score: FASTA, plain or gzip.")
@click.option("-o", "--output", default="-", metavar="PATH",
              help="Output: .tsv or .parquet; - for TSV on stdout [default: stdout].")
@click.option("--format", "fmt", type=click.Choice(["tsv", "parquet"]), default=None,
              help="Output format [default: from the extension; TSV on stdout].")
@click.option("--bos/--no-bos", default=None,
              help="Prepend the BOS token 0 and score the first base too [default: Evo 1 yes, Evo 2 no, as the references].")
@click.option("--batch-size", type=click.IntRange(1, MAX_BATCH_SIZE), default=8, show_default=True, help="Sequences per forward pass.")
@click.option("--chunk-size", type=click.IntRange(min=1), default=8192, show_default=True,
              help="Sequences longer than this run in chunks of this many tokens with a carried state (bounded memory).")
@click.option("--per-position", metavar="PATH", default=None,
              help="Also write every scored position's log-probability: id, pos (1-based), base, logprob (.tsv or .parquet).")
@click.option("--bedgraph", metavar="PATH", default=None,
              help="Also write every scored position's log-probability as a genome-browser track: .bedGraph, "
                   "or .bw for bigWig (needs evo-cli[bigwig]).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run of the same command.")
@model_options
def score(fasta, output, fmt, bos, batch_size, chunk_size, per_position, bedgraph, resume, model, device, dtype,
          kernels):
    """Log-likelihood of each sequence under the model: id, length, mean_ll, sum_ll.

    \b
    evo score --fasta seqs.fa -m evo2_7b -o scores.tsv
    """
    from evo_cli.io.atomic import check_output_path
    from evo_cli.io.fasta import read_fasta
    from evo_cli.io.partial import check_fresh
    from evo_cli.io.tables import check_table_output
    from evo_cli.runs import output_metadata, run_settings
    from evo_cli.scoring import default_prepend_bos, run_score

    fmt = check_table_output(output, fmt)  # a --format that contradicts -o's name: a usage error
    if per_position:
        check_table_output(per_position)
    if bedgraph:
        from evo_cli.io.tracks import check_track_output

        check_track_output(bedgraph)
    if per_position and same_destination(output, per_position):
        raise click.UsageError(f"--per-position {per_position} and -o {output} are both one output: give them "
                               "different files")
    if bedgraph and same_destination(output, bedgraph):  # possible with --format: -o x.bedGraph --format tsv
        raise click.UsageError(f"--bedgraph {bedgraph} and -o {output} are both one output: give them different "
                               "files")
    if resume and output in STDOUT:
        raise click.UsageError("--resume needs an output file (-o PATH), not stdout")
    # every output location is checked before any work
    for path in (output, per_position, bedgraph):
        check_output_path(path, inputs=(fasta,))
    if output != "-":
        check_fresh(output, resume)
    records = read_fasta(fasta)
    loaded = load_model_cli(model, device, dtype, kernels, state_tokens=max((len(r.sequence) + 1 for r in records), default=1))
    prepend = default_prepend_bos(loaded) if bos is None else bos
    command = full_command(loaded, bos=prepend, fmt=fmt)
    meta = output_metadata(loaded, model, command, bos=prepend, batch_size=batch_size, chunk_size=chunk_size)
    positions = sum(len(r.sequence) + prepend for r in records)
    with hint_on_interrupt(output), progress_bar("scoring", positions, "positions") as advance:
        summary = run_score(loaded, records, output, format=fmt, per_position=per_position, prepend_bos=prepend,
                            batch_size=batch_size, chunk_size=chunk_size, resume=resume,
                            settings=run_settings(loaded, {"fasta": fasta}), metadata=meta, progress=advance,
                            bedgraph=bedgraph)
    new = summary.sequences - summary.resumed
    rate = f", {new / summary.seconds:,.1f} sequences/s" if summary.seconds > 0 and new else ""
    echo(f"scored {summary.sequences:,} sequences in {summary.seconds:,.1f} s{rate}"
          + (f"; {summary.resumed:,} done before resuming" if summary.resumed else ""))
