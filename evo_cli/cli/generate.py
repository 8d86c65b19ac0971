"""``evo generate``: sample DNA after prompts with recurrent decoding; FASTA or JSONL out."""

from __future__ import annotations

import math

import click

from evo_cli.limits import MAX_BATCH_SIZE, MAX_GENERATIONS

from .options import echo, full_command, hint_on_interrupt, load_model_cli, model_options, progress_bar


def _finite(_ctx, _param, value):
    # FloatRange lets nan through (every comparison with it is false) and inf past an open upper end
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a finite number")
    return value


@click.command(short_help="Sample DNA after prompts (recurrent decoding).")
@click.option("-p", "--prompt", "prompt_seqs", multiple=True, metavar="SEQ",
              help="A DNA prompt (repeatable; named prompt1, prompt2, ...).")
@click.option("--prompts", "prompts_fasta", metavar="FASTA",
              help="Prompts from a FASTA file (named by record id).")
@click.option("-n", "--n-tokens", type=click.IntRange(min=1), default=500, show_default=True,
              help="Tokens to generate per sample (prompt + tokens must fit the model's context).")
@click.option("--temperature", type=click.FloatRange(min=0), default=1.0, show_default=True, callback=_finite,
              help="Softmax temperature (> 0; 0 only with --top-k 1, greedy).")
@click.option("--top-k", type=click.IntRange(min=0), default=4, show_default=True,
              help="Sample among the k most likely tokens; 1 = greedy, 0 = the whole vocabulary.")
@click.option("--top-p", type=click.FloatRange(min=0, max=1, min_open=True), default=1.0, show_default=True, callback=_finite,
              help="Nucleus sampling: keep the most likely tokens up to this probability mass.")
@click.option("--num-samples", type=click.IntRange(1, MAX_GENERATIONS), default=1, show_default=True, help="Samples per prompt.")
@click.option("--seed", type=click.IntRange(min=0), default=None,
              help="Seed for reproducible sampling [default: random, written to the output].")
@click.option("--batch-size", type=click.IntRange(1, MAX_BATCH_SIZE), default=8, show_default=True,
              help="Sequences decoded together (each sample keeps its own random stream whatever the batch).")
# --chunk-size as in score, embed, score-variants and mutagenize; --prefill-chunk, the first name, is
# kept (and still recorded in outputs, so that they stay the same bytes)
@click.option("--prefill-chunk", "--chunk-size", "prefill_chunk", type=click.IntRange(min=1), default=8192,
              show_default=True, help="Prompt tokens per prefill pass (bounds memory for long prompts).")
@click.option("--format", "fmt", type=click.Choice(["auto", "fasta", "jsonl"]), default="auto", show_default=True,
              help="Output format; auto: .jsonl is JSON Lines, .fa/.fasta/.fna/.fas (and stdout) FASTA.")
@click.option("-o", "--output", default="-", metavar="PATH",
              help="Output: .fa (.fasta, .fna, .fas) or .jsonl, gzip with .gz after either; - for FASTA on stdout "
                   "[default: stdout].")
@click.option("--resume", is_flag=True, help="Continue an interrupted run of the same command (same seed).")
@model_options
def generate(prompt_seqs, prompts_fasta, n_tokens, temperature, top_k, top_p, num_samples, seed, batch_size,
             prefill_chunk, fmt, output, resume, model, device, dtype, kernels):
    """Generate DNA after each prompt: one record per (prompt, sample), the prompt not included.

    \b
    evo generate --model evo2_7b --prompt ACGTACGT -n 1000 -o gen.fa
    evo generate --model evo2_7b --prompts prompts.fa --num-samples 4 --seed 1 -o gen.jsonl
    """
    from evo_cli._version import __version__
    from evo_cli.checkpoints import published_context
    from evo_cli.errors import InputError
    from evo_cli.generation import check_context, check_generations, prepare_prompts, resolve_seed, run_generate
    from evo_cli.io.atomic import STDOUT, check_output_path
    from evo_cli.io.fasta import read_fasta
    from evo_cli.io.generated import output_format
    from evo_cli.io.partial import check_fresh
    from evo_cli.runs import run_settings

    if bool(prompt_seqs) == bool(prompts_fasta):
        raise click.UsageError("give prompts with --prompt SEQ (repeatable) or --prompts FASTA, one of the two")
    if temperature == 0 and top_k != 1:
        raise click.UsageError("--temperature 0 means greedy decoding: add --top-k 1, or give a temperature > 0")
    if resume and output in STDOUT:
        raise click.UsageError("--resume needs an output file (-o PATH), not stdout")
    if prompts_fasta:
        prompts = {r.id: r.sequence for r in read_fasta(prompts_fasta, uppercase=False, alphabet=None)}
    else:
        prompts = list(prompt_seqs)
    # validate before the (possibly slow) model load
    try:
        prompts = prepare_prompts(prompts)
    except InputError as err:
        if prompts_fasta:  # a bad file
            raise
        # a --prompt that is not DNA: a bad option value (exit 2), as a --region that does not parse
        raise click.BadParameter(str(err), param_hint="'--prompt'") from None
    check_generations(len(prompts), num_samples)
    context = published_context(model)
    if context is not None:  # a published model's context is known: no need to download and load it first
        check_context(context, prompts, n_tokens)
    fmt = output_format(output, fmt)
    check_output_path(output, inputs=(prompts_fasta,))
    if output not in STDOUT:
        check_fresh(output, resume)
    rows = min(batch_size, len(prompts) * num_samples)
    lm = load_model_cli(model, device, dtype, kernels,
                        state_tokens=rows * (max(len(p) for p in prompts.values()) + n_tokens))
    check_context(lm, prompts, n_tokens)  # before any progress bar
    # resolved here (after joining a distributed job) so that the recorded command reproduces the run
    seed = resolve_seed(seed, output, resume)
    command = full_command(lm, seed=seed, fmt=fmt)
    total = len(prompts) * num_samples * n_tokens
    header = {"n_tokens": n_tokens, "temperature": temperature, "top_k": top_k, "top_p": top_p, "model": model,
              "evo": __version__, "command": command}
    with hint_on_interrupt(output), progress_bar("generating", total, "tokens") as advance:
        generations, resumed = run_generate(lm, prompts, n_tokens, output, format=fmt, resume=resume,
                                            settings=run_settings(lm, {}), header=header, temperature=temperature,
                                            top_k=top_k, top_p=top_p, num_samples=num_samples, seed=seed,
                                            batch_size=batch_size, prefill_chunk=prefill_chunk, progress=advance)
    where = "stdout" if output in STDOUT else output
    echo(f"generated {len(generations):,} sequence(s) x {n_tokens:,} tokens (seed {seed}) to {where}"
         + (f"; {resumed:,} done before resuming" if resumed else ""))
