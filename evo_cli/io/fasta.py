"""FASTA reading and writing (plain or gzip/bgzip). No torch here.

Records are validated as they are read: a file that is missing, not FASTA, has an empty record, a
duplicate id, or characters that are not nucleotide codes fails with one line naming the file, the
record and the position.
"""

from __future__ import annotations

import gzip
import io
import logging
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, TextIO

from evo_cli.errors import InputError

log = logging.getLogger(__name__)

# IUPAC nucleotide codes; N and the ambiguity codes are allowed in sequences (they become tokens)
DNA_CODES = frozenset("ACGTNRYKMSWBDHV")
# the strands a sequence can be read on (score-variants, embed): forward only, or forward and reverse
# complement, averaged
STRANDS = ("forward", "both")
_COMPLEMENT = str.maketrans("ACGTNRYKMSWBDHVacgtnrykmswbdhv", "TGCANYRMKSWVHDBtgcanyrmkswvhdb")


@dataclass(frozen=True)
class FastaRecord:
    id: str
    description: str
    sequence: str


def shown_char(ch: str) -> str:
    """A character for an error message: its repr, or what U+FFFD stands for (files are decoded with
    errors replaced, so a byte outside UTF-8 shows as the replacement character, which says nothing)."""
    if ch == "\ufffd":
        return "a byte that is not UTF-8 text (a binary file, or text in another encoding such as Latin-1)"
    return repr(ch)


def reverse_complement(seq: str) -> str:
    """Reverse complement with IUPAC codes (N stays N); case is kept."""
    return seq.translate(_COMPLEMENT)[::-1]


def open_text(path: str | Path, errors: str = "replace") -> TextIO:
    """A text file, plain or gzip/bgzip (by its magic bytes), as UTF-8 (a byte-order mark at its start,
    which some Windows editors write, is dropped). ``errors``: what undecodable bytes become
    (``replace``: U+FFFD; ``surrogateescape``: they pass through to a writer unchanged)."""
    return _as_text(open(path, "rb"), errors)


def _as_text(fh: io.BufferedReader, errors: str = "replace") -> TextIO:
    """``open_text`` of a binary file at its start, which it then owns. The magic bytes are peeked, not
    read, so that the file is opened once: a pipe (``--fasta <(zcat x.fa.gz)``) cannot be opened again."""
    try:
        if fh.peek(2)[:2] == b"\x1f\x8b":
            return io.TextIOWrapper(_OwnedGzip(fh), encoding="utf-8-sig", errors=errors)
        return io.TextIOWrapper(fh, encoding="utf-8-sig", errors=errors)
    except BaseException:
        fh.close()
        raise


class _OwnedGzip(gzip.GzipFile):
    """A GzipFile over an open file that closes that file too, as ``gzip.open`` does for a path."""

    def __init__(self, fh):
        super().__init__(fileobj=fh, mode="rb")
        self._owned = fh

    def close(self):
        try:
            super().close()
        finally:
            self._owned.close()


# what a file that gzip cannot open may be, by its first bytes: named, rather than called "not FASTA"
_OTHER_ENCODINGS = {b"BZh": "bzip2-compressed", b"\xfd7zXZ\x00": "xz-compressed", b"\x28\xb5\x2f\xfd": "zstd-compressed",
                    b"PK\x03\x04": "zip archive", b"\xff\xfe": "UTF-16 text", b"\xfe\xff": "UTF-16 text"}


def _check_encoding(path: Path, head: bytes) -> None:
    """``head``: the file's first bytes."""
    for magic, what in _OTHER_ENCODINGS.items():
        if head.startswith(magic):
            raise InputError(f"{path}: {what}; evo reads plain, gzip or bgzip FASTA (UTF-8 or ASCII text): "
                             f"decompress it, recompress it with bgzip, or save it as UTF-8")


