"""In-silico saturation mutagenesis: every position of a region x the three other bases.

Each SNV is scored exactly as ``evo score-variants`` scores it (``variants.py``): the REF window
around the position (``scoring.variant_windows``, the same ``window``), one ALT window per base,
the mean (or, with ``reduce="sum"``, summed) log-likelihood of window positions 2..n,
``delta = alt_ll - ref_ll``, and with
``strand="both"`` the average with the reverse-complement windows. Positions whose REF base is not
A, C, G or T, whose window holds characters other than nucleotide codes, or whose window is a single
base (nothing to score), are skipped (counted in the summary, absent from the output).

Sharing: the work of a position is its REF window and three ALT windows that share everything
before the position; ``scoring.score_windows`` runs that prefix once and forks its state (what
``score-variants`` does for a multi-allelic site). Across positions, windows are grouped by their
REF window: where windows coincide (clipped at a contig end, or a record shorter than the window,
as designed constructs are), the REF window is scored once for all those positions and their ALT
windows share the prefix up to the first of them. Windows of interior positions start at different
bases, so no model state is common to them: their scores are those of score-variants only if each
is run from its own start, and the REF window plus three ALT suffixes is the least work that gives
them (benchmarks/README.md has the measurement).

A run with an output file keeps its progress in ``<output>.evo-partial``, ``batch_size`` positions
per chunk; ``resume=True`` continues it and writes the same bytes as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from evo_cli.distributed import Share, checkpoint_rank
from evo_cli.errors import InputError, OptionError
from evo_cli.io.atomic import (STDOUT, check_output_path, check_seekable, is_special, output_name_error,
                                same_destination)
from evo_cli.io.fasta import DNA_CODES, reverse_complement
from evo_cli.io.partial import check_fresh, open_progress
from evo_cli.io.reference import Reference
from evo_cli.io.tables import TABLE_EXTENSIONS, format_from_extension, table_writer
from evo_cli.io.tracks import check_track_output, write_track
from evo_cli.io.vcf import Region, write_bgzipped_vcf
from evo_cli.runs import output_metadata, run_settings
from evo_cli.runtime import non_finite_error
from evo_cli.scoring import score_windows, variant_windows
from evo_cli.variants import REDUCE_TEXT, SHORT_WINDOW, check_run_options, info_fields

BASES = "ACGT"
COLUMNS = [("chrom", "str"), ("pos", "int"), ("ref", "str"), ("alt", "str"), ("ref_ll", "float"),
           ("alt_ll", "float"), ("delta", "float")]
OUTPUT_FORMATS = ("tsv", "parquet", "vcf.gz")
_OUTPUT_EXTENSIONS = {".vcf.gz": "vcf.gz", ".vcf.bgz": "vcf.gz", **TABLE_EXTENSIONS}
# VCF header line that marks a mutagenesis VCF (``evo plot`` draws it as a heatmap)
VCF_MARK = ("evo_output", "mutagenize")


@dataclass(frozen=True)
class Target:
    """``[start, end)`` (0-based) of FASTA contig ``contig``: the positions to mutate."""

    contig: str
    start: int
    end: int

    def __str__(self) -> str:
        return f"{self.contig}:{self.start + 1}-{self.end}"


@dataclass
class Summary:
    positions: int = 0  # positions in the targets
    scored: int = 0  # positions scored (3 variants each)
    skipped: dict = field(default_factory=dict)  # reason -> positions
    resumed: int = 0  # positions done by an earlier, interrupted run
    resumed_scored: int = 0  # of those, the positions scored (not skipped)
    seconds: float = 0.0
    indexed: bool | None = None

    @property
    def variants(self) -> int:
        return 3 * self.scored


def output_format(path: str | Path | None, format: str | None = None) -> str:
    """``tsv``, ``parquet`` or ``vcf.gz`` from ``format`` or the extension (stdout: TSV)."""
    if format:
        if format not in OUTPUT_FORMATS:
            raise OptionError(f"unknown output format {format!r} (use {', '.join(OUTPUT_FORMATS)})")
        named = None if path in STDOUT else format_from_extension(path, _OUTPUT_EXTENSIONS)
        if named is not None and named != format:  # a table named .vcf.gz breaks whatever opens it by its name
            raise OptionError(f"--format {format} contradicts -o {path} (a {named} name): drop --format or rename "
                             f"the output")
        fmt = format
    elif path in STDOUT:
        fmt = "tsv"
    else:
        fmt = format_from_extension(path, _OUTPUT_EXTENSIONS)
        if fmt is None and is_special(path):  # /dev/stdout, a FIFO: stdout's format
            fmt = "tsv"
        if fmt is None:
            raise output_name_error(path, f"{path}: cannot tell the output format from the extension "
                              f"(use .tsv, .parquet or .vcf.gz, or --format)")
    if path in STDOUT and fmt != "tsv":
        raise OptionError(f"{fmt} output needs a file name (-o PATH), not stdout")
    return fmt


def check_outputs(output: str | Path | None, format: str | None = None, *, plot: str | Path | None = None,
                  bedgraph: str | Path | None = None, resume: bool = False, inputs: tuple = ()) -> str | None:
    """Every check of a run's outputs that needs no model, so that a bad one fails in seconds: the
    output format (None for no output file), each location (``check_output_path``; none may be one of
    ``inputs``), an interrupted run's progress when not resuming, the plot and track extensions."""
    if resume and output in STDOUT:
        raise OptionError("resume needs an output file (progress is kept beside it)")
    fmt = output_format(output, format) if output is not None else None
    named = [(o, p) for o, p in (("-o", output), ("--plot", plot), ("--bedgraph", bedgraph)) if p is not None]
    for i, (opt, path) in enumerate(named):
        for other, other_path in named[i + 1:]:
            # possible with --format: -o x.png --format tsv --plot x.png wrote the table over the figure
            if same_destination(path, other_path):
                raise OptionError(f"{other} {other_path} and {opt} {path} are both one output: give them different "
                                  f"files")
    if fmt == "parquet":
        check_seekable(output, "parquet")
    for path in (output, plot, bedgraph):
        check_output_path(path, inputs)
    if output not in STDOUT:
        check_fresh(output, resume)
    if plot is not None:
        from evo_cli.plots import check_plot_output

        check_plot_output(plot)
    if bedgraph is not None:
        check_track_output(bedgraph)
    return fmt


