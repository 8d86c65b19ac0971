"""VCF reading and annotated writing through pysam (VCF, bgzip VCF, BCF). No torch here.

Coordinates: ``VcfRecord.pos`` is the VCF's 1-based POS and ``VcfRecord.start`` the 0-based start of
REF; everything outside this module uses ``start``. Regions given as ``chr:start-end`` are 1-based
inclusive (samtools style), BED regions 0-based half-open; a record belongs to a region when its POS
lies inside it. Indexed VCFs are read with random access per region, others are streamed and filtered
(plain gzip cannot be indexed, and htslib cannot open it at all: its text is streamed by Python). htslib
checks the header of VCF/bgzip/BCF files and prints its own warnings about odd headers on stderr; a file
that pysam cannot open at all fails with one line. Text records are parsed here (``parse_record``), so a
malformed record fails with one line naming the file, the line number and the field.

Per-ALT statuses (``classify_alt`` and the scorer): ``ok`` or the reason an allele was not scored.
"""

from __future__ import annotations

import gzip
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from evo_cli.errors import InputError

from .fasta import DNA_CODES, open_text
from .reference import compression, contig_aliases, htslib_messages, htslib_reason, quiet_htslib, stale_index

NO_ALT = "no_alt"  # ALT is '.': a reference-only record
STAR = "star_allele"  # '*': the allele is deleted by an overlapping deletion
SYMBOLIC = "symbolic"  # <DEL>, <CN0>, <*> ...
BREAKEND = "breakend"  # ]chr:pos]N, N[chr:pos[, single breakends N. / .N
INVALID = "invalid_allele"  # characters that are not nucleotide codes
_END = 1 << 62


def classify_alt(alt: str) -> str | None:
    """None for an allele spelled in bases (IUPAC codes allowed, any case), else why it is not scored."""
    if alt == "*":
        return STAR
    if alt.startswith("<") and alt.endswith(">"):
        return SYMBOLIC
    if "[" in alt or "]" in alt or (len(alt) > 1 and (alt.startswith(".") or alt.endswith("."))):
        return BREAKEND
    if not alt or not set(alt.upper()) <= DNA_CODES:
        return INVALID
    return None


@dataclass(frozen=True)
class VcfRecord:
    chrom: str
    pos: int  # 1-based VCF POS; 0 is a telomere (no base)
    id: str | None
    ref: str
    alts: tuple[str, ...]  # empty when ALT is '.'

    @property
    def start(self) -> int:
        """0-based start of REF."""
        return self.pos - 1


def parse_record(line: str, where: str) -> VcfRecord:
    """One VCF data line (no line end) -> VcfRecord; ``where`` (``file:line``) starts the error message
    of a malformed record."""
    cols = line.split("\t", 5)
    if len(cols) < 5:
        # a hand-edited VCF often has spaces where tabs belong
        spaces = " (separated by spaces: a VCF separates its columns with tabs)" if len(line.split()) >= 5 else ""
        raise InputError(f"{where}: expected tab-separated CHROM, POS, ID, REF and ALT columns, found "
                         f"{len(cols)} column(s){spaces}")
    chrom, pos, rid, ref, alt = cols[:5]
    if not chrom:
        raise InputError(f"{where}: empty CHROM")
    if not (pos.isascii() and pos.isdigit()):  # VCF allows POS 0, a telomere: read, for the scorer to skip
        raise InputError(f"{where}: POS {pos!r} is not a position (a whole number >= 0)")
    if not ref or not set(ref.upper()) <= DNA_CODES:
        raise InputError(f"{where}: REF {ref!r} is not a sequence of nucleotide codes")
    if not alt:
        raise InputError(f"{where}: empty ALT (use '.' for none)")
    alts = () if alt == "." else tuple(alt.split(","))
    return VcfRecord(chrom, int(pos), None if rid in ("", ".") else rid, ref, alts)


@dataclass(frozen=True)
class Region:
    """``[start, end)`` of ``contig``, 0-based half-open."""

    contig: str
    start: int = 0
    end: int = _END

    def __str__(self) -> str:
        return self.contig if (self.start, self.end) == (0, _END) else f"{self.contig}:{self.start + 1}-{self.end}"


