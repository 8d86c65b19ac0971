"""Zero-shot variant effects from a VCF and a reference FASTA (the Evo 2 BRCA1 method).

For each record: the REF window around the variant (``scoring.variant_windows``), one ALT window per
ALT allele, each scored as the mean log-likelihood of its positions 2..n (no BOS, both families);
``delta = alt_ll - ref_ll``. With ``strand="both"`` the reverse complements are scored too and each
score is the average of the two strands. The REF window of a site is scored once for all its ALT
alleles (and for every record at the same position), identical windows once, and the windows of a
site share the prefix before the variant (``scoring.score_windows``).

Not scored, with the reason as the row's status: ALT ``.`` (``no_alt``), ``*`` (``star_allele``),
symbolic (``symbolic``) and breakend (``breakend``) alleles, alleles with characters that are not
nucleotide codes (``invalid_allele``), records at POS 0, a telomere, which has no base
(``telomere``), records whose CHROM is not in the FASTA even after ``chr``-aliasing
(``contig_not_in_fasta``), windows with characters other than nucleotide codes
(``non_dna_reference``), one-base windows (``window_under_2_bases``), ALT windows equal to the REF
window base for base, whose delta is 0 whatever the model (``alt_window_equals_ref``: ALT spells REF,
or the change lies past the window's end) and, with ``skip_ref_mismatch``, records whose REF runs past the end of
their contig in the FASTA (``past_contig_end``) or differs from the FASTA (``ref_mismatch``;
without it either is an error naming the record). A VCF output carries the statuses too, as the
``Number=A`` INFO key ``EVO_STATUS`` on every record (``ok`` for a scored ALT, as in the table's
``status`` column; a record with ALT ``.`` gets the one value ``no_alt``).

A run with an output file persists its progress in ``<output>.evo-partial`` chunk by chunk (a chunk
is ``batch_size`` records, extended to the end of a position); ``resume=True`` continues from there,
with the same chunks, so the output is byte-identical to an uninterrupted run. Resuming checks that
the settings match: the VCF and FASTA (path, size, modification time), the model (config and
embedding weights), device, kernel backend, window, strand, regions, batch and chunk sizes, format
and the version of the stored results (``RESULTS``: a progress file whose statuses meant something
else is not resumed). The progress file is created when the first chunk completes; the output is
written at the end from the stored results, atomically, and the progress file is then removed.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import math
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from evo_cli.distributed import Share, checkpoint_rank
from evo_cli.errors import InputError, OptionError
from evo_cli.io.atomic import STDOUT, check_output_path, check_seekable, is_special, output_name_error
from evo_cli.io.fasta import DNA_CODES, STRANDS, reverse_complement
from evo_cli.io.partial import check_fresh, open_progress
from evo_cli.io.reference import Reference, contig_aliases
from evo_cli.io.tables import TABLE_EXTENSIONS, format_from_extension, table_writer
from evo_cli.io.vcf import (BREAKEND, INVALID, NO_ALT, STAR, SYMBOLIC, InfoField, Region, VcfReader, VcfRecord,
                            classify_alt, write_annotated_vcf)
from evo_cli.limits import check_batch_size
from evo_cli.runs import output_metadata, run_settings
from evo_cli.runtime import non_finite_error
from evo_cli.scoring import score_windows, variant_windows

log = logging.getLogger(__name__)

OK = "ok"
CONTIG_MISSING = "contig_not_in_fasta"
TELOMERE = "telomere"  # POS 0
PAST_END = "past_contig_end"  # REF runs past the end of the FASTA contig
REF_MISMATCH = "ref_mismatch"
NON_DNA = "non_dna_reference"
# a window scores its bases 2..n: one base (--window 2 at a contig's first base) has no score
SHORT_WINDOW = "window_under_2_bases"
# the ALT window is the REF window base for base (ALT spells REF, or the change lies past the window's end:
# an insertion after a contig's last base, a repeat unit added to a repeat running past the window), so its
# delta would be 0 whatever the model: not an effect estimate
SAME_WINDOW = "alt_window_equals_ref"
# every reason an ALT is not scored, in the order the README lists them
SKIP_STATUSES = (NO_ALT, STAR, SYMBOLIC, BREAKEND, INVALID, TELOMERE, CONTIG_MISSING, NON_DNA, SHORT_WINDOW, SAME_WINDOW,
                 PAST_END, REF_MISMATCH)
# what the progress file's results are: bumped when a stored status changes meaning (2: past_contig_end,
# earlier stored as ref_mismatch; 3: window_under_2_bases, earlier an error or, summed, a delta of 0;
# 4: alt_window_equals_ref, earlier ok with a delta of 0), so that a resumed run never mixes the two
RESULTS = "score-variants/4"
# the Evo 2 BRCA1 notebook's window
DEFAULT_WINDOW = 8192
OUTPUT_FORMATS = ("vcf", "vcf.gz", "tsv", "parquet")
_OUTPUT_EXTENSIONS = {".vcf": "vcf", ".vcf.gz": "vcf.gz", ".vcf.bgz": "vcf.gz", **TABLE_EXTENSIONS}
COLUMNS = [("chrom", "str"), ("pos", "int"), ("id", "str"), ("ref", "str"), ("alt", "str"), ("ref_ll", "float"),
           ("alt_ll", "float"), ("delta", "float"), ("status", "str")]
REDUCE_TEXT = {"mean": "mean log-likelihood", "sum": "summed log-likelihood"}


def info_fields(reduce: str = "mean") -> list[InfoField]:
    """The INFO fields written, described for the window score ``reduce`` (``scoring.REDUCTIONS``)."""
    what = REDUCE_TEXT[reduce]
    return [
        InfoField("EVO_DELTA", "A", "Float", f"Evo zero-shot variant effect: ALT window score minus REF window score "
                                             f"({what}; negative = less likely than the reference)"),
        InfoField("EVO_REF_LL", "1", "Float", f"Evo {what} of the REF window"),
        InfoField("EVO_ALT_LL", "A", "Float", f"Evo {what} of each ALT window"),
    ]


# score-variants only (mutagenize writes scored positions alone): why each ALT was or was not scored
STATUS_FIELD = InfoField("EVO_STATUS", "A", "String",
                         f"Evo score-variants status of each ALT: {OK} (scored) or why it was not scored "
                         f"({', '.join(SKIP_STATUSES)}); ALT . gets the one value {NO_ALT}")


def output_format(path: str | Path | None, format: str | None = None) -> str:
    """``vcf``, ``vcf.gz``, ``tsv`` or ``parquet`` from ``format`` or the output's extension."""
    fmt = format_from_extension(path, _OUTPUT_EXTENSIONS) if path is not None else None
    if format:
        if format not in OUTPUT_FORMATS:
            raise OptionError(f"unknown output format {format!r} (use {', '.join(OUTPUT_FORMATS)})")
        # plain text named .vcf.gz (or bgzip named .tsv) breaks whatever opens it by its name
        if fmt is not None and fmt != format:
            raise OptionError(f"--format {format} contradicts -o {path} (a {fmt} name): drop --format or rename "
                             f"the output")
        return format
    if fmt is None and is_special(path):  # /dev/stdout, a FIFO: stdout's format (VCF)
        return "vcf"
    if fmt is None:
        raise output_name_error(path, f"{path}: cannot tell the output format from the extension "
                          f"(use .vcf, .vcf.gz, .tsv or .parquet, or --format)")
    return fmt