def resolve_targets(reference: Reference, regions: Iterable[Region] = (), records: Iterable[str] = ()) -> list[Target]:
    """The targets of ``regions`` (1-based inclusive spans as ``Region``, BED intervals) and whole
    FASTA ``records``: checked against the FASTA, sorted, overlaps merged. A region that runs past
    its contig, or names a contig or record the FASTA lacks, is an InputError."""
    spans: list[tuple[str, int, int]] = []
    for r in regions:
        contig = reference.resolve(r.contig)
        if contig is None:
            raise InputError(f"region {r}: contig {r.contig!r} is not in {reference.path.name}"
                             f"{_known(reference)}")
        n = reference.length(contig)
        end = n if r.end >= 1 << 62 else r.end
        if r.start >= n or end > n:
            raise InputError(f"region {r}: outside contig {contig} of {reference.path.name} ({n:,} bp)")
        if end <= r.start:
            raise InputError(f"region {r}: empty")
        spans.append((contig, r.start, end))
    for name in records:
        if name not in reference.contigs:
            # the FASTA index leaves out empty records, so one may be in the file with no bases
            raise InputError(f"record {name!r} is not in {reference.path.name} or has no bases{_known(reference)}")
        spans.append((name, 0, reference.length(name)))
    if not spans:
        raise OptionError("no positions to mutate: give --region, --regions BED or --record")
    order = {c: i for i, c in enumerate(reference.contigs)}
    merged: list[list] = []
    for contig, s, e in sorted(spans, key=lambda t: (order[t[0]], t[1])):
        if merged and merged[-1][0] == contig and s <= merged[-1][2]:
            merged[-1][2] = max(merged[-1][2], e)
        else:
            merged.append([contig, s, e])
    return [Target(*m) for m in merged]


def _known(reference: Reference) -> str:
    names = list(reference.contigs)
    return f" (it has {', '.join(names[:5])}{', ...' if len(names) > 5 else ''})"


def _positions(reference: Reference, targets: list[Target]) -> Iterator[tuple[str, int, str]]:
    """``(contig, 0-based position, REF base)`` of every target position."""
    for t in targets:
        seq = reference.fetch(t.contig, t.start, t.end)
        for i, base in enumerate(seq):
            yield t.contig, t.start + i, base