# contig names as the VCF specification allows them (4.3, section 1.4.7)
_CONTIG = re.compile(r"[0-9A-Za-z!#$%&+./;=?@^_|~-][0-9A-Za-z!#$%&*+./:;=?@^_|~-]*")
REGION_FORM = "chr, chr:start or chr:start-end (1-based, inclusive; e.g. chr17:41196312-41277500)"


def parse_region(text: str) -> Region:
    """``chr``, ``chr:start`` or ``chr:start-end`` (1-based inclusive, commas allowed) -> Region.

    Anything else (an empty or blank name, whitespace, a name the VCF specification does not allow,
    a trailing ``:``) raises ``InputError`` naming the expected form."""
    t = text.strip()
    m = re.fullmatch(r"(.+):(\d[\d,]*)(?:-(\d[\d,]*))?", t)
    contig = m.group(1) if m else t
    if not _CONTIG.fullmatch(contig) or contig.endswith(":"):
        raise InputError(f"region {text!r}: expected {REGION_FORM}")
    if not m:
        return Region(contig)
    start = int(m.group(2).replace(",", ""))
    end = int(m.group(3).replace(",", "")) if m.group(3) else _END
    if start < 1 or end < start:
        raise InputError(f"region {text!r}: start must be >= 1 and end >= start (1-based, inclusive)")
    return Region(contig, start - 1, end)


def read_bed(path: str | Path) -> list[Region]:
    """Regions of a BED file, plain or gzip/bgzip (0-based half-open; ``track``/``browser``/``#`` lines
    skipped). It is read once, so a pipe (``--regions <(zcat x.bed.gz)``) does too."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a BED file")
    try:
        fh = open_text(path)
    except OSError as err:  # no read permission, say
        raise InputError(f"{path}: cannot read ({err.strerror or err})") from None
    regions = []
    with fh:
        try:
            for lineno, line in enumerate(fh, 1):
                if not line.strip() or line.startswith(("#", "track", "browser")):
                    continue
                f = line.rstrip("\r\n").split("\t")
                try:
                    start, end = int(f[1]), int(f[2])
                except (IndexError, ValueError):
                    raise InputError(f"{path}:{lineno}: not BED (expected chrom<TAB>start<TAB>end)") from None
                if not f[0]:
                    raise InputError(f"{path}:{lineno}: BED interval with an empty chrom")
                if start < 0 or end < start:
                    raise InputError(f"{path}:{lineno}: BED interval {start}-{end} is not 0 <= start <= end")
                regions.append(Region(f[0], start, end))
        except (OSError, EOFError, zlib.error) as err:
            raise InputError(f"{path}: cannot read ({err})") from None
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


def _head(path: Path, n: int) -> bytes:
    """The first ``n`` bytes of ``path``'s content (after gzip/bgzip decompression); b"" when unreadable."""
    try:
        with open(path, "rb") as fh:
            return gzip.GzipFile(fileobj=fh).read(n) if fh.peek(2)[:2] == b"\x1f\x8b" else fh.read(n)
    except (OSError, EOFError, zlib.error):  # a corrupt file: htslib's open says what is wrong
        return b""


def _starts_with_bom(path: Path) -> bool:
    """Whether the text of ``path`` (plain, or after gzip/bgzip decompression) starts with a UTF-8 BOM."""
    return _head(path, 3) == b"\xef\xbb\xbf"


