"""Reference genome access through pysam's indexed FASTA (plain or bgzip). No torch here.

Coordinates are 0-based half-open. Sequences come back upper-cased: soft-masked (lowercase) bases
become their capital, because the tokenizer is case-sensitive. Contig names are matched exactly
first, then with the ``chr`` prefix added or removed (``chr17`` = ``17``, ``chrM`` = ``MT``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from evo_cli.errors import InputError

from .atomic import remove_stale_temporaries, temporary_prefix

log = logging.getLogger(__name__)


@contextlib.contextmanager
def quiet_htslib():
    """Silence htslib's own stderr lines (index lookups on unindexed files, parse errors that our one-line
    messages carry)."""
    import pysam

    old = pysam.set_verbosity(0)
    try:
        yield
    finally:
        pysam.set_verbosity(old)


@contextlib.contextmanager
def htslib_messages():
    """Collect htslib's stderr lines written during the block into the yielded list (filled when the
    block ends), instead of printing them: htslib's C code writes to file descriptor 2 directly, and its
    reason (a duplicate contig, a bad header line) belongs in our one-line error, not above it."""
    import pysam

    lines: list[str] = []
    try:
        saved = os.dup(2)
    except OSError:  # no stderr (`2>&-`): htslib's lines go nowhere, and there is nothing to collect
        with quiet_htslib():
            yield lines
        return
    if sys.stderr is not None:
        sys.stderr.flush()
    old = pysam.set_verbosity(3)  # warnings and errors, whatever an earlier quiet_htslib left
    try:
        with tempfile.TemporaryFile() as tmp:
            os.dup2(tmp.fileno(), 2)
            try:
                yield lines
            finally:
                os.dup2(saved, 2)
                tmp.seek(0)
                lines.extend(line.strip() for line in tmp.read().decode("utf-8", "replace").splitlines()
                             if line.strip())
    finally:
        os.close(saved)
        pysam.set_verbosity(old)


def htslib_reason(lines: list[str]) -> str:
    """The first of htslib's error lines (``[E::func] text``) as ``text``; "" when there is none."""
    for line in lines:
        if line.startswith("[E::"):
            return line.split("] ", 1)[-1]
    return ""


_warned: set[str] = set()


def stale_index(path: Path, indexes, kind: str, instead: str) -> bool:
    """Whether one of ``indexes`` (paths or None; those that exist) is older than ``path``, which then
    changed after indexing: htslib would read at the old offsets without a word. Warns once, saying
    what is done ``instead``."""
    mtime = path.stat().st_mtime_ns
    for index in indexes:
        if index is not None and index.is_file() and index.stat().st_mtime_ns < mtime:
            warn_once(f"warning: {index} is older than {path}, so not used (the {kind} changed after indexing); "
                      f"{instead}")
            return True
    return False


def warn_once(message: str) -> None:
    """Log ``message`` as a warning the first time only: a run opens its inputs several times (checked
    before the model loads, then read)."""
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


def contig_aliases(name: str) -> list[str]:
    """Other spellings of a contig name: ``chr17`` <-> ``17``, ``chrM`` <-> ``MT`` <-> ``M``."""
    bare = name[3:] if name.lower().startswith("chr") else name
    out = [bare, "chr" + bare]
    if bare.upper() in ("M", "MT"):
        out += ["MT", "M", "chrM", "chrMT"]
    return [a for a in dict.fromkeys(out) if a != name]


def compression(path: Path) -> str:
    """``plain``, ``bgzip`` or ``gzip`` (a gzip file whose first member lacks the BGZF ``BC`` field)."""
    with open(path, "rb") as fh:
        head = fh.read(18)
    if head[:2] != b"\x1f\x8b":
        return "plain"
    return "bgzip" if len(head) >= 14 and head[3] & 4 and head[12:14] == b"BC" else "gzip"


def _check_line_format(path: Path) -> None:
    """Raise for what htslib's FASTA index cannot read but a text editor shows as a fine FASTA: a UTF-8
    byte-order mark (some Windows editors write one) and old Mac line ends (CR only)."""
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
    if head.startswith(b"\xef\xbb\xbf"):
        raise InputError(f"{path}: starts with a UTF-8 byte-order mark, which the FASTA index (samtools faidx) "
                         f"cannot read: remove it (e.g. sed -i '1s/^\\xEF\\xBB\\xBF//' FILE)")
    if b"\r" in head and b"\n" not in head:
        raise InputError(f"{path}: has old Mac line ends (CR only), which the FASTA index (samtools faidx) cannot "
                         f"read: convert them (e.g. tr '\\r' '\\n' < IN > OUT)")


