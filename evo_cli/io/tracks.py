"""Genome-browser tracks: bedGraph (text) and bigWig (binary, through pyBigWig). No torch here.

Both hold one value per base: ``(chrom, start, value)`` with ``start`` 0-based, written as the
interval ``[start, start + 1)``. IGV and the UCSC browser load either; bigWig also serves large
regions without reading the whole file. Outputs appear only when complete (``io/atomic.py``).
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Iterable, Iterator

from evo_cli.errors import InputError, OptionError

from .atomic import atomic_open_text, atomic_path, check_output_path, check_seekable

BEDGRAPH_EXTENSIONS = (".bedgraph", ".bedgraph.gz", ".bg")
BIGWIG_EXTENSIONS = (".bw", ".bigwig")
BIGWIG_EXTRA = 'bigWig output needs pyBigWig: pip install "evo-cli[bigwig]"'


def track_format(path: str | Path) -> str:
    """``bedgraph`` or ``bigwig`` from the extension; an OptionError for anything else."""
    name = str(path).lower()
    if name.endswith(BIGWIG_EXTENSIONS):
        return "bigwig"
    if name.endswith(BEDGRAPH_EXTENSIONS):
        return "bedgraph"
    raise OptionError(f"{path}: a track is .bedGraph (or .bg, .bedGraph.gz) or .bw/.bigWig")


def check_track_output(path: str | Path) -> str:
    """The track format; fails early (before any scoring) when bigWig is asked for without pyBigWig or
    to a device or a pipe (its writer seeks), or when ``path`` cannot be a file (``check_output_path``)."""
    fmt = track_format(path)
    check_output_path(path)
    if fmt == "bigwig":
        check_seekable(path, "bigWig")
        try:
            import pyBigWig  # noqa: F401
        except ImportError:
            raise InputError(BIGWIG_EXTRA) from None
    return fmt


def write_track(path: str | Path, values: Iterable[tuple[str, int, float]], chrom_sizes: dict[str, int],
                name: str, description: str = "") -> None:
    """Write per-base ``values`` (chrom, 0-based start, value; NaN skipped), in any order, as bedGraph
    (in the order given) or bigWig (sorted by chrom, in ``chrom_sizes`` order, then position), by
    extension. ``chrom_sizes``: every chrom's length."""
    if track_format(path) == "bigwig":
        order = {c: i for i, c in enumerate(chrom_sizes)}
        values = sorted(values, key=lambda t: (order[t[0]], t[1]))
    with track_writer(path, chrom_sizes, name, description) as write:
        write(values)


@contextlib.contextmanager
def track_writer(path: str | Path, chrom_sizes: dict[str, int], name: str, description: str = "") -> Iterator:
    """Yield ``write(values)``, which writes per-base ``values`` (chrom, 0-based start, value; NaN
    skipped) at once, so that a genome's track is never held in memory. Calls must give the values
    by chrom in ``chrom_sizes`` order (every chrom's length), then by position: bigWig needs its
    entries sorted. The track appears, complete, when the block ends without an error."""
    fmt = check_track_output(path)
    if fmt == "bigwig":
        with _bigwig_writer(path, chrom_sizes) as write:
            yield write
        return
    header = f'track type=bedGraph name="{name}"' + (f' description="{description}"' if description else "")
    with atomic_open_text(path) as fh:  # .bedGraph.gz: gzip
        fh.write(header + "\n")

        def write_bedgraph(values: Iterable[tuple[str, int, float]]) -> None:
            # 9 significant digits: a float32 log-probability exactly
            fh.writelines(f"{c}\t{s}\t{s + 1}\t{v:.9g}\n" for c, s, v in values if not _missing(v))

        yield write_bedgraph


def _missing(v) -> bool:
    return v is None or math.isnan(v)


@contextlib.contextmanager
def _bigwig_writer(path: str | Path, chrom_sizes: dict[str, int]) -> Iterator:
    import pyBigWig

    with atomic_path(path) as tmp:
        bw = pyBigWig.open(str(tmp), "w")
        try:
            bw.addHeader(list(chrom_sizes.items()))

            def write_bigwig(values: Iterable[tuple[str, int, float]]) -> None:
                values = [(c, s, float(v)) for c, s, v in values if not _missing(v)]
                if values:
                    chroms, starts, vals = zip(*values)
                    bw.addEntries(list(chroms), list(starts), ends=[s + 1 for s in starts], values=list(vals))

            yield write_bigwig
        finally:
            bw.close()