class VcfReader:
    """The records of a VCF (optionally restricted to regions), readable any number of times in the same order.

    ``__iter__`` gives parsed records (pysam); ``text()`` gives the header and the same records as the
    file's own text lines, which the annotated writer copies unchanged apart from INFO (BCF, which has
    no text, goes through htslib's formatting)."""

    def __init__(self, path: str | Path, regions: Iterable[Region] | None = None):
        self.path = Path(path)
        if not self.path.exists():
            raise InputError(f"{self.path}: no such file")
        if self.path.is_dir():
            raise InputError(f"{self.path}: is a directory, expected a VCF file")
        if not self.path.is_file():
            # a pipe (`--vcf <(zcat x.vcf.gz)`) could be read once at most: the records are read more
            # than once (checked, then scored, then copied into the output)
            raise InputError(f"{self.path}: is a device or a pipe, not a file; the VCF is read more than once, "
                             f"so save it to a file first")
        if self.path.stat().st_size == 0:
            raise InputError(f"{self.path}: is empty, not a VCF (a VCF has at least a #CHROM header line)")
        self.regions = merge_regions(regions) if regions else None
        if compression(self.path) == "gzip" or _starts_with_bom(self.path):
            # htslib needs to seek, which a plain-gzip stream cannot, and does not know a VCF that starts
            # with a UTF-8 byte-order mark (some Windows editors write one): Python streams their text instead
            self.indexed = self.is_bcf = False
            self.text()  # fails now on a file without a #CHROM header line
            return
        with self.open() as vf:
            # htslib only warns about an index older than the file, then fetches at the old offsets: a
            # region read missed or mixed up records of a rewritten VCF; such a file is streamed
            self.indexed = vf.index is not None and not stale_index(
                self.path, [Path(f"{self.path}{ext}") for ext in (".tbi", ".csi")], "VCF",
                "reading the whole file instead: refresh it with `tabix -f` or `bcftools index -f`")
            self.is_bcf = str(vf.format) == "BCF"

    def open(self):
        """A fresh ``pysam.VariantFile`` on the file."""
        import pysam

        try:  # htslib's lines (index lookups on unindexed files, header warnings) are not printed
            with quiet_htslib():
                return pysam.VariantFile(str(self.path))
        except (OSError, ValueError):
            pass
        # again, collecting htslib's lines: its reason goes into our one line. Only on this failure path:
        # stderr is redirected meanwhile, which would swallow a progress bar's refresh during a run
        with htslib_messages() as messages:
            try:
                return pysam.VariantFile(str(self.path))
            except (OSError, ValueError) as err:
                failure = err
        if isinstance(failure, OSError):
            raise InputError(f"{self.path}: cannot read as VCF/BCF ({failure.strerror or failure})")
        if _head(self.path, 16).startswith((b"##fileformat=VCF", b"BCF\x02", b"BCF\x04")):
            reason = htslib_reason(messages) or "htslib gave no reason"
            raise InputError(f"{self.path}: not a valid VCF/BCF header ({reason})")
        # htslib tells a VCF by its first line and says nothing when it does not find one
        raise InputError(f"{self.path}: not a VCF or BCF: a VCF's first line is ##fileformat=VCFv4.x, followed by "
                         f"## meta lines and a #CHROM header line")

    def _spans(self, vf) -> list[tuple[str, int, int]]:
        """(contig as the index names it, start, end) to fetch, in the index's contig order."""
        order = list(vf.index)
        by_key = {_canonical(c): c for c in order}
        spans = [(by_key[key], s, e) for key, ss in self.regions.items() if key in by_key for s, e in ss]
        return sorted(spans, key=lambda t: (order.index(t[0]), t[1]))

    def _wanted(self, chrom: str, start: int) -> bool:
        return any(s <= start < e for s, e in self.regions.get(_canonical(chrom), ()))

    def _pysam_records(self, vf) -> Iterator:
        if self.regions is None:
            yield from vf
        elif self.indexed:
            for contig, s, e in self._spans(vf):
                yield from (rec for rec in vf.fetch(contig, s, None if e >= _END else e) if s <= rec.start < e)
        else:
            yield from (rec for rec in vf if self._wanted(rec.chrom, rec.start))

    def __iter__(self) -> Iterator[VcfRecord]:
        if not self.is_bcf:
            yield from (parse_record(line, where) for where, line in self._text_records())
            return
        with self.open() as vf:
            try:
                for rec in self._pysam_records(vf):
                    yield VcfRecord(rec.chrom, rec.pos, rec.id, rec.ref or "", tuple(rec.alts or ()))
            except (OSError, ValueError) as err:
                raise InputError(f"{self.path}: cannot read a record ({err})") from None

    def text(self) -> tuple[list[str], Iterator[str]]:
        """(header lines, data lines) as text without line ends, data in ``__iter__``'s order."""
        if self.is_bcf:
            with self.open() as vf:
                header = str(vf.header).splitlines()
            return header, self._formatted_records()
        header: list[str] = []
        with open_text(self.path, errors="surrogateescape") as fh:
            try:
                for line in fh:
                    header.append(line.rstrip("\r\n"))
                    if line.startswith("#CHROM"):
                        break
            except (OSError, EOFError, zlib.error) as err:
                raise InputError(f"{self.path}: cannot read ({err})") from None
        if not header or not header[-1].startswith("#CHROM"):
            raise InputError(f"{self.path}: not a VCF (no #CHROM header line)")
        return header, (line for _, line in self._text_records())

    def _formatted_records(self) -> Iterator[str]:
        with self.open() as vf:
            for rec in self._pysam_records(vf):
                try:
                    yield str(rec).rstrip("\n")
                except UnicodeDecodeError:
                    # pysam formats a BCF record as UTF-8 only (a VCF's text is copied byte for byte)
                    raise InputError(f"{self.path}: record {rec.chrom}:{rec.pos} holds text that is not UTF-8, which "
                                     f"pysam cannot write out from a BCF; convert it to VCF (bcftools view -Oz) and "
                                     f"score that") from None

    def _text_records(self) -> Iterator[tuple[str, str]]:
        """(``file:line`` or ``file: contig``, line) of the selected data lines, in file order."""
        if self.regions is not None and self.indexed:
            import pysam

            with self.open() as vf:
                spans = self._spans(vf)
            index = next((f"{self.path}{ext}" for ext in (".tbi", ".csi") if Path(f"{self.path}{ext}").exists()), None)
            # latin-1 maps every byte to one character: the lines become the same text as the unindexed
            # path's (UTF-8, other bytes kept as surrogates), where utf-8 failed on one byte outside it
            with pysam.TabixFile(str(self.path), index=index, encoding="latin-1") as tf:
                for contig, s, e in spans:
                    for raw in tf.fetch(contig, s, None if e >= _END else e):
                        line = raw.encode("latin-1").decode("utf-8", "surrogateescape")
                        if s <= int(line.split("\t", 2)[1]) - 1 < e:
                            yield f"{self.path}: {contig}", line
            return
        with open_text(self.path, errors="surrogateescape") as fh:
            try:
                for lineno, line in enumerate(fh, 1):
                    if line.startswith("#") or not line.strip():
                        continue
                    line = line.rstrip("\r\n")
                    where = f"{self.path}:{lineno}"
                    if self.regions is None:
                        yield where, line
                    else:
                        rec = parse_record(line, where)
                        if self._wanted(rec.chrom, rec.start):
                            yield where, line
            except (OSError, EOFError, zlib.error) as err:
                raise InputError(f"{self.path}: cannot read ({err})") from None


