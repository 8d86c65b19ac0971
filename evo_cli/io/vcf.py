"""VCF reading and annotated writing through pysam (VCF, bgzip VCF, BCF). No torch here.

Coordinates: ``VcfRecord.pos`` is the VCF's 1-based POS and ``VcfRecord.start`` the 0-based start of
REF; everything outside this module uses ``start``. Regions given as ``chr:start-end`` are 1-based
inclusive (samtools style), BED regions 0-based half-open; a record belongs to a region when its POS
lies inside it. Indexed VCFs are read with random access per region, others are streamed and filtered
(plain gzip cannot be indexed). htslib prints its own warnings about odd headers on stderr; a file that
pysam cannot open at all fails with one line.

Per-ALT statuses (``classify_alt`` and the scorer): ``ok`` or the reason an allele was not scored.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from evo_cli.errors import InputError

from .reference import contig_aliases

NO_ALT = "no_alt"  # ALT is '.': a reference-only record
STAR = "star_allele"  # '*': the allele is deleted by an overlapping deletion
SYMBOLIC = "symbolic"  # <DEL>, <CN0>, <*> ...
BREAKEND = "breakend"  # ]chr:pos]N, N[chr:pos[, single breakends N. / .N
INVALID = "invalid_allele"  # characters that are not nucleotide codes
SEQUENCE_CODES = frozenset("ACGTNRYKMSWBDHV")
_END = 1 << 62


def classify_alt(alt: str) -> str | None:
    """None for an allele spelled in bases (IUPAC codes allowed, any case), else why it is not scored."""
    if alt == "*":
        return STAR
    if alt.startswith("<") and alt.endswith(">"):
        return SYMBOLIC
    if "[" in alt or "]" in alt or (len(alt) > 1 and (alt.startswith(".") or alt.endswith("."))):
        return BREAKEND
    if not alt or not set(alt.upper()) <= SEQUENCE_CODES:
        return INVALID
    return None


@dataclass(frozen=True)
class VcfRecord:
    chrom: str
    pos: int  # 1-based VCF POS
    id: str | None
    ref: str
    alts: tuple[str, ...]  # empty when ALT is '.'

    @property
    def start(self) -> int:
        """0-based start of REF."""
        return self.pos - 1


@dataclass(frozen=True)
class Region:
    """``[start, end)`` of ``contig``, 0-based half-open."""

    contig: str
    start: int = 0
    end: int = _END

    def __str__(self) -> str:
        return self.contig if (self.start, self.end) == (0, _END) else f"{self.contig}:{self.start + 1}-{self.end}"


def parse_region(text: str) -> Region:
    """``chr``, ``chr:start`` or ``chr:start-end`` (1-based inclusive, commas allowed) -> Region."""
    m = re.fullmatch(r"(.+):([\d,]+)(?:-([\d,]+))?", text.strip())
    if not m:
        if not text.strip() or any(c.isspace() for c in text.strip()):
            raise InputError(f"region {text!r}: expected chr, chr:start or chr:start-end")
        return Region(text.strip())
    start = int(m.group(2).replace(",", ""))
    end = int(m.group(3).replace(",", "")) if m.group(3) else _END
    if start < 1 or end < start:
        raise InputError(f"region {text!r}: start must be >= 1 and end >= start (1-based, inclusive)")
    return Region(m.group(1), start - 1, end)


def read_bed(path: str | Path) -> list[Region]:
    """Regions of a BED file (0-based half-open; ``track``/``browser``/``#`` lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    regions = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip() or line.startswith(("#", "track", "browser")):
                continue
            f = line.rstrip("\r\n").split("\t")
            try:
                start, end = int(f[1]), int(f[2])
            except (IndexError, ValueError):
                raise InputError(f"{path}:{lineno}: not BED (expected chrom<TAB>start<TAB>end)") from None
            if start < 0 or end < start:
                raise InputError(f"{path}:{lineno}: BED interval {start}-{end} is not 0 <= start <= end")
            regions.append(Region(f[0], start, end))
    if not regions:
        raise InputError(f"{path}: no BED intervals")
    return regions


def _canonical(contig: str) -> str:
    return min([contig, *contig_aliases(contig)], key=lambda a: (a.lower().startswith("chr"), a == "M", a))


def merge_regions(regions: Iterable[Region]) -> dict[str, list[tuple[int, int]]]:
    """Regions merged per contig (keyed by a chr-agnostic name): sorted, disjoint ``(start, end)``."""
    by: dict[str, list[tuple[int, int]]] = {}
    for r in regions:
        by.setdefault(_canonical(r.contig), []).append((r.start, r.end))
    merged = {}
    for key, spans in by.items():
        out: list[list[int]] = []
        for s, e in sorted(spans):
            if out and s <= out[-1][1]:
                out[-1][1] = max(out[-1][1], e)
            else:
                out.append([s, e])
        merged[key] = [(s, e) for s, e in out]
    return merged


@contextlib.contextmanager
def _quiet_htslib():
    """Silence htslib's '[E::idx_find_and_load] Could not retrieve index file' on opening unindexed files."""
    import pysam

    old = pysam.set_verbosity(0)
    try:
        yield
    finally:
        pysam.set_verbosity(old)


class VcfReader:
    """The records of a VCF (optionally restricted to regions), readable any number of times in the same order."""

    def __init__(self, path: str | Path, regions: Iterable[Region] | None = None):
        self.path = Path(path)
        if not self.path.exists():
            raise InputError(f"{self.path}: no such file")
        if self.path.is_dir():
            raise InputError(f"{self.path}: is a directory, expected a VCF file")
        self.regions = merge_regions(regions) if regions else None
        with self.open() as vf:
            self.indexed = vf.index is not None
            self.samples = len(vf.header.samples)

    def open(self):
        """A fresh ``pysam.VariantFile`` on the file."""
        import pysam

        try:
            with _quiet_htslib():
                return pysam.VariantFile(str(self.path))
        except (OSError, ValueError):
            pass
        try:  # again, with htslib's messages on: they say what is wrong with the file
            return pysam.VariantFile(str(self.path))
        except ValueError:
            raise InputError(f"{self.path}: not a valid VCF/BCF (bad or missing header; htslib's message above "
                             f"says more)") from None
        except OSError as err:
            raise InputError(f"{self.path}: cannot read as VCF/BCF ({err.strerror or err})") from None

    def pysam_records(self, vf) -> Iterator:
        """pysam records of ``vf`` (opened by ``open``) in this reader's order and regions."""
        try:
            if self.regions is None:
                yield from vf
            elif self.indexed:
                index_contigs = {_canonical(c): c for c in vf.index}
                for key, spans in sorted(self.regions.items(), key=lambda kv: _contig_rank(kv[0], index_contigs, vf)):
                    if key not in index_contigs:
                        continue
                    for s, e in spans:
                        for rec in vf.fetch(index_contigs[key], s, None if e >= _END else e):
                            if s <= rec.start < e:
                                yield rec
            else:
                for rec in vf:
                    spans = self.regions.get(_canonical(rec.chrom))
                    if spans and any(s <= rec.start < e for s, e in spans):
                        yield rec
        except (OSError, ValueError) as err:
            raise InputError(f"{self.path}: cannot read record ({err})") from None

    def __iter__(self) -> Iterator[VcfRecord]:
        with self.open() as vf:
            for rec in self.pysam_records(vf):
                yield VcfRecord(rec.chrom, rec.pos, rec.id, rec.ref or "", tuple(rec.alts or ()))


def _contig_rank(key: str, index_contigs: dict[str, str], vf) -> tuple[int, str]:
    order = list(vf.index)
    name = index_contigs.get(key)
    return (order.index(name) if name in order else len(order), key)


@dataclass(frozen=True)
class InfoField:
    id: str
    number: str  # "A", "1", ...
    type: str  # "Float", ...
    description: str


def write_annotated_vcf(
    path: str | Path,
    reader: VcfReader,
    fields: list[InfoField],
    header_lines: list[tuple[str, str]],
    annotations: Iterable[tuple[str, int, dict]],
    compressed: bool,
) -> bool:
    """Copy ``reader``'s records to ``path`` with INFO ``fields`` set from ``annotations``.

    annotations: one ``(chrom, pos, {field id: value or tuple})`` per record in reader order; a
    field missing from the dict is removed from the record; None inside a tuple is written '.'.
    header_lines: ``(key, value)`` pairs written as ``##key=value`` (earlier ``##evo_*`` lines are
    replaced). compressed: bgzip and tabix-index. The file (and index) appear only when complete;
    ``-`` writes plain VCF to stdout. Returns whether a tabix index was written (False when not
    compressed, or when the records are not sorted by position).
    """
    import pysam

    from .atomic import atomic_path

    path = Path(path)
    with reader.open() as vf:
        # a first pass lets htslib add the contigs and tags that the header forgot, so that the
        # output header declares everything the records use
        for _ in reader.pysam_records(vf):
            pass
        vf.reset()
        header = vf.header
        for rec in list(header.records):
            if rec.key and rec.key.startswith("evo_"):
                rec.remove()
        for f in fields:
            if f.id in header.info:
                old = header.info[f.id]
                if (str(old.number), old.type) != (f.number, f.type):
                    raise InputError(f"{reader.path}: INFO {f.id} is already declared as Number={old.number},"
                                     f"Type={old.type}; evo writes Number={f.number},Type={f.type}")
            else:
                header.info.add(f.id, f.number, f.type, f.description)
        for key, value in header_lines:
            header.add_line(f"##{key}={value}")
        if str(path) == "-":
            with pysam.VariantFile("-", "w", header=header) as out:
                _copy_records(reader, vf, out, [f.id for f in fields], annotations)
            return False
        with atomic_path(path) as tmp:
            index_tmp = Path(str(tmp) + ".tbi")
            try:
                with pysam.VariantFile(str(tmp), "wz" if compressed else "w", header=header) as out:
                    _copy_records(reader, vf, out, [f.id for f in fields], annotations)
                indexed = compressed and _tabix(tmp)
            except BaseException:
                index_tmp.unlink(missing_ok=True)
                raise
            # a stale index must never sit beside the new data
            index = Path(str(path) + ".tbi")
            index.unlink(missing_ok=True)
        if indexed:
            os.replace(index_tmp, index)
        return indexed


def _copy_records(reader: VcfReader, vf, out, ids: list[str], annotations: Iterable[tuple[str, int, dict]]) -> None:
    ann_iter = iter(annotations)
    for rec in reader.pysam_records(vf):
        chrom, pos, values = next(ann_iter, (None, None, None))
        if (chrom, pos) != (rec.chrom, rec.pos):
            raise InputError(f"{reader.path}: record {rec.chrom}:{rec.pos} does not match the scored "
                             f"record {chrom}:{pos}; was the VCF changed during the run?")
        for key in ids:
            if key in values:
                rec.info[key] = values[key]
            elif key in rec.info:
                del rec.info[key]
        out.write(rec)


def _tabix(path: Path) -> bool:
    import pysam

    try:
        with _quiet_htslib():
            pysam.tabix_index(str(path), preset="vcf", force=True)
        return True
    except OSError:
        return False