def iter_fasta(path: str | Path, uppercase: bool = True, alphabet: frozenset | None = DNA_CODES) -> Iterator[FastaRecord]:
    """Records of a FASTA file, in order.

    uppercase: upper-case sequences (soft-masked lowercase bases become tokens of their capital; the
    tokenizer is case-sensitive); the number of changed records is logged.
    alphabet: allowed characters after upper-casing (None: any printable character).
    """
    if str(path) == "-":
        raise InputError("-: FASTA from standard input is not supported; give a file (plain, gzip or bgzip)")
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a FASTA file")
    try:
        raw = open(path, "rb")  # once (see _as_text)
    except OSError as err:  # no read permission, say
        raise InputError(f"{path}: cannot read ({err.strerror or err})") from None
    try:
        _check_encoding(path, raw.peek(6)[:6])
    except BaseException:
        raw.close()
        raise
    seen: set[str] = set()
    lowered = 0
    with _as_text(raw) as fh:
        header, start_line, chunks = None, 0, []
        lines = _lines(fh)  # streamed: memory holds one record, whatever the file's size
        while True:
            try:
                item = next(lines, None)
            except (OSError, EOFError, zlib.error) as err:
                raise InputError(f"{path}: cannot read ({err})") from None
            if item is None:
                break
            lineno, line = item
            if line.startswith(">"):
                if header is not None:
                    rec, was_lower = _record(path, header, start_line, chunks, uppercase, alphabet, seen)
                    lowered += was_lower
                    yield rec
                header, start_line, chunks = line[1:].strip(), lineno, []
            elif line.startswith(";"):
                continue
            elif header is None:
                if line.startswith("@"):  # reads, given where sequences are expected
                    raise InputError(f"{path}:{lineno}: FASTQ, not FASTA: convert it first (e.g. seqtk seq -A "
                                     f"IN.fq > OUT.fa)")
                if line.strip():
                    raise InputError(f"{path}:{lineno}: not FASTA: expected a '>' header line before sequence")
            else:
                chunks.append(line.strip())
        if header is None:
            raise InputError(f"{path}: no FASTA records (empty file or no '>' header)")
        rec, was_lower = _record(path, header, start_line, chunks, uppercase, alphabet, seen)
        lowered += was_lower
        yield rec
    if lowered:
        log.info("%s: upper-cased %d record(s) with lowercase (soft-masked) bases", path, lowered)


def _lines(fh):
    for i, line in enumerate(fh, 1):
        yield i, line.rstrip("\r\n")


def _record(path, header, lineno, chunks, uppercase, alphabet, seen) -> tuple[FastaRecord, bool]:
    # the id ends at the first whitespace of any kind (space or tab), as in samtools and Biopython
    rid, desc = (header.split(None, 1) + ["", ""])[:2]
    if not rid:
        raise InputError(f"{path}:{lineno}: record with an empty name")
    if rid in seen:
        raise InputError(f"{path}:{lineno}: duplicate record id {rid!r}")
    seen.add(rid)
    seq = "".join("".join(c.split()) for c in chunks)
    if not seq:
        raise InputError(f"{path}:{lineno}: record {rid!r} has no sequence")
    was_lower = False
    if uppercase:
        up = seq.upper()
        was_lower = up != seq
        seq = up
    if alphabet is not None:
        bad = re.search(f"[^{''.join(sorted(alphabet))}]", seq)
        if bad:
            raise InputError(
                f"{path}: record {rid!r} has {shown_char(bad.group())} at position {bad.start() + 1}, not a nucleotide code "
                f"({''.join(sorted(alphabet))})"
            )
    return FastaRecord(rid, desc.strip(), seq), was_lower


def read_fasta(path: str | Path, uppercase: bool = True, alphabet: frozenset | None = DNA_CODES) -> list[FastaRecord]:
    return list(iter_fasta(path, uppercase, alphabet))


def format_fasta(name: str, sequence: str, width: int = 80) -> str:
    """One FASTA record as text, wrapped at ``width`` characters (0: one line)."""
    lines = [sequence[i : i + width] for i in range(0, len(sequence), width)] if width else [sequence]
    return f">{name}\n" + "\n".join(lines) + "\n"