# at most this many positions in one run: each costs 3 variants and about 2.5 windows of the model
# (days for a 7B model at 1 Mb), and the run holds one result per position in memory at its end; a
# whole genome or chromosome given by its name alone (--region chr1, --record) is refused in a second
MAX_POSITIONS = 1_000_000


def check_targets(reference: Reference, targets: list[Target]) -> int:
    """The number of positions; an InputError when there are more than ``MAX_POSITIONS`` or no
    position has an A, C, G or T."""
    total = sum(t.end - t.start for t in targets)
    if total > MAX_POSITIONS:
        where = ", ".join(map(str, targets[:3])) + (", ..." if len(targets) > 3 else "")
        raise InputError(f"{where}: {total:,} positions to mutate, more than the {MAX_POSITIONS:,} of one run (each "
                         f"is 3 variants and about 2.5 windows of the model): give shorter regions, or split them "
                         f"over several runs")
    mutable = 0
    for t in targets:
        seq = reference.fetch(t.contig, t.start, t.end)
        mutable += sum(seq.count(b) for b in BASES)
    if not mutable:
        where = ", ".join(map(str, targets[:3])) + (", ..." if len(targets) > 3 else "")
        raise InputError(f"{where}: no A, C, G or T to mutate (only N or other codes)")
    return total


def check_inputs(fasta: str | Path, regions: Iterable[Region] = (), records: Iterable[str] = ()) -> int:
    """Resolve and check the targets before a model is loaded; returns the number of positions."""
    with Reference(fasta) as reference:
        return check_targets(reference, resolve_targets(reference, regions, records))


def _site_windows(reference: Reference, contig: str, start: int, ref: str, window: int,
                  strand: str) -> list[tuple[str, list[str]]] | str:
    """Per strand ``(REF window, [3 ALT windows])`` as score-variants builds them, or the skip reason."""
    if ref not in BASES:
        return "non_acgt_reference_base"
    alts = [b for b in BASES if b != ref]
    ref_window, alt_windows = variant_windows(lambda a, b: reference.fetch(contig, a, b), reference.length(contig),
                                              start, ref, alts, window)
    if len(ref_window) < 2:
        # a window scores bases 2..n: one base (a 1-base record, or --window 2 at a contig start)
        # has no score, not a mean of NaN or a sum of 0
        return SHORT_WINDOW
    if not set(ref_window).union(*alt_windows) <= DNA_CODES:
        return "non_dna_reference"
    windows = [(ref_window, alt_windows)]
    if strand == "both":
        windows.append((reverse_complement(ref_window), [reverse_complement(w) for w in alt_windows]))
    return windows


