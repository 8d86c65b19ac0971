"""FASTA parsing, its errors, and atomic outputs."""

from __future__ import annotations

import gzip

import pytest

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


@pytest.mark.parametrize("text,match", [
    ("ACGT\n", "expected a '>' header"),
    (">a\n>b\nAC\n", "record 'a' has no sequence"),
    (">a\nAC\n>a\nGT\n", "duplicate record id 'a'"),
    (">a\nACXT\n", "'X' at position 3"),
    ("", "no FASTA records"),
    (">\nAC\n", "empty name"),
])
def test_bad_fasta(tmp_path, text, match):
    with pytest.raises(InputError, match=match):
        read_fasta(_write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_fasta(tmp_path / "nope.fa")


def test_reverse_complement_iupac():
    assert reverse_complement("AACGTNRY") == "RYNACGTT"


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