@dataclass
class Summary:
    """Counts of one run, per ALT allele (a record with ALT '.' counts as one)."""

    records: int = 0
    variants: int = 0
    scored: int = 0
    skipped: Counter = field(default_factory=Counter)
    resumed: int = 0  # variants already done by an earlier, interrupted run
    seconds: float = 0.0
    indexed: bool | None = None  # .vcf.gz: whether the tabix index could be built


@dataclass
class _Site:
    """One record: per-ALT statuses and, per strand, the REF window and the ALT windows (None: not scored)."""

    record: VcfRecord
    statuses: list[str]
    windows: list[tuple[str, list[str | None]]]


def _statuses(rec: VcfRecord, reference: Reference, skip_ref_mismatch: bool) -> tuple[str | None, list[str]]:
    """(FASTA contig name or None, one status per ALT row) for ``rec``; raises on a REF mismatch."""
    if not rec.alts:
        return None, [NO_ALT]
    if rec.pos == 0:
        return None, [TELOMERE] * len(rec.alts)
    contig = reference.resolve(rec.chrom)
    if contig is None:
        return None, [CONTIG_MISSING] * len(rec.alts)
    statuses = [classify_alt(a) or OK for a in rec.alts]
    if OK not in statuses:
        return contig, statuses
    end = rec.start + len(rec.ref)
    if end > reference.length(contig):
        if not skip_ref_mismatch:
            raise InputError(f"{rec.chrom}:{rec.pos}: REF {_short(rec.ref)} runs past the end of contig {contig} "
                             f"({reference.length(contig):,} bp) in {reference.path.name}; check the reference "
                             f"build, or skip such records with --skip-ref-mismatch")
        return contig, [PAST_END] * len(rec.alts)
    found = reference.fetch(contig, rec.start, end)
    if rec.ref.upper() != found:
        if not skip_ref_mismatch:
            raise InputError(f"{rec.chrom}:{rec.pos}: REF {_short(rec.ref)} does not match the FASTA "
                             f"({reference.path.name} has {_short(found)}); check the reference build, or skip "
                             f"such records with --skip-ref-mismatch")
        return contig, [REF_MISMATCH] * len(rec.alts)
    return contig, statuses


