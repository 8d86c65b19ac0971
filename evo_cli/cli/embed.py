"""``evo embed``: hidden states of named layers, pooled or per position, to Parquet."""

from __future__ import annotations

import click

from evo_cli.io.embeddings import DEFAULT_BATCH_SIZE, DEFAULT_CHUNK_SIZE, POOLINGS
from evo_cli.io.fasta import STRANDS
from evo_cli.limits import MAX_BATCH_SIZE

from .options import echo, full_command, hint_on_interrupt, is_quiet, load_model_cli, model_options, progress_bar


def _check_layers(_ctx, _param, names):
    """Layer names of no known form are bad options, found before the model loads (which can take minutes)."""
    from evo_cli.embedding import check_layer_name
    from evo_cli.errors import InputError

    for name in names:
        try:
            check_layer_name(name)
        except InputError as err:
            raise click.BadParameter(str(err)) from None
    return names


@click.command(short_help="Hidden states of named layers for each sequence, to Parquet.")
# a missing or unreadable FASTA is a bad file (exit 1, read_fasta's message), as in `evo score`
@click.option("--fasta", required=True, metavar="PATH", help="Sequences to embed: FASTA, plain or gzip.")
# a directory is refused by check_output_path (exit 1, as in the other commands), not by click.Path
# the one data command without stdout as its default: its only format, Parquet, needs a file (as in every command)
@click.option("-o", "--output", default=None, metavar="PATH",
              help="Output: .parquet (or .pq); required, as Parquet needs a file.")
@click.option("--layer", "layers", multiple=True, metavar="NAME", callback=_check_layers,
              help="Layer to embed (repeatable): embedding_layer, blocks.N, blocks.N.mlp.l3 or norm; negative N counts "
                   "from the end. Default: the model's recommended layer, else the middle block's MLP output.")
@click.option("--pool", type=click.Choice(POOLINGS), default="mean", show_default=True,
              help="Pooling over positions; none writes one row per position.")
@click.option("--strand", type=click.Choice(STRANDS), default="forward", show_default=True,
              help="both: average with the reverse complement (position i with its position L-1-i).")
@click.option("--batch-size", type=click.IntRange(1, MAX_BATCH_SIZE), default=DEFAULT_BATCH_SIZE, show_default=True,
              help="Sequences per batch (sequences up to --chunk-size bases).")
@click.option("--chunk-size", type=click.IntRange(min=1), default=DEFAULT_CHUNK_SIZE, show_default=True,
              help="Longer sequences run alone in chunks of this many bases (bounds memory; one pass's "
                   "values within float32 rounding).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run of the same command.")
@model_options
def embed(fasta, output, layers, pool, strand, batch_size, chunk_size, resume, model, device, dtype, kernels):
    """Embed the sequences of a FASTA file with a model's hidden states; write Parquet.

    Pooled: one row per (sequence, layer) with id, length, layer, pooling and embedding (a
    fixed-size float32 list). --pool none: one row per (sequence, layer, position), plus pos
    (1-based, as in the other commands' outputs).

    \b
    evo embed --fasta genes.fa -m evo2_7b -o genes.parquet
    evo embed --fasta genes.fa -m evo2_7b -o layers.parquet --layer blocks.20 --layer blocks.-1 --strand both
    evo embed --fasta reads.fa -m evo2_7b -o per_base.parquet --pool none
    """
    from evo_cli.embedding import default_layer, resolve_layers, run_embed
    from evo_cli.io.atomic import check_output_path
    from evo_cli.io.embeddings import check_embedding_output
    from evo_cli.io.fasta import read_fasta
    from evo_cli.io.partial import check_fresh
    from evo_cli.registry import known_model
    from evo_cli.runs import output_metadata, run_settings

    if output is None:
        raise click.UsageError("Missing option '-o' / '--output': pass -o PATH.parquet (embeddings are written as "
                               "Parquet, which needs a file; the other commands default to stdout)")
    if output == "-":
        raise click.UsageError("parquet output needs a file name (-o PATH), not stdout")  # as in every command
    check_embedding_output(output)
    check_output_path(output, inputs=(fasta,))
    check_fresh(output, resume)
    records = read_fasta(fasta)
    net = load_model_cli(model, device, dtype, kernels, state_tokens=max((len(r.sequence) for r in records), default=1))
    config = net.config
    names = resolve_layers(config, layers)
    if not layers and not is_quiet():
        spec = known_model(config)
        why = (f"recommended for {spec.name}" if spec
               else "the middle block's MLP output; no recommended layer for this model")
        echo(f"embedding layer {default_layer(config)} ({why}); choose with --layer")
    command = full_command(net, layers=names)
    metadata = output_metadata(net, model, command, family=config.family, layers=names, pooling=pool, strand=strand,
                               batch_size=batch_size, chunk_size=chunk_size, hidden_size=config.hidden_size)
    strands = 2 if strand == "both" else 1
    with hint_on_interrupt(output), \
            progress_bar("embedding", strands * sum(len(r.sequence) for r in records), "bases") as advance:
        summary = run_embed(net, records, output, names, pool, strand, batch_size, chunk_size, resume=resume,
                            settings=run_settings(net, {"fasta": fasta}), metadata=metadata, progress=advance)
    echo(f"wrote {summary.rows:,} rows ({summary.sequences:,} sequences x {len(names)} layer(s)) to {output}"
         + (f"; {summary.resumed:,} sequences done before resuming" if summary.resumed else ""))
