"""Genome-browser tracks: bedGraph (text) and bigWig (binary, through pyBigWig). No torch here.

Both hold one value per base: ``(chrom, start, value)`` with ``start`` 0-based, written as the
interval ``[start, start + 1)``. IGV and the UCSC browser load either; bigWig also serves large
regions without reading the whole file. Outputs appear only when complete (``io/atomic.py``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable

from evo_cli.errors import InputError

from .atomic import atomic_open, atomic_path, check_output_path

BEDGRAPH_EXTENSIONS = (".bedgraph", ".bedgraph.gz", ".bg")
BIGWIG_EXTENSIONS = (".bw", ".bigwig")
BIGWIG_EXTRA = 'bigWig output needs pyBigWig: pip install "evo-cli[bigwig]"'


def track_format(path: str | Path) -> str:
    """``bedgraph`` or ``bigwig`` from the extension; an InputError for anything else."""
    name = str(path).lower()
    if name.endswith(BIGWIG_EXTENSIONS):
        return "bigwig"
    if name.endswith(BEDGRAPH_EXTENSIONS):
        return "bedgraph"
    raise InputError(f"{path}: a track is .bedGraph (or .bg, .bedGraph.gz) or .bw/.bigWig")


def check_track_output(path: str | Path) -> str:
    """The track format; fails early (before any scoring) when bigWig is asked for without pyBigWig,
    or when ``path`` cannot be a file (``check_output_path``)."""
    fmt = track_format(path)
    check_output_path(path)
    if fmt == "bigwig":
        try:
            import pyBigWig  # noqa: F401
        except ImportError:
            raise InputError(BIGWIG_EXTRA) from None
    return fmt


def write_track(path: str | Path, values: Iterable[tuple[str, int, float]], chrom_sizes: dict[str, int],
                name: str, description: str = "") -> None:
    """Write per-base ``values`` (chrom, 0-based start, value; NaN skipped) as bedGraph or bigWig
    (by extension). ``chrom_sizes``: every chrom's length, in the order the values come (bigWig needs
    them in its header, and its entries sorted by chrom then position)."""
    fmt = check_track_output(path)
    values = [(c, s, v) for c, s, v in values if v is not None and not math.isnan(v)]
    if fmt == "bigwig":
        _write_bigwig(path, values, chrom_sizes)
        return
    header = f'track type=bedGraph name="{name}"' + (f' description="{description}"' if description else "")
    if str(path).lower().endswith(".gz"):
        import gzip

        with atomic_path(path) as tmp, gzip.open(tmp, "wt", encoding="utf-8") as fh:
            _write_bedgraph(fh, header, values)
        return
    with atomic_open(path) as fh:
        _write_bedgraph(fh, header, values)


def _write_bedgraph(fh, header: str, values) -> None:
    fh.write(header + "\n")
    # 9 significant digits: a float32 log-probability exactly
    fh.writelines(f"{c}\t{s}\t{s + 1}\t{v:.9g}\n" for c, s, v in values)


def _write_bigwig(path, values, chrom_sizes) -> None:
    import pyBigWig

    order = {c: i for i, c in enumerate(chrom_sizes)}
    values = sorted(values, key=lambda t: (order[t[0]], t[1]))
    with atomic_path(path) as tmp:
        bw = pyBigWig.open(str(tmp), "w")
        try:
            bw.addHeader(list(chrom_sizes.items()))
            if values:
                chroms, starts, vals = zip(*values)
                bw.addEntries(list(chroms), list(starts), ends=[s + 1 for s in starts], values=[float(v) for v in vals])
        finally:
            bw.close()