def _short(s: str, n: int = 20) -> str:
    return s if len(s) <= n else f"{s[:n]}... ({len(s)} bp)"


def _site(rec: VcfRecord, reference: Reference, window: int, strand: str, skip_ref_mismatch: bool) -> _Site:
    contig, statuses = _statuses(rec, reference, skip_ref_mismatch)
    if OK not in statuses:
        return _Site(rec, statuses, [])
    ok = [i for i, s in enumerate(statuses) if s == OK]
    ref_window, alt_windows = variant_windows(lambda a, b: reference.fetch(contig, a, b), reference.length(contig),
                                              rec.start, rec.ref, [rec.alts[i] for i in ok], window)
    if len(ref_window) < 2:
        return _Site(rec, [SHORT_WINDOW if s == OK else s for s in statuses], [])
    if not set(ref_window).union(*alt_windows) <= DNA_CODES:
        return _Site(rec, [NON_DNA if s == OK else s for s in statuses], [])
    alts: list[str | None] = [None] * len(statuses)
    statuses = list(statuses)
    for i, w in zip(ok, alt_windows):
        if w == ref_window:
            statuses[i] = SAME_WINDOW
        else:
            alts[i] = w
    if OK not in statuses:
        return _Site(rec, statuses, [])
    windows = [(ref_window, alts)]
    if strand == "both":
        windows.append((reverse_complement(ref_window), [w and reverse_complement(w) for w in alts]))
    return _Site(rec, statuses, windows)


def _chunks(records: Iterable[VcfRecord], size: int) -> Iterator[list[VcfRecord]]:
    """Consecutive records, at least ``size`` per chunk, never splitting the records of one position
    (they share their REF window)."""
    chunk: list[VcfRecord] = []
    for rec in records:
        if len(chunk) >= size and (rec.chrom, rec.pos) != (chunk[-1].chrom, chunk[-1].pos):
            yield chunk
            chunk = []
        chunk.append(rec)
    if chunk:
        yield chunk


def _score_chunk(model, chunk: list[_Site], batch_size: int, share_prefix: bool, chunk_size: int | None,
                 reduce: str = "mean") -> list:
    """Per record ``[chrom, pos, statuses, ref_ll, [alt_ll or None]]``, scores averaged over strands."""
    groups: dict[str, list[str]] = {}  # the windows of every record with the same REF window, per strand
    for site in chunk:
        for ref_window, alts in site.windows:
            groups.setdefault(ref_window, [ref_window]).extend(w for w in alts if w is not None)
    scores = score_windows(model, groups.values(), batch_size, share_prefix, chunk_size, reduce)
    out = []
    for site in chunk:
        rec = site.record
        if not site.windows:
            out.append([rec.chrom, rec.pos, site.statuses, None, [None] * len(site.statuses)])
            continue
        ref_ll = sum(scores[r] for r, _ in site.windows) / len(site.windows)
        alt_ll = [None if site.statuses[i] != OK else sum(scores[alts[i]] for _, alts in site.windows) / len(site.windows)
                  for i in range(len(site.statuses))]
        if not all(math.isfinite(v) for v in [ref_ll, *alt_ll] if v is not None):
            raise non_finite_error(f"record {rec.chrom}:{rec.pos}", model.dtype)
        out.append([rec.chrom, rec.pos, site.statuses, ref_ll, alt_ll])
    return out


