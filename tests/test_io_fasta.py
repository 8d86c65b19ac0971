"""FASTA parsing, its errors, and atomic outputs."""

from __future__ import annotations

import gzip

import pytest
from pysam.libcbgzf import BGZFile

from evo_cli.errors import InputError
from evo_cli.io.atomic import atomic_open
from evo_cli.io.fasta import format_fasta, read_fasta, reverse_complement


def _write(tmp_path, text, name="x.fa"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_multiline_lowercase_and_gzip(tmp_path):
    text = ">a desc here\nACgt\nnn\n\n>b\nTTTT\n"
    recs = read_fasta(_write(tmp_path, text))
    assert [(r.id, r.description, r.sequence) for r in recs] == [("a", "desc here", "ACGTNN"), ("b", "", "TTTT")]
    gz = tmp_path / "x.fa.gz"
    gz.write_bytes(gzip.compress(text.encode()))
    assert read_fasta(gz) == recs
    # bgzip: many gzip members (BGZF blocks of at most 64 kB), read as one stream
    big = ">a\n" + "ACGT" * 40_000 + "\n>b\nTTTT\n"
    with BGZFile(str(tmp_path / "x.fa.bgz"), "wb") as fh:
        fh.write(big.encode())
    assert [len(r.sequence) for r in read_fasta(tmp_path / "x.fa.bgz")] == [160_000, 4]


@pytest.mark.parametrize("text,match", [
    ("ACGT\n", "expected a '>' header"),
    (">a\n>b\nAC\n", "record 'a' has no sequence"),
    (">a\nAC\n>a\nGT\n", "duplicate record id 'a'"),
    (">a\nACXT\n", "'X' at position 3"),
    ("", "no FASTA records"),
    (">\nAC\n", "empty name"),
    ("@read1\nACGT\n+\nIIII\n", r"x.fa:1: FASTQ, not FASTA: convert it first \(e.g. seqtk seq -A IN.fq > OUT.fa\)$"),
])
def test_bad_fasta(tmp_path, text, match):
    with pytest.raises(InputError, match=match):
        read_fasta(_write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_fasta(tmp_path / "nope.fa")
    with pytest.raises(InputError, match="FASTA from standard input is not supported; give a file"):
        read_fasta("-")


def test_a_byte_order_mark_is_dropped(tmp_path):
    """Some Windows editors start a UTF-8 file with a byte-order mark; it was read as the header's
    first character and the file refused as not FASTA."""
    path = tmp_path / "bom.fa"
    path.write_bytes(b"\xef\xbb\xbf>a\nACGT\n")
    gz = tmp_path / "bom.fa.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    for f in (path, gz):
        assert [(r.id, r.sequence) for r in read_fasta(f)] == [("a", "ACGT")]


def test_a_byte_outside_utf8_is_named_as_such(tmp_path):
    """A Latin-1 byte in a sequence was shown as the replacement character ('\ufffd' at position 3),
    which does not tell the user the file is in another encoding."""
    path = tmp_path / "latin1.fa"
    path.write_bytes(b">a caf\xe9\nAC\xe9GT\n")
    with pytest.raises(InputError, match=r"latin1.fa: record 'a' has a byte that is not UTF-8 text \(a binary file, or "
                                         r"text in another encoding such as Latin-1\) at position 3, not a nucleotide"):
        read_fasta(path)
    # in a header it is kept as the replacement character: the record is still read
    path.write_bytes(b">a caf\xe9\nACGT\n")
    assert [(r.id, r.description, r.sequence) for r in read_fasta(path)] == [("a", "caf\ufffd", "ACGT")]


def test_reverse_complement_iupac():
    assert reverse_complement("AACGTNRY") == "RYNACGTT"
    # every IUPAC code against its complement (the bases it stands for, complemented), case kept
    pairs = {"A": "T", "C": "G", "N": "N", "R": "Y", "K": "M", "S": "S", "W": "W", "B": "V", "D": "H"}
    pairs.update({v: k for k, v in pairs.items()})
    for code, comp in pairs.items():
        assert reverse_complement(code + code.lower()) == comp.lower() + comp, code
    assert reverse_complement("acgtNNgg") == "ccNNacgt"


def test_format_fasta_wraps():
    assert format_fasta("s", "ACGTA", width=2) == ">s\nAC\nGT\nA\n"


def test_atomic_open_leaves_nothing_on_error(tmp_path):
    out = tmp_path / "o.txt"
    with pytest.raises(RuntimeError):
        with atomic_open(out) as fh:
            fh.write("partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with atomic_open(out) as fh:
        fh.write("done")
    assert out.read_text() == "done" and len(list(tmp_path.iterdir())) == 1


def test_atomic_output_has_normal_permissions(tmp_path):
    import os

    out = tmp_path / "o.txt"
    with atomic_open(out) as fh:
        fh.write("x")
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask


def test_atomic_output_follows_a_changed_umask(tmp_path):
    import os

    old = os.umask(0o077)
    try:
        with atomic_open(tmp_path / "o.txt") as fh:
            fh.write("x")
    finally:
        os.umask(old)
    assert (tmp_path / "o.txt").stat().st_mode & 0o777 == 0o600


def test_header_id_ends_at_any_whitespace(tmp_path):
    recs = read_fasta(_write(tmp_path, ">id1\tsome desc\nAC\n>id2  \t two\tparts \nGT\n>id3\t\nTT\n"))
    assert [(r.id, r.description) for r in recs] == [("id1", "some desc"), ("id2", "two\tparts"), ("id3", "")]


def test_records_stream_before_the_file_is_read(tmp_path, monkeypatch):
    """The first record comes out after its own lines only, not after the whole file."""
    import io

    import evo_cli.io.fasta as fasta

    path = _write(tmp_path, "")  # exists; the content comes from the generator below
    served = []

    def lines():
        for i, line in enumerate([">a\n", "ACGT\n", ">b\n", "GG\n"] + ["TT\n"] * 1000):
            served.append(i)
            yield line

    class GeneratorFile(io.TextIOBase):
        def __init__(self):
            self._it = lines()

        def __iter__(self):
            return self._it

    monkeypatch.setattr(fasta, "_as_text", lambda raw, errors="replace": raw.close() or GeneratorFile())
    records = fasta.iter_fasta(path)
    assert next(records) == fasta.FastaRecord("a", "", "ACGT")
    assert len(served) == 3  # a's lines and the header that ends it
    second = next(records)
    assert second.id == "b" and len(second.sequence) == 2 + 2000 and len(served) == 1004


def test_truncated_gzip_yields_the_records_before_the_damage(tmp_path):
    import random

    from evo_cli.io.fasta import iter_fasta

    rng = random.Random(0)
    text = ">a\nACGT\n" + ">b\n" + "".join(rng.choice("ACGT") for _ in range(200_000)) + "\n"
    gz = tmp_path / "t.fa.gz"
    data = gzip.compress(text.encode())
    gz.write_bytes(data[: len(data) // 2])
    records = iter_fasta(gz)
    assert next(records).sequence == "ACGT"
    with pytest.raises(InputError, match=r"t\.fa\.gz: cannot read \("):
        next(records)


@pytest.mark.parametrize("magic,what", [(b"BZh91AY&SY", "bzip2"), (b"\xfd7zXZ\x00\x00", "xz"),
                                        (b"\x28\xb5\x2f\xfd\x00", "zstd"), (b"PK\x03\x04\x14\x00", "zip"),
                                        (">a\nACGT\n".encode("utf-16"), "UTF-16")])
def test_other_compressions_and_utf16_are_named(tmp_path, magic, what):
    """A FASTA compressed with another tool than gzip, or saved as UTF-16, was called "not FASTA"."""
    path = tmp_path / "x.fa"
    path.write_bytes(magic + b"\x00" * 20)
    with pytest.raises(InputError) as err:
        read_fasta(path)
    assert str(err.value).startswith(f"{path}: {what}") and "plain, gzip or bgzip" in str(err.value)


def test_an_unreadable_file_is_one_line(tmp_path, monkeypatch):
    import builtins

    path = _write(tmp_path, ">a\nACGT\n")
    real = builtins.open

    def no_permission(file, *args, **kwargs):
        if str(file) == str(path):
            raise PermissionError(13, "Permission denied", str(file))
        return real(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", no_permission)
    with pytest.raises(InputError, match=r"x\.fa: cannot read \(Permission denied\)"):
        read_fasta(path)


def test_a_pipe_is_read_once(tmp_path):
    """A FASTA from a pipe (``--fasta <(zcat x.fa.gz)``), plain or gzip: the file is opened once and its
    magic bytes peeked, where a second open of the pipe waited for a writer that had gone (the reads
    run in threads, so that such a wait fails the test instead of hanging it)."""
    import gzip
    import os
    import threading

    from evo_cli.io.fasta import read_fasta

    text = b">a desc\nACGT\nAC\n>b\nGGTT\n"
    for data in (text, gzip.compress(text)):
        fifo = tmp_path / f"p{len(data)}"
        os.mkfifo(fifo)
        got = []
        threads = [threading.Thread(target=lambda: fifo.write_bytes(data), daemon=True),
                   threading.Thread(target=lambda: got.extend((r.id, r.sequence) for r in read_fasta(fifo)), daemon=True)]
        for t in threads:
            t.start()
        threads[1].join(10)
        assert not threads[1].is_alive() and got == [("a", "ACGTAC"), ("b", "GGTT")]