def _score_chunk(model, reference, chunk, window, strand, batch_size, share_prefix, chunk_size, reduce) -> list:
    """Per position ``[contig, pos (1-based), ref, ref_ll, [3 alt_ll]]`` or ``[..., reason, None]``."""
    sites = [(c, s, b, _site_windows(reference, c, s, b, window, strand)) for c, s, b in chunk]
    groups: dict[str, list[str]] = {}  # every window with the same REF window, per strand
    for *_, windows in sites:
        if not isinstance(windows, str):
            for ref_window, alts in windows:
                groups.setdefault(ref_window, [ref_window]).extend(alts)
    scores = score_windows(model, groups.values(), batch_size, share_prefix, chunk_size, reduce)
    out = []
    for contig, start, ref, windows in sites:
        if isinstance(windows, str):
            out.append([contig, start + 1, ref, windows, None])
            continue
        ref_ll = sum(scores[r] for r, _ in windows) / len(windows)
        alt_ll = [sum(scores[alts[i]] for _, alts in windows) / len(windows) for i in range(3)]
        if not all(math.isfinite(v) for v in [ref_ll, *alt_ll]):
            raise non_finite_error(f"position {contig}:{start + 1}", model.dtype)
        out.append([contig, start + 1, ref, ref_ll, alt_ll])
    return out


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def run_mutagenize(
    model,
    fasta: str | Path,
    output: str | Path | None,
    *,
    regions: Iterable[Region] = (),
    records: Iterable[str] = (),
    format: str | None = None,
    window: int | None = None,
    strand: str = "forward",
    reduce: str = "mean",
    batch_size: int = 8,
    share_prefix: bool = True,
    chunk_size: int | None = None,
    resume: bool = False,
    bedgraph: str | Path | None = None,
    plot: str | Path | None = None,
    model_name: str | None = None,
    command: str | None = None,
    progress: Callable[[int], None] | None = None,
    rows: list | None = None,
) -> Summary:
    """Score every SNV of the targets (``regions``, whole FASTA ``records``) and write ``output``
    (``COLUMNS`` as TSV/Parquet, or a bgzipped, indexed VCF with one record per position and the
    score-variants INFO keys; ``-``: TSV on stdout; None: no file, rows only). ``bedgraph``: also a
    track of each position's mean delta (.bedGraph or .bw); ``plot``: also a heatmap
    (``plots.plot_mutagenesis``; .png, .svg, .pdf or .html). ``rows``: receives the output rows.
    ``progress(n)``: called with positions finished. ``window``: None means ``DEFAULT_WINDOW`` or the
    model's context when shorter, as in score-variants. ``reduce``: window scores are mean (default)
    or summed per-base log-likelihoods, as in score-variants."""
    window = check_run_options(model, window, strand, batch_size, reduce)
    fmt = check_outputs(output, format, plot=plot, bedgraph=bedgraph, resume=resume, inputs=(fasta,))
    if plot is not None:
        rows = [] if rows is None else rows
    t0 = time.perf_counter()
    summary = Summary()
    with Reference(fasta) as reference:
        targets = resolve_targets(reference, regions, records)
        summary.positions = check_targets(reference, targets)
        # the record every evo output keeps (``runs.output_metadata``), as score-variants writes it
        info = output_metadata(model, model_name or model.config.name or "unnamed", command, window=window,
                               strand=strand, reduce=reduce,
                               score=f"{REDUCE_TEXT[reduce]} of window positions 2..n (no BOS); delta = ALT - REF",
                               targets=" ".join(map(str, targets)))
        settings = run_settings(model, {"fasta": fasta}, window=window, strand=strand,
                                targets=[str(t) for t in targets], batch_size=batch_size, share_prefix=share_prefix,
                                chunk_size=chunk_size, format=fmt, model_name=info["model"], kind="mutagenize",
                                reduce=reduce)
        store = open_progress(output, settings, resume, checkpoint_rank())
        memory: list[list] = []
        with store or contextlib.nullcontext():
            share = Share(store, progress)
            for i, chunk in enumerate(_chunks(_positions(reference, targets), batch_size)):
                if store is not None and i in store:
                    summary.resumed += len(chunk)
                    summary.resumed_scored += sum(r[4] is not None for r in store.get(i))
                if share.take(i, len(chunk)):
                    results = _score_chunk(model, reference, chunk, window, strand, batch_size, share_prefix,
                                           chunk_size, reduce)
                    if store is not None:
                        store.append(i, results)
                    else:
                        memory.append(results)
                    share.progress(len(chunk))
            if not share.finish():
                summary.seconds = time.perf_counter() - t0
                return summary  # another rank writes the output
            results = [r for c in (store.chunks() if store is not None else memory) for r in c]
            if len(results) != summary.positions:
                raise InputError(f"{store.path}: holds {len(results)} positions, the targets have "
                                 f"{summary.positions}; was the FASTA changed? delete the file to start over")
            _count(results, summary)
            if rows is not None:
                rows.extend(table_rows(results))
            if plot is not None:
                from evo_cli.plots import save

                fig, table = _draw(rows, info, targets, window, strand)
                save(fig, plot, table)
            if bedgraph is not None:
                write_track(bedgraph, ((c, p - 1, sum(a) / 3 - r) for c, p, _, r, a in results if a is not None),
                            {t.contig: reference.length(t.contig) for t in targets},
                            name="evo mean delta", description=f"{info['model']} mean SNV delta, W={window}")
            # the output last: where it exists, every file of the run was written (a failed plot or
            # track leaves none, and the progress file for --resume)
            if fmt == "vcf.gz":
                summary.indexed = _write_vcf(output, results, info, reference, targets, reduce)
            elif fmt is not None:  # None: no output file, rows only
                with table_writer(output, COLUMNS, fmt, metadata=info) as write:
                    write(table_rows(results))
    summary.seconds = time.perf_counter() - t0
    return summary


