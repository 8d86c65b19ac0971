"""Reference genome access through pysam's indexed FASTA (plain or bgzip). No torch here.

Coordinates are 0-based half-open. Sequences come back upper-cased: soft-masked (lowercase) bases
become their capital, because the tokenizer is case-sensitive. Contig names are matched exactly
first, then with the ``chr`` prefix added or removed (``chr17`` = ``17``, ``chrM`` = ``MT``).
"""

from __future__ import annotations

import os
from pathlib import Path

from evo_cli.errors import InputError


def contig_aliases(name: str) -> list[str]:
    """Other spellings of a contig name: ``chr17`` <-> ``17``, ``chrM`` <-> ``MT`` <-> ``M``."""
    bare = name[3:] if name.lower().startswith("chr") else name
    out = [bare, "chr" + bare]
    if bare.upper() in ("M", "MT"):
        out += ["MT", "M", "chrM", "chrMT"]
    return [a for a in dict.fromkeys(out) if a != name]


def _compression(path: Path) -> str:
    """``plain``, ``bgzip`` or ``gzip`` (a gzip file whose first member lacks the BGZF ``BC`` field)."""
    with open(path, "rb") as fh:
        head = fh.read(18)
    if head[:2] != b"\x1f\x8b":
        return "plain"
    return "bgzip" if len(head) >= 14 and head[3] & 4 and head[12:14] == b"BC" else "gzip"


class Reference:
    """An indexed FASTA: ``fetch(contig, start, end)``, ``length(contig)``, ``resolve(name)``.

    The ``.fai`` (and ``.gzi`` for bgzip) is built beside the FASTA when missing. A plain-gzip
    FASTA cannot be indexed and fails with a message saying to recompress it with bgzip.
    """

    def __init__(self, path: str | Path):
        import pysam

        self.path = Path(path)
        if not self.path.exists():
            raise InputError(f"{self.path}: no such file")
        if self.path.is_dir():
            raise InputError(f"{self.path}: is a directory, expected a FASTA file")
        kind = _compression(self.path)
        if kind == "gzip":
            raise InputError(f"{self.path}: gzip-compressed FASTA without an index cannot be read at random; "
                             f"recompress it with `bgzip` (or decompress it)")
        fai = Path(str(self.path) + ".fai")
        if not fai.exists() and not os.access(self.path.parent, os.W_OK):
            raise InputError(f"{self.path}: no index {fai.name} and its folder is read-only; "
                             f"copy the FASTA somewhere writable or run `samtools faidx` on it")
        try:
            # pysam builds the missing .fai (and .gzi) on open; htslib's own message goes to stderr
            self._fa = pysam.FastaFile(str(self.path))
        except (OSError, ValueError) as err:
            raise InputError(f"{self.path}: cannot open as an indexed FASTA ({err})") from None
        self.contigs = dict(zip(list(self._fa.references), list(self._fa.lengths)))
        self._resolved: dict[str, str | None] = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self._fa.close()

    def resolve(self, name: str) -> str | None:
        """The FASTA's name for contig ``name`` (exact, else a chr/MT alias), or None."""
        if name not in self._resolved:
            hit = name if name in self.contigs else next((a for a in contig_aliases(name) if a in self.contigs), None)
            self._resolved[name] = hit
        return self._resolved[name]

    def length(self, contig: str) -> int:
        return self.contigs[contig]

    def fetch(self, contig: str, start: int, end: int) -> str:
        """Bases ``[start, end)`` of ``contig`` (a FASTA name; see ``resolve``), upper-cased and
        clipped to the contig."""
        start, end = max(0, start), min(end, self.contigs[contig])
        if end <= start:
            return ""
        return self._fa.fetch(contig, start, end).upper()