def check_output(output: str | Path | None, format: str | None = None, resume: bool = False,
                 inputs: tuple = ()) -> str:
    """The output format (stdout: VCF unless ``format``); errors for impossible combinations, for an
    output that cannot be written or is one of ``inputs`` (``io.atomic.check_output_path``) and for
    an interrupted run's progress beside ``output`` when not resuming."""
    if output in STDOUT:
        if resume:
            raise OptionError("resume needs an output file (progress is kept beside it)")
        fmt = format or "vcf"
        if output == "-" and fmt in ("parquet", "vcf.gz"):
            raise OptionError(f"{fmt} output needs a file name (-o PATH), not stdout")
        return output_format(None, fmt)
    fmt = output_format(output, format)
    if fmt == "parquet":
        check_seekable(output, "parquet")
    check_output_path(output, inputs)
    check_fresh(output, resume)
    return fmt


def check_run_options(model, window: int | None, strand: str, batch_size: int, reduce: str = "mean") -> int:
    """The window (None: ``DEFAULT_WINDOW``, or the model's context when that is shorter), after
    checking it, ``strand``, ``batch_size`` and ``reduce``; shared by score-variants and mutagenize."""
    if window is None:
        window = min(DEFAULT_WINDOW, model.config.max_seqlen)
    if window < 2:
        raise InputError(f"window must be at least 2 bases, not {window}")
    if strand not in STRANDS:
        raise InputError(f"strand must be one of {', '.join(STRANDS)}, not {strand!r}")
    check_batch_size(batch_size)
    if reduce not in REDUCE_TEXT:
        raise InputError(f"reduce must be one of {', '.join(REDUCE_TEXT)}, not {reduce!r}")
    if window > model.config.max_seqlen:
        log.warning("warning: window %d is longer than the model's context (%d)", window, model.config.max_seqlen)
    return window


def _first(names: Iterable[str], n: int = 3) -> str:
    names = list(names)
    return ", ".join(names[:n]) + (f" ... ({len(names)} in all)" if len(names) > n else "") if names else "none"


def check_variants(vcf: str | Path, fasta: str | Path, regions: Iterable[Region] | None = None,
                   skip_ref_mismatch: bool = False) -> int:
    """Read every selected record once, check REF against the FASTA (raising on a mismatch or a REF
    past its contig's end unless ``skip_ref_mismatch``) and return the number of variants (ALT
    alleles; ALT '.' counts one).

    Raises when records were selected but none has its contig in the FASTA (naming the first contigs
    of both), and for a region on a contig that neither the VCF header nor the FASTA knows; logs a
    warning for a region that holds no record."""
    regions = list(regions or [])
    reader = VcfReader(vcf, regions)
    with Reference(fasta) as reference:
        _check_region_contigs(reader, reference, regions)
        total = 0
        starts: dict[str, list[int]] = {}  # per VCF contig, in file order: the record starts
        for rec in reader:
            total += len(_statuses(rec, reference, skip_ref_mismatch)[1])
            starts.setdefault(rec.chrom, []).append(rec.start)
        if reader.is_bcf:  # a BCF record that cannot be written out as text fails now, not after the scoring
            for _ in reader.text()[1]:
                pass
        if starts and all(reference.resolve(c) is None for c in starts):
            raise InputError(f"no contig of {reader.path.name} is in {reference.path.name}: the VCF has "
                             f"{_first(starts)}, the FASTA has {_first(reference.contigs)}; check the "
                             f"reference build")
    for found in starts.values():
        found.sort()
    empty = [str(r) for r in regions if not any(_holds(found, r) for c, found in starts.items() if _same_contig(r.contig, c))]
    if len(empty) == 1:
        log.warning("warning: region %s holds no record of %s", empty[0], reader.path.name)
    elif empty:  # one line, however long the BED file
        log.warning("warning: %d regions hold no record of %s: %s", len(empty), reader.path.name, _first(empty))
    return total