@dataclass(frozen=True)
class InfoField:
    id: str
    number: str  # "A", "1", ...
    type: str  # "Float", ...
    description: str

    def header_line(self) -> str:
        return f'##INFO=<ID={self.id},Number={self.number},Type={self.type},Description="{self.description}">'


def _format_value(v) -> str:
    if v is None:
        return "."
    if isinstance(v, (tuple, list)):
        return ",".join(_format_value(x) for x in v) or "."
    # readers hold VCF Floats as float32: 7 significant digits carry all of it
    return f"{v:.7g}" if isinstance(v, float) else str(v)


def _annotate(line: str, values: dict, ours: set[str]) -> str:
    cols = line.split("\t", 8)
    if len(cols) < 8:
        cols += ["."] * (8 - len(cols))
    entries = [kv for kv in cols[7].split(";") if kv not in ("", ".") and kv.split("=", 1)[0] not in ours]
    entries += [f"{k}={_format_value(v)}" for k, v in values.items()]
    cols[7] = ";".join(entries) or "."
    return "\t".join(cols)


def write_annotated_vcf(
    path: str | Path,
    reader: VcfReader,
    fields: list[InfoField],
    header_lines: list[tuple[str, str]],
    annotations: Iterable[tuple[str, int, dict]],
    compressed: bool,
    contigs: dict[str, int | None] | None = None,
) -> bool:
    """Copy ``reader``'s records to ``path`` with INFO ``fields`` set from ``annotations``.

    Records are copied as the input spells them, except for the INFO column: earlier values of
    ``fields`` are dropped and the new ones appended. annotations: one ``(chrom, pos, {field id:
    value or tuple})`` per record in reader order, exactly as many as records (a mismatch is an
    InputError); None inside a tuple is written '.'; floats get 7
    significant digits (readers keep VCF Floats as float32). header_lines: ``(key, value)`` pairs
    written as ``##key=value`` before ``#CHROM``; earlier ``##evo_*`` lines and declarations of
    ``fields`` are replaced. compressed: bgzip and tabix-index. The file (and index) appear only
    when complete; ``-`` writes plain VCF to stdout. contigs: the records' contigs with their lengths
    (None: unknown); those the header does not declare get a ``##contig`` line (without one, htslib
    warns on every read and cannot write the records as BCF). Returns whether a tabix index was written
    (False when not compressed, or when the records are not sorted by position).
    """
    from .atomic import atomic_open

    ours = {f.id for f in fields}
    header, lines = reader.text()
    if not header or not header[-1].startswith("#CHROM"):
        raise InputError(f"{reader.path}: no #CHROM header line")
    kept = [h for h in header[:-1] if not h.startswith("##evo_")
            and not any(h.startswith(f"##INFO=<ID={key},") for key in ours)]
    declared = {m.group(1) for h in kept if (m := re.match(r"##contig=<ID=([^,>]+)", h))}
    missing = [f"##contig=<ID={c}" + (f",length={n}>" if n else ">") for c, n in (contigs or {}).items()
               if c not in declared]
    if missing:  # after the last ##contig line, else after ##fileformat
        at = max((i + 1 for i, h in enumerate(kept) if h.startswith("##contig=")),
                 default=int(bool(kept) and kept[0].startswith("##fileformat")))
        kept[at:at] = missing
    last_info = max((i + 1 for i, h in enumerate(kept) if h.startswith("##INFO=")), default=len(kept))
    out_header = (kept[:last_info] + [f.header_line() for f in fields] + kept[last_info:]
                  + [f"##{key}={' '.join(str(value).split())}" for key, value in header_lines] + [header[-1]])

    def text() -> Iterator[str]:
        yield from (h + "\n" for h in out_header)
        ann_iter = iter(annotations)
        for line in lines:
            chrom, pos, values = next(ann_iter, (None, None, None))
            got = line.split("\t", 2)[:2]
            if chrom is None:
                raise InputError(f"{reader.path}: record {':'.join(got)} was not scored; was the VCF changed "
                                 f"during the run?")
            if got != [chrom, str(pos)]:
                raise InputError(f"{reader.path}: record {':'.join(got)} does not match the scored record "
                                 f"{chrom}:{pos}; was the VCF changed during the run?")
            yield _annotate(line, values, ours) + "\n"
        extra = next(ann_iter, None)
        if extra is not None:
            raise InputError(f"{reader.path}: has no record for the scored record {extra[0]}:{extra[1]}; "
                             f"was the VCF changed during the run?")

    if not compressed:
        with atomic_open(path, "wb") as fh:
            for chunk in text():
                fh.write(chunk.encode("utf-8", "surrogateescape"))
        return False
    return write_bgzipped_vcf(path, text())


def write_bgzipped_vcf(path: str | Path, text: Iterable[str]) -> bool:
    """Write VCF ``text`` (header and records, lines with their newlines) bgzipped to ``path`` and
    tabix-index it; file and index appear only when complete. Returns whether an index was written
    (not when the records are unsorted, nor for a device or pipe)."""
    from pysam.libcbgzf import BGZFile

    from .atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        index_tmp = Path(str(tmp) + ".tbi")
        try:
            with BGZFile(str(tmp), "wb") as out:
                for chunk in text:
                    out.write(chunk.encode("utf-8", "surrogateescape"))
            # a device or pipe (-o /dev/null) is written in place and has no index: tabix would
            # bgzip it into a new file and delete it
            indexed = tmp != path and _tabix(tmp)
        except BaseException:
            index_tmp.unlink(missing_ok=True)
            raise
        # a stale index must never sit beside the new data
        index = Path(str(path) + ".tbi")
        if tmp != path:
            index.unlink(missing_ok=True)
    if indexed:
        os.replace(index_tmp, index)
    return indexed


def _tabix(path: Path) -> bool:
    import pysam

    try:
        with quiet_htslib():
            pysam.tabix_index(str(path), preset="vcf", force=True)
        return True
    except OSError:
        return False