def index_cache_dir() -> Path:
    """Where indexes of FASTAs without one are kept: ``$XDG_CACHE_HOME/evo/fai`` (default ~/.cache)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "evo" / "fai"


class Reference:
    """An indexed FASTA: ``fetch(contig, start, end)``, ``length(contig)``, ``resolve(name)``.

    The index beside the FASTA (``.fai``, and ``.gzi`` for bgzip) is used when present. A missing one is
    never written beside the input (its folder may be read-only, or a checkout): it is built in
    ``index_cache_dir()``, keyed by the FASTA's absolute path, size and modification time, and where
    that cannot be written, in a temporary folder removed on ``close``. A plain-gzip FASTA cannot be
    indexed and fails with a message saying to recompress it with bgzip.
    """

    def __init__(self, path: str | Path):
        import pysam

        if str(path) == "-":  # the convention for stdin elsewhere; "no such file" would puzzle
            raise InputError("-: a reference FASTA is read at random, not from standard input; give a file "
                             "(plain or bgzip)")
        self.path = Path(path)
        if not self.path.exists():
            raise InputError(f"{self.path}: no such file")
        if self.path.is_dir():
            raise InputError(f"{self.path}: is a directory, expected a FASTA file")
        if not self.path.is_file():
            raise InputError(f"{self.path}: is a device or a pipe, not a file; the reference is read at random, "
                             f"so give a FASTA file (plain or bgzip)")
        kind = compression(self.path)
        if kind == "plain":
            _check_line_format(self.path)
        if kind == "gzip":
            raise InputError(f"{self.path}: gzip-compressed FASTA without an index cannot be read at random; "
                             f"recompress it with `bgzip` (or decompress it)")
        self._tmp: tempfile.TemporaryDirectory | None = None
        fai, gzi = Path(f"{self.path}.fai"), Path(f"{self.path}.gzi") if kind == "bgzip" else None
        # a FASTA replaced after indexing gave other bases than its own (REF "mismatches" blaming the
        # build or, with --skip-ref-mismatch, windows of wrong bases)
        if (not fai.is_file() or (gzi is not None and not gzi.is_file())
                or stale_index(self.path, (fai, gzi), "FASTA",
                               "indexing it again elsewhere: refresh it with `samtools faidx`")):
            fai, gzi = self._build_index(gzi is not None)
        try:
            self._fa = pysam.FastaFile(str(self.path), filepath_index=str(fai),
                                       filepath_index_compressed=str(gzi) if gzi else None)
        except (OSError, ValueError) as err:
            self._cleanup()
            raise InputError(f"{self.path}: cannot open as an indexed FASTA ({err})") from None
        self.contigs = dict(zip(list(self._fa.references), list(self._fa.lengths)))
        self._resolved: dict[str, str | None] = {}

    def _build_index(self, bgzip: bool) -> tuple[Path, Path | None]:
        """(fai, gzi or None) built in the cache (or a temporary folder), reused while the FASTA is unchanged."""
        import pysam

        st = self.path.stat()
        key = hashlib.sha256(f"{self.path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:24]
        try:
            folder = index_cache_dir()
            folder.mkdir(parents=True, exist_ok=True)
            probe = tempfile.NamedTemporaryFile(dir=folder, prefix=".probe.")
            probe.close()
        except OSError:
            self._tmp = tempfile.TemporaryDirectory(prefix="evo-fai.")
            folder = Path(self._tmp.name)
        stem = folder / f"{key}.{self.path.name}"
        fai, gzi = Path(f"{stem}.fai"), Path(f"{stem}.gzi") if bgzip else None
        if fai.is_file() and (gzi is None or gzi.is_file()):
            return fai, gzi
        log.info("%s: no index beside it; indexing into %s", self.path, folder)
        # built under temporary names, then renamed: a concurrent run never sees half an index; a killed
        # run's temporary folder (named with its pid) is removed by the next build
        remove_stale_temporaries(stem)
        tmp = Path(tempfile.mkdtemp(prefix=temporary_prefix(stem), dir=folder))
        try:
            args = [str(self.path), "--fai-idx", str(tmp / "fai")] + (["--gzi-idx", str(tmp / "gzi")] if bgzip else [])
            with htslib_messages() as messages:
                try:
                    pysam.faidx(*args)
                except pysam.SamtoolsError:
                    failed = True
                else:
                    failed = False
            if failed:
                reason = htslib_reason(messages)
                if "BGZF" in reason:  # the compressed data itself is cut short or damaged
                    raise InputError(f"{self.path}: cannot index as FASTA ({reason}: the file is truncated or damaged)")
                raise InputError(f"{self.path}: cannot index as FASTA ({reason + '; ' if reason else ''}expected "
                                 f"'>' headers, and lines of one length within each record)")
            # htslib indexes the first of two records of one name and drops the second with a warning:
            # a window would silently come from whichever copy the user did not mean
            dup = next((m for m in messages if "Ignoring duplicate sequence" in m), None)
            if dup is not None:
                name = dup.split('"')[1] if dup.count('"') >= 2 else "?"
                raise InputError(f"{self.path}: holds two records named {name!r}; a reference needs one "
                                 f"record per contig name: rename or remove one")
            if gzi is not None:
                os.replace(tmp / "gzi", gzi)
            os.replace(tmp / "fai", fai)
        except InputError:
            self._cleanup()
            raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return fai, gzi

    def _cleanup(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self._fa.close()
        self._cleanup()

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
        try:
            with quiet_htslib():  # its lines about the failed block: the error below says it in one
                return self._fa.fetch(contig, start, end).upper()
        except (OSError, ValueError):
            raise InputError(f"{self.path}: cannot read {contig}:{start + 1}-{end}: the file is truncated or damaged, "
                             f"or its index (.fai/.gzi) belongs to another file") from None