def _check_region_contigs(reader: VcfReader, reference: Reference, regions: list[Region]) -> None:
    """Raise for a region on a contig that neither the VCF header nor the FASTA knows."""
    header, _ = reader.text()  # any VCF the reader takes, plain gzip included
    declared = (re.match(r"##contig=<ID=([^,>]+)", line) for line in header)
    header_contigs = list(dict.fromkeys(m.group(1) for m in declared if m))
    known = {name for c in header_contigs for name in (c, *contig_aliases(c))}
    for region in regions:
        if region.contig not in known and reference.resolve(region.contig) is None:
            raise InputError(f"region {region}: contig {region.contig} is in neither the VCF header "
                             f"({_first(header_contigs)}) nor {reference.path.name} ({_first(reference.contigs)})")


def _same_contig(a: str, b: str) -> bool:
    return a == b or b in contig_aliases(a)


def _holds(starts: list[int], region: Region) -> bool:
    """Whether sorted record ``starts`` have one inside ``region`` (a binary search: a BED file of many
    regions is checked in O(records log records + regions log records), not records x regions)."""
    i = bisect.bisect_left(starts, region.start)
    return i < len(starts) and starts[i] < region.end


def run_score_variants(
    model,
    vcf: str | Path,
    fasta: str | Path,
    output: str | Path | None,
    *,
    format: str | None = None,
    window: int | None = None,
    strand: str = "forward",
    regions: Iterable[Region] | None = None,
    batch_size: int = 8,
    skip_ref_mismatch: bool = False,
    share_prefix: bool = True,
    chunk_size: int | None = None,
    reduce: str = "mean",
    resume: bool = False,
    model_name: str | None = None,
    command: str | None = None,
    progress: Callable[[int], None] | None = None,
    rows: list | None = None,
) -> Summary:
    """Score every selected record and write ``output`` (format from ``format`` or the extension;
    ``-``: stdout, None: no output); see the module docstring. ``rows``: a list that receives one
    tuple per output row (``COLUMNS``); required when ``output`` is None.
    ``progress(n)``: called with the number of variants finished. ``window``: None means
    ``DEFAULT_WINDOW``, or the model's context when that is shorter. ``reduce``: a window's score is
    the mean (default, the Evo 2 method) or the sum (the whole-window log-likelihood; deltas then are
    log-likelihood ratios) of its per-base log-likelihoods. Returns the run's Summary."""
    window = check_run_options(model, window, strand, batch_size, reduce)
    regions = list(regions or [])
    fmt = check_output(output, format, resume, inputs=(vcf, fasta))
    t0 = time.perf_counter()
    reader = VcfReader(vcf, regions)
    with Reference(fasta) as reference:
        _check_region_contigs(reader, reference, regions)
    name = model_name or model.config.name or "unnamed"
    info = output_metadata(model, name, command, window=window, strand=strand, reduce=reduce,
                           score=f"{REDUCE_TEXT[reduce]} of window positions 2..n (no BOS); delta = ALT - REF")
    settings = run_settings(model, {"vcf": vcf, "fasta": fasta}, window=window, strand=strand,
                            regions=[str(r) for r in regions], batch_size=batch_size,
                            skip_ref_mismatch=skip_ref_mismatch, share_prefix=share_prefix, chunk_size=chunk_size,
                            format=fmt, model_name=name, reduce=reduce, results=RESULTS)
    store = open_progress(output, settings, resume, checkpoint_rank())
    with store or contextlib.nullcontext():
        summary = _run(model, reader, fasta, output, fmt, store, info, window, strand, batch_size, skip_ref_mismatch,
                       share_prefix, chunk_size, reduce, progress, rows)
    summary.seconds = time.perf_counter() - t0
    return summary