def _draw(rows: list, info: dict, targets: list[Target], window: int, strand: str) -> tuple:
    """``(Figure, table)``: the heatmap of ``rows`` and the table an HTML figure embeds."""
    import pandas as pd

    from evo_cli.plots import plot_mutagenesis

    table = pd.DataFrame(rows, columns=[c for c, _ in COLUMNS])
    title = (f"{info['model']}: {', '.join(map(str, targets[:3]))}{' ...' if len(targets) > 3 else ''} "
             f"(W = {window}, {strand})")
    return plot_mutagenesis(table, title=title), table


def _count(results: list, summary: Summary) -> None:
    for _, _, _, ref_ll, alt_ll in results:
        if alt_ll is None:
            summary.skipped[ref_ll] = summary.skipped.get(ref_ll, 0) + 1
        else:
            summary.scored += 1


def table_rows(results: Iterable[list]) -> Iterator[tuple]:
    """``COLUMNS`` rows, three per scored position (ALT in A, C, G, T order)."""
    for contig, pos, ref, ref_ll, alt_ll in results:
        if alt_ll is None:
            continue
        for alt, a in zip((b for b in BASES if b != ref), alt_ll):
            yield contig, pos, ref, alt, ref_ll, a, a - ref_ll


def _write_vcf(path, results, info, reference, targets, reduce) -> bool:
    """One record per scored position, ALT = the three other bases, bgzipped and tabix-indexed."""
    contigs = dict.fromkeys(t.contig for t in targets)
    header = ["##fileformat=VCFv4.2", f"##{VCF_MARK[0]}={VCF_MARK[1]}",
              *(f"##contig=<ID={c},length={reference.length(c)}>" for c in contigs),
              *(f.header_line() for f in info_fields(reduce)),
              *(f"##evo_{k}={' '.join(str(v).split())}" for k, v in info.items() if v is not None),
              "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO"]

    def num(v: float) -> str:
        return f"{v:.7g}"  # readers hold VCF Floats as float32, as score-variants writes them

    def text() -> Iterator[str]:
        yield "\n".join(header) + "\n"
        for contig, pos, ref, ref_ll, alt_ll in results:
            if alt_ll is None:
                continue
            alts = [b for b in BASES if b != ref]
            fields = (f"EVO_DELTA={','.join(num(a - ref_ll) for a in alt_ll)};EVO_REF_LL={num(ref_ll)};"
                      f"EVO_ALT_LL={','.join(num(a) for a in alt_ll)}")
            yield f"{contig}\t{pos}\t.\t{ref}\t{','.join(alts)}\t.\t.\t{fields}\n"

    return write_bgzipped_vcf(path, text())


def mutagenize(
    model,
    fasta: str | Path,
    region: str | Iterable[str] | None = None,
    *,
    records: Iterable[str] = (),
    output: str | Path | None = None,
    window: int | None = None,
    strand: str = "forward",
    reduce: str = "mean",
    batch_size: int = 8,
    share_prefix: bool = True,
    chunk_size: int | None = None,
    resume: bool = False,
    bedgraph: str | Path | None = None,
):
    """Saturation mutagenesis of ``region`` (``"chr:start-end"``, 1-based inclusive, or several) and
    whole FASTA ``records``, at most ``MAX_POSITIONS`` positions in all. model: a loaded model or a name/path for ``load_model``. Returns a pandas
    DataFrame with ``COLUMNS`` (three rows per position); ``df.attrs["summary"]`` holds the counts."""
    import pandas as pd

    from evo_cli.io.vcf import parse_region

    if isinstance(model, (str, Path)):
        from evo_cli import load_model

        model = load_model(model)
    texts = [region] if isinstance(region, str) else list(region or [])
    rows: list[tuple] = []
    summary = run_mutagenize(model, fasta, output, regions=[parse_region(t) for t in texts], records=records,
                             window=window, strand=strand, reduce=reduce, batch_size=batch_size,
                             share_prefix=share_prefix, chunk_size=chunk_size, resume=resume, bedgraph=bedgraph,
                             rows=rows)
    df = pd.DataFrame(rows, columns=[c for c, _ in COLUMNS])
    df.attrs["summary"] = {"positions": summary.positions, "scored": summary.scored, "skipped": dict(summary.skipped)}
    return df
