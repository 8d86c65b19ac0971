"""Fuzzing the CLI with malformed inputs (hypothesis, bounded): FASTA, VCF, BED, region strings and
numeric options. Every case must end with exactly one line on stderr, a non-zero exit, nothing on
stdout and no file left behind (no output, no temporary, no progress file).

The inputs are malformed by construction (a random corruption of a valid file, or random text that
the parser must refuse), so that a run that exits 0 is a bug, not an unlucky draw. The model is
the tiny conformance checkpoint: each case fails before or right after loading it."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evo_cli.errors import InputError
from evo_cli.io.vcf import parse_region

from .test_cli_score_variants import FA, SNVS, TINY, evo

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# about 8 s for the whole module on one core; derandomized so that CI runs the same cases every time
FUZZ = settings(max_examples=80, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

CONTIG = "GRCh37_chr17_41100001_41300000"
VCF_HEADER = "##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
# a character no FASTA sequence may hold (digits, punctuation, control characters)
BAD_BASE = st.sampled_from(list("0123456789!\"#$%&'()+,/:;<=?@[\\]^_`{|}~\x00\x07"))
TEXT = st.text(st.characters(blacklist_categories=["Cs"]), max_size=40)


def _check_failure(run_dir: Path, args: list, expect_code: int | None = None) -> None:
    before = sorted(p.name for p in run_dir.iterdir())
    code, out, err = evo(*args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0 and (expect_code is None or code == expect_code), (args, code, err)
    assert out == "" and len(lines) == 1 and lines[0].startswith("evo: error: "), (args, err)
    assert "Traceback" not in err
    assert sorted(p.name for p in run_dir.iterdir()) == before, "a file was left behind"


@st.composite
def bad_fasta(draw) -> str:
    good = [(f"s{i}", draw(st.text("ACGTN", min_size=1, max_size=30))) for i in range(draw(st.integers(1, 3)))]
    kind = draw(st.sampled_from(["bad_base", "no_header", "empty_record", "duplicate", "empty_name", "empty"]))
    k = draw(st.integers(0, len(good) - 1))
    if kind == "bad_base":
        seq = good[k][1]
        i = draw(st.integers(0, len(seq)))
        good[k] = (good[k][0], seq[:i] + draw(BAD_BASE) + seq[i:])
    text = "".join(f">{name}\n{seq}\n" for name, seq in good)
    if kind == "no_header":
        text = draw(st.text("ACGTacgtN", min_size=1, max_size=10)) + "\n" + text
    elif kind == "empty_record":
        text += ">empty\n"
    elif kind == "duplicate":
        text += f">{good[k][0]}\nACGT\n"
    elif kind == "empty_name":
        text += ">\nACGT\n"
    elif kind == "empty":
        text = draw(st.sampled_from(["", "\n", "   \n\n"]))
    return text


@FUZZ
@given(text=bad_fasta(), command=st.sampled_from(["score", "embed"]))
def test_malformed_fasta(text, command):
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        fa = d / "in.fa"
        fa.write_text(text)
        out = d / ("o.tsv" if command == "score" else "o.parquet")
        _check_failure(d, [command, "--fasta", fa, "-m", TINY, "-o", out])


def _records() -> list[str]:
    return [line for line in SNVS.read_text().splitlines() if not line.startswith("#")][:4]


@st.composite
def bad_vcf(draw) -> str:
    records = _records()
    kind = draw(st.sampled_from(["no_chrom_line", "ref_mismatch", "pos_text", "few_columns", "garbage_header",
                                 "pos_past_contig"]))
    k = draw(st.integers(0, len(records) - 1))
    cols = records[k].split("\t")
    if kind == "no_chrom_line":
        return "##fileformat=VCFv4.2\n" + "\n".join(records) + "\n"
    if kind == "ref_mismatch":
        cols[3] = draw(st.sampled_from(["A", "C", "G", "T"]).filter(lambda b: b != cols[3]))
    elif kind == "pos_text":
        cols[1] = draw(st.text("abcxyz-.", min_size=1, max_size=5))
    elif kind == "few_columns":
        cols = cols[: draw(st.integers(1, 4))]
    elif kind == "garbage_header":
        return draw(st.text("abc#=<>\t ", min_size=1, max_size=30)) + "\n" + "\n".join(records) + "\n"
    elif kind == "pos_past_contig":
        cols[1] = str(draw(st.integers(200_001, 10**9)))
    records[k] = "\t".join(cols)
    return VCF_HEADER + "\n".join(records) + "\n"


@FUZZ
@given(text=bad_vcf(), ext=st.sampled_from(["vcf", "tsv", "parquet", "vcf.gz"]))
def test_malformed_vcf(text, ext):
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        vcf = d / "in.vcf"
        vcf.write_text(text)
        _check_failure(d, ["score-variants", "--vcf", vcf, "--fasta", FA, "-m", TINY, "--window", 32,
                           "-o", d / f"o.{ext}"])


@st.composite
def bad_bed(draw) -> str:
    kind = draw(st.sampled_from(["not_int", "reversed", "negative", "one_column", "empty"]))
    if kind == "not_int":
        return f"{CONTIG}\t{draw(st.text('abc.-e', min_size=1, max_size=4))}\t100\n"
    if kind == "reversed":
        start = draw(st.integers(1, 10**6))
        return f"{CONTIG}\t{start}\t{draw(st.integers(0, start - 1))}\n"
    if kind == "negative":
        return f"{CONTIG}\t-{draw(st.integers(1, 100))}\t100\n"
    if kind == "one_column":
        return draw(st.text("abc_1", min_size=1, max_size=10)) + "\n"
    return draw(st.sampled_from(["", "\n", "# only a comment\n", "track name=x\n"]))


@FUZZ
@given(text=bad_bed())
def test_malformed_bed(text):
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        bed = d / "r.bed"
        bed.write_text(text)
        _check_failure(d, ["score-variants", "--vcf", SNVS, "--fasta", FA, "-m", TINY, "--window", 32,
                           "--regions", bed, "-o", d / "o.vcf"])


def _unparsable(text: str) -> bool:
    try:
        parse_region(text)
    except InputError:
        return True
    return False


@FUZZ
@given(region=st.one_of(TEXT.filter(_unparsable),
                        st.sampled_from(["::::", "a b:1-2", ":1-2", "chr1:", "chr1:,", "*", "chr1 ", "\t"])
                        .filter(_unparsable)))
def test_unparsable_region(region):
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        _check_failure(d, ["score-variants", "--vcf", SNVS, "--fasta", FA, "-m", TINY, "--region", region,
                           "-o", d / "o.vcf"], expect_code=2)


NUMERIC = {
    ("score-variants", "--window"): 2, ("score-variants", "--batch-size"): 1, ("score-variants", "--chunk-size"): 1,
    ("score", "--batch-size"): 1, ("score", "--chunk-size"): 1,
    ("embed", "--batch-size"): 1, ("embed", "--chunk-size"): 1,
    ("generate", "--n-tokens"): 1, ("generate", "--top-k"): 0, ("generate", "--num-samples"): 1,
    ("generate", "--batch-size"): 1, ("generate", "--prefill-chunk"): 1, ("generate", "--seed"): 0,
}


@FUZZ
@given(option=st.sampled_from(sorted(NUMERIC)), data=st.data())
def test_numeric_options_out_of_range_or_not_numbers(option, data):
    command, flag = option
    value = data.draw(st.one_of(st.integers(max_value=NUMERIC[option] - 1).map(str),
                                st.text("abc.e-x ", min_size=1, max_size=5).filter(lambda t: not t.strip().lstrip("-").isdigit())))
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        base = {"score-variants": ["--vcf", SNVS, "--fasta", FA, "-o", d / "o.vcf"],
                "score": ["--fasta", FA, "-o", d / "o.tsv"],
                "embed": ["--fasta", FA, "-o", d / "o.parquet"],
                "generate": ["-p", "ACGT", "-o", d / "o.fa"]}[command]
        _check_failure(d, [command, "-m", TINY, *base, flag, value], expect_code=2)