def _run(model, reader, fasta, output, fmt, store, info, window, strand, batch_size, skip_ref_mismatch, share_prefix,
         chunk_size, reduce, progress, rows) -> Summary:
    """Score the chunks not done yet into ``store``, then write the output from all of them; without a
    store (stdout, a pipe, no output) write each chunk as it is scored."""
    summary = Summary()
    share = Share(store, progress)
    contigs: dict[str, int | None] = {}  # the records' contigs, with their FASTA lengths, for the VCF header
    with Reference(fasta) as reference:
        scored = _scored(model, reader, reference, store, share, summary, contigs, window, strand, batch_size,
                         skip_ref_mismatch, share_prefix, chunk_size, reduce)
        if store is None:
            # a single process keeping no progress: streaming bounds the memory however long the VCF
            # (held whole, a ClinVar-size run to stdout took ~0.5 kB per variant); the VCF header
            # comes first, so its contigs are read in a pass of their own
            if fmt in ("vcf", "vcf.gz"):
                for rec in reader:
                    _add_contig(contigs, rec.chrom, reference)
            _write(output, fmt, reader, (r for chunk in scored for r in chunk), summary, rows, info, reduce, contigs)
            share.finish()
            return summary
        for _ in scored:
            pass
    if not share.finish():
        return summary  # another rank writes the output
    _write(output, fmt, reader, (r for chunk in store.chunks() for r in chunk), summary, rows, info, reduce, contigs)
    return summary


def _add_contig(contigs: dict[str, int | None], chrom: str, reference: Reference) -> None:
    if chrom not in contigs:
        found = reference.resolve(chrom)
        contigs[chrom] = reference.length(found) if found else None


def _scored(model, reader, reference, store, share, summary, contigs, window, strand, batch_size, skip_ref_mismatch,
            share_prefix, chunk_size, reduce) -> Iterator[list]:
    """The results of each chunk this process scores, in order, appended to ``store`` when there is
    one; counts resumed variants into ``summary`` and every record's contig into ``contigs``."""
    for i, chunk in enumerate(_chunks(reader, batch_size)):
        for rec in chunk:
            _add_contig(contigs, rec.chrom, reference)
        n = sum(len(rec.alts) or 1 for rec in chunk)
        if store is not None and i in store:
            summary.resumed += n
        if share.take(i, n):
            sites = [_site(rec, reference, window, strand, skip_ref_mismatch) for rec in chunk]
            results = _score_chunk(model, sites, batch_size, share_prefix, chunk_size, reduce)
            if store is not None:
                store.append(i, results)
            share.progress(n)
            yield results


def _write(output, fmt, reader, results, summary, rows, info, reduce, contigs) -> None:
    """Write ``results`` (per record, in VCF order) as ``output`` in ``fmt``, or into ``rows`` when
    ``output`` is None."""
    if output is None:
        rows.extend(_rows(reader, results, summary))
    elif fmt in ("vcf", "vcf.gz"):
        header = [(f"evo_{k}", v) for k, v in info.items() if v is not None]
        summary.indexed = write_annotated_vcf(output, reader, [*info_fields(reduce), STATUS_FIELD], header,
                                              _annotations(results, summary, rows, reader), fmt == "vcf.gz",
                                              contigs)
    else:
        with table_writer(output, COLUMNS, fmt, metadata=info) as write:
            for row in _rows(reader, results, summary):
                write([row])
                if rows is not None:
                    rows.append(row)


def _paired(reader: VcfReader, results: Iterable[list]) -> Iterator[tuple[VcfRecord, list]]:
    """``(record, result)`` pairs, failing when the VCF no longer matches the results (another record,
    another number of ALT alleles, or another number of records)."""
    end = object()
    records = iter(reader)
    for result in results:
        rec = next(records, end)
        chrom, pos, statuses = result[:3]
        if rec is end:
            raise InputError(f"{reader.path}: ends before the scored record {chrom}:{pos}; "
                             f"was the VCF changed during the run?")
        if (chrom, pos) != (rec.chrom, rec.pos) or len(statuses) != len(rec.alts or (".",)):
            raise InputError(f"{reader.path}: record {rec.chrom}:{rec.pos} does not match the scored record "
                             f"{chrom}:{pos}; was the VCF changed during the run?")
        yield rec, result
    rec = next(records, end)
    if rec is not end:
        raise InputError(f"{reader.path}: record {rec.chrom}:{rec.pos} was not scored; was the VCF changed "
                         f"during the run?")


def _rows(reader: VcfReader, results: Iterator[list], summary: Summary) -> Iterator[tuple]:
    """One output row per ALT allele (``COLUMNS``), counting into ``summary``."""
    for rec, (chrom, pos, statuses, ref_ll, alt_ll) in _paired(reader, results):
        summary.records += 1
        for alt, status, a in zip(rec.alts or (".",), statuses, alt_ll, strict=True):
            summary.variants += 1
            if status == OK:
                summary.scored += 1
                yield chrom, pos, rec.id, rec.ref, alt, ref_ll, a, a - ref_ll, status
            else:
                summary.skipped[status] += 1
                yield chrom, pos, rec.id, rec.ref, alt, None, None, None, status


def _annotations(results: Iterator[list], summary: Summary, rows: list | None, reader: VcfReader):
    """``(chrom, pos, INFO values)`` per record for the VCF writer, ``EVO_STATUS`` on every record and
    the scores on those with a scored ALT; also fills ``rows`` when asked."""
    pairs = _paired(reader, results) if rows is not None else ((None, r) for r in results)
    for rec, (chrom, pos, statuses, ref_ll, alt_ll) in pairs:
        summary.records += 1
        summary.variants += len(statuses)
        summary.scored += statuses.count(OK)
        summary.skipped.update(s for s in statuses if s != OK)
        if rows is not None:
            rows.extend((chrom, pos, rec.id, rec.ref, alt, ref_ll if s == OK else None, a,
                         a - ref_ll if s == OK else None, s)
                        for alt, s, a in zip(rec.alts or (".",), statuses, alt_ll, strict=True))
        if ref_ll is None:
            yield chrom, pos, {"EVO_STATUS": tuple(statuses)}
        else:
            yield chrom, pos, {"EVO_DELTA": tuple(None if a is None else a - ref_ll for a in alt_ll),
                               "EVO_REF_LL": ref_ll, "EVO_ALT_LL": tuple(alt_ll), "EVO_STATUS": tuple(statuses)}


def score_variants(
    model,
    vcf: str | Path,
    fasta: str | Path,
    output: str | Path | None = None,
    *,
    window: int | None = None,
    strand: str = "forward",
    regions: Iterable[Region | str] | None = None,
    batch_size: int = 8,
    skip_ref_mismatch: bool = False,
    share_prefix: bool = True,
    resume: bool = False,
    format: str | None = None,
    chunk_size: int | None = None,
    reduce: str = "mean",
):
    """Zero-shot variant effects: one row per ALT allele of ``vcf``, scored against ``fasta``.

    model: a loaded model, or a name/path for ``load_model``. regions: ``Region`` objects or
    ``"chr:start-end"`` strings (1-based, inclusive). output: also write a VCF/TSV/Parquet file
    (by extension or ``format``). Returns a pandas DataFrame with columns ``chrom, pos`` (1-based),
    ``id, ref, alt, ref_ll, alt_ll, delta, status`` (``ok``, or why the ALT was not scored: one of
    ``SKIP_STATUSES``, its scores then None); ``df.attrs["summary"]`` holds the counts, skipped ALTs by
    status. A VCF output carries the status as INFO ``EVO_STATUS`` on every record.
    """
    import pandas as pd

    from evo_cli.io.vcf import parse_region

    if isinstance(model, (str, Path)):
        from evo_cli import load_model

        model = load_model(model)
    regions = [parse_region(r) if isinstance(r, str) else r for r in regions or []]
    rows: list[tuple] = []
    summary = run_score_variants(model, vcf, fasta, output, format=format, window=window, strand=strand,
                                 regions=regions, batch_size=batch_size, skip_ref_mismatch=skip_ref_mismatch,
                                 share_prefix=share_prefix, chunk_size=chunk_size, reduce=reduce, resume=resume,
                                 rows=rows)
    df = pd.DataFrame(rows, columns=[c for c, _ in COLUMNS])
    df.attrs["summary"] = {"records": summary.records, "variants": summary.variants, "scored": summary.scored,
                           "skipped": dict(summary.skipped)}
    return df
