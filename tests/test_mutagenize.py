"""``evo mutagenize``: deltas equal score-variants on the equivalent VCF, outputs, tracks, resume, errors."""

from __future__ import annotations

import gzip
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pysam
import pytest

from evo_cli.errors import OutputError
from evo_cli.io.fasta import format_fasta
from evo_cli.mutagenesis import run_mutagenize

from .conftest import CONFORMANCE, DATA
from .test_cli_score_variants import evo

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = CONFORMANCE / "evo2" / "tiny_a"
FA = DATA / "brca1" / "GRCh37_chr17_41100001-41300000.fa"
CHROM = "GRCh37_chr17_41100001_41300000"
ECOLI = Path(__file__).resolve().parent.parent / "examples" / "data" / "ecoli_first20kb.fa"


def equivalent_vcf(df: pd.DataFrame, path: Path, contig_length: int) -> Path:
    """The SNVs of a mutagenesis table as a VCF, three records per position as saturation screens list them."""
    chrom = df.chrom.iloc[0]
    lines = ["##fileformat=VCFv4.2", f"##contig=<ID={chrom},length={contig_length}>",
             "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO"]
    lines += [f"{r.chrom}\t{r.pos}\t.\t{r.ref}\t{r.alt}\t.\t.\t." for r in df.itertuples()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _compare_with_score_variants(model, fasta, region, contig_length, window, strand, tmp_path, reduce="mean",
                                 extra=()):
    """``extra``: mutagenize options only (batching, chunks), which must not change the numbers."""
    out = tmp_path / "scan.tsv"
    code, _, err = evo("mutagenize", "--fasta", fasta, "--region", region, "-m", model, "--window", window,
                       "--strand", strand, "--reduce", reduce, "--batch-size", 4, *extra, "-o", out)
    assert code == 0, err
    df = pd.read_csv(out, sep="\t")
    start, end = map(int, region.rsplit(":", 1)[1].split("-"))
    assert list(df.pos) == [p for p in range(start, end + 1) for _ in range(3)]
    assert all(set(g.alt) | {g.ref.iloc[0]} == set("ACGT") for _, g in df.groupby("pos"))
    vcf = equivalent_vcf(df, tmp_path / "snvs.vcf", contig_length)
    code, _, err = evo("score-variants", "--vcf", vcf, "--fasta", fasta, "-m", model, "--window", window,
                       "--strand", strand, "--reduce", reduce, "-o", tmp_path / "sv.tsv")
    assert code == 0, err
    sv = pd.read_csv(tmp_path / "sv.tsv", sep="\t")
    assert (sv.status == "ok").all() and list(sv.pos) == list(df.pos) and list(sv.alt) == list(df.alt)
    for col in ("ref_ll", "alt_ll", "delta"):
        assert np.abs(df[col] - sv[col]).max() < 1e-5, col
    assert (df.delta != 0).all()
    return df


@pytest.mark.parametrize("strand", ["forward", "both"])
def test_brca1_deltas_equal_score_variants(strand, tmp_path):
    _compare_with_score_variants(TINY, FA, f"{CHROM}:97718-97729", 200_000, 96, strand, tmp_path)


def test_summed_deltas_equal_score_variants(tmp_path):
    """``--reduce sum``, as score-variants has it: deltas are whole-window log-likelihood ratios."""
    mean = _compare_with_score_variants("evo-demo", ECOLI, "NC_000913.3:337-339", 20_000, 64, "forward", tmp_path)
    total = _compare_with_score_variants("evo-demo", ECOLI, "NC_000913.3:337-339", 20_000, 64, "forward", tmp_path,
                                         reduce="sum")
    # the mean over the 63 scored positions of a 64-base window
    assert np.allclose(total.delta / 63, mean.delta, atol=1e-9, rtol=0)


@pytest.mark.parametrize("strand", ["forward", "both"])
def test_evo_demo_deltas_equal_score_variants(strand, tmp_path):
    # positions 1-8 have windows clipped at the contig start: one REF window shared by all of them
    _compare_with_score_variants("evo-demo", ECOLI, "NC_000913.3:1-8", 20_000, 64, strand, tmp_path)
    _compare_with_score_variants("evo-demo", ECOLI, "NC_000913.3:337-342", 20_000, 64, strand, tmp_path)


def test_evo_demo_deltas_at_the_contig_end_in_chunks_equal_score_variants(tmp_path):
    """Windows clipped at the contig's end (an odd window, both strands), run by mutagenize in chunks of
    5 tokens, one window per pass: score-variants' numbers on whole windows."""
    _compare_with_score_variants("evo-demo", ECOLI, "NC_000913.3:19996-20000", 20_000, 21, "both", tmp_path,
                                 extra=("--chunk-size", 5, "--batch-size", 1))


def test_record_bed_vcf_output_and_tracks(tmp_path):
    fasta = tmp_path / "designs.fa"
    fasta.write_text(format_fasta("d1", "ACGTTGCAAGGN") + format_fasta("d2", "TTGACA"))
    code, _, err = evo("mutagenize", "--fasta", fasta, "--record", "d1", "-m", TINY, "--window", 32,
                       "-o", tmp_path / "d1.vcf.gz", "--bedgraph", tmp_path / "d1.bedGraph")
    assert code == 0, err
    assert "33 variants at 11 of 12 positions" in err and "non_acgt_reference_base 1" in err
    assert "non_dna_reference" not in err  # N is a nucleotide code: its window is scored, the position is not
    code, _, err = evo("mutagenize", "--fasta", fasta, "--record", "d1", "-m", TINY, "--window", 32,
                       "-o", tmp_path / "d1.tsv")
    assert code == 0, err
    table = pd.read_csv(tmp_path / "d1.tsv", sep="\t")
    with pysam.VariantFile(str(tmp_path / "d1.vcf.gz")) as vf:
        recs = list(vf.fetch("d1", 0, 12))  # fetch needs the tabix index
    assert len(recs) == 11 and Path(str(tmp_path / "d1.vcf.gz") + ".tbi").is_file()
    vcf_delta = [d for r in recs for d in r.info["EVO_DELTA"]]
    assert [a for r in recs for a in r.alts] == list(table.alt)
    assert np.abs(np.array(vcf_delta) - table.delta).max() < 1e-5  # float32 in the VCF
    # bedGraph read by pandas: 0-based starts, one base each, the mean delta of the position
    bg = pd.read_csv(tmp_path / "d1.bedGraph", sep="\t", skiprows=1, header=None, names=["chrom", "start", "end", "v"])
    mean = table.groupby("pos").delta.mean()
    assert list(bg.start) == [p - 1 for p in mean.index] and (bg.end == bg.start + 1).all()
    assert np.abs(bg.v.to_numpy() - mean.to_numpy()).max() < 1e-5
    # a BED interval (0-based) is the same positions as the region
    (tmp_path / "r.bed").write_text("d1\t2\t5\n")
    code, _, err = evo("mutagenize", "--fasta", fasta, "--regions", tmp_path / "r.bed", "-m", TINY, "--window", 32,
                       "-o", tmp_path / "bed.parquet", "--bedgraph", tmp_path / "bed.bw")
    assert code == 0, err
    part = pd.read_parquet(tmp_path / "bed.parquet")
    assert list(part.pos.unique()) == [3, 4, 5]
    assert np.abs(part.delta.to_numpy() - table[table.pos.between(3, 5)].delta.to_numpy()).max() < 1e-5  # other chunks
    import pyBigWig

    bw = pyBigWig.open(str(tmp_path / "bed.bw"))
    assert bw.chroms() == {"d1": 12}  # the contigs of the targets
    assert np.allclose(bw.values("d1", 2, 5), mean.loc[3:5].to_numpy(), atol=1e-6)
    bw.close()


def test_resume_gives_identical_output(tmp_path):
    import evo_cli

    model = evo_cli.load_model(TINY, device="cpu", dtype="float32")
    region = [f"{CHROM}:97700-97709"]
    args = ["mutagenize", "--fasta", FA, "--region", region[0], "-m", TINY, "--window", 48, "--batch-size", 2]
    code, _, err = evo(*args, "-o", tmp_path / "full.tsv")
    assert code == 0, err

    class Stop(Exception):
        pass

    done = []

    def stop_after_two_chunks(n):
        done.append(n)
        if len(done) == 2:
            raise Stop

    from evo_cli.io.vcf import parse_region

    with pytest.raises(Stop):
        run_mutagenize(model, FA, tmp_path / "out.tsv", regions=[parse_region(region[0])], window=48, batch_size=2,
                       model_name=str(TINY), progress=stop_after_two_chunks)
    partial = Path(str(tmp_path / "out.tsv") + ".evo-partial")
    assert partial.read_text().count("\n") == 3 and not (tmp_path / "out.tsv").exists()
    # progress as ranks of a torchrun job leave it: chunk 1 alone, in rank 1's file (chunk 0 missing)
    head, _, chunk1 = partial.read_text().splitlines()
    gap = tmp_path / "gap.tsv"
    Path(str(gap) + ".evo-partial.1").write_text(head + "\n" + chunk1 + "\n")
    code, _, err = evo(*args, "-o", gap, "--resume")
    assert code == 0, err
    assert "2 positions done before resuming" in err and gap.read_text() == (tmp_path / "full.tsv").read_text()
    code, _, err = evo(*args, "-o", tmp_path / "out.tsv")
    assert code == 1 and "add --resume" in err
    code, _, err = evo(*args, "-o", tmp_path / "out.tsv", "--window", 64, "--resume")
    assert code == 1 and "settings differ" in err and "window" in err
    code, _, err = evo(*args, "-o", tmp_path / "out.tsv", "--resume")
    assert code == 0, err
    assert "4 positions done before resuming" in err and not partial.exists()
    full, resumed = (tmp_path / "full.tsv").read_text(), (tmp_path / "out.tsv").read_text()
    assert resumed == full


def test_bad_inputs_end_in_one_line(tmp_path, monkeypatch):
    fasta = tmp_path / "n.fa"
    fasta.write_text(format_fasta("seqN", "ACGTNNNNNNNNACGT"))
    cases = [
        (["--fasta", FA, "--region", f"{CHROM}:199990-200010"], "outside contig"),
        (["--fasta", FA, "--region", "chrX:1-10"], "is not in"),
        (["--fasta", fasta, "--record", "nope"], "record 'nope' is not in n.fa or has no bases (it has seqN)"),
        (["--fasta", fasta, "--region", "seqN:6-10"], "no A, C, G or T to mutate"),
        (["--fasta", fasta], "give --region, --regions BED or --record"),
        (["--fasta", fasta, "--record", "seqN", "--plot", tmp_path / "x.jpg"], "a plot is .png, .svg, .pdf or .html"),
        (["--fasta", fasta, "--record", "seqN", "--bedgraph", tmp_path / "x.wig"], "a track is .bedGraph"),
        (["--fasta", "-", "--record", "seqN"], "-: a reference FASTA is read at random, not from standard input"),
    ]
    for extra, message in cases:
        code, _, err = evo("mutagenize", *extra, "-m", "no-such-model-needed", "-o", tmp_path / "o.tsv")
        assert code != 0 and message in err, (extra, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    code, _, err = evo("mutagenize", "--fasta", fasta, "--record", "seqN", "-m", TINY, "-o", tmp_path / "o.vcf")
    assert code == 2 and "cannot tell the output format" in err
    # a --format that contradicts the name: text under a bgzip name was written
    code, _, err = evo("mutagenize", "--fasta", fasta, "--record", "seqN", "-m", "x", "-o", tmp_path / "o.vcf.gz",
                       "--format", "tsv")
    assert code == 2 and "--format tsv contradicts" in err and not (tmp_path / "o.vcf.gz").exists()
    for output in ("-", ""):  # "" is stdout too: it was refused only after the model had loaded
        code, _, err = evo("mutagenize", "--fasta", fasta, "--record", "seqN", "-m", "x", "-o", output, "--resume")
        assert code == 2 and "--resume needs an output file" in err, err
    # without matplotlib: one line naming the extra, before any model is loaded
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, _, err = evo("mutagenize", "--fasta", fasta, "--record", "seqN", "-m", "x", "-o", tmp_path / "o.tsv",
                       "--plot", tmp_path / "o.png")
    assert code == 1 and err.strip() == 'evo: error: plotting needs matplotlib: pip install "evo-cli[plot]"'


def test_score_bedgraph_matches_per_position(tmp_path):
    fasta = tmp_path / "s.fa"
    fasta.write_text(format_fasta("a", "ACGTTGCAAGGTAC") + format_fasta("b", "TTGACAGG"))
    code, _, err = evo("score", "--fasta", fasta, "-m", TINY, "-o", tmp_path / "s.tsv", "--per-position",
                       tmp_path / "p.tsv", "--bedgraph", tmp_path / "s.bedGraph.gz")
    assert code == 0, err
    pos = pd.read_csv(tmp_path / "p.tsv", sep="\t")
    with gzip.open(tmp_path / "s.bedGraph.gz", "rt") as fh:
        assert fh.readline().startswith("track type=bedGraph")
    bg = pd.read_csv(tmp_path / "s.bedGraph.gz", sep="\t", skiprows=1, header=None, names=["chrom", "s", "e", "v"])
    assert list(bg.chrom) == list(pos["id"]) and list(bg.s + 1) == list(pos.pos) and (bg.e == bg.s + 1).all()
    assert np.abs(bg.v - pos.logprob).max() < 1e-5


def test_plot_of_a_record_with_n_and_no_output_when_drawing_fails(tmp_path, monkeypatch):
    """--plot of a region with an N inside draws it (was a TypeError after the whole run); a figure
    that cannot be drawn fails the run before any output is written, and the progress stays."""
    from evo_cli import plots

    fasta = tmp_path / "n.fa"
    fasta.write_text(format_fasta("d1", "ACGTNNACGTTG"))
    args = ["mutagenize", "--fasta", fasta, "--record", "d1", "-m", TINY, "--window", 16]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "Mean of empty slice" would reach the user's terminal
        code, _, err = evo(*args, "-o", tmp_path / "d.tsv", "--plot", tmp_path / "d.png")
    assert code == 0, err
    assert (tmp_path / "d.png").read_bytes()[:4] == b"\x89PNG"

    def fail(message):
        def raise_error(*a, **k):
            raise OutputError(message)

        return raise_error

    # drawing fails, or writing the figure does (a full disk): the main output is written last
    for name, message in [("plot_mutagenesis", "cannot draw"), ("save", "cannot write e.png: No space left")]:
        with monkeypatch.context() as patch:
            patch.setattr(plots, name, fail(message))
            code, _, err = evo(*args, "-o", tmp_path / "e.vcf.gz", "--plot", tmp_path / "e.png",
                               "--bedgraph", tmp_path / "e.bedGraph", "--resume")
        assert code != 0 and err.strip().splitlines()[-1] == f"evo: error: {message}"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["d.png", "d.tsv", "e.vcf.gz.evo-partial", "n.fa"]
    code, _, err = evo(*args, "-o", tmp_path / "e.vcf.gz", "--plot", tmp_path / "e.png", "--resume")
    assert code == 0 and "12 positions done before resuming" in err, err


@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_one_base_windows_are_skipped(reduce, tmp_path):
    """A window of one base has nothing to score (bases 2..n): a 1-base record, or --window 2 at a
    contig start. Skipped with a reason, not a NaN error blaming the checkpoint nor a sum of 0."""
    fasta = tmp_path / "s.fa"
    fasta.write_text(format_fasta("one", "A") + format_fasta("two", "ACGT"))
    code, _, err = evo("mutagenize", "--fasta", fasta, "--record", "one", "--record", "two", "-m", TINY,
                       "--window", 2, "--reduce", reduce, "-o", tmp_path / "o.tsv")
    assert code == 0, err
    assert "9 variants at 3 of 5 positions" in err and "window_under_2_bases 2" in err
    df = pd.read_csv(tmp_path / "o.tsv", sep="\t")
    assert list(df.pos.unique()) == [2, 3, 4] and set(df.chrom) == {"two"} and df.delta.notna().all()


def test_rate_counts_scored_variants_only(tmp_path, monkeypatch):
    """The summary's variants/s counts the variants scored by this run: not N positions (skipped,
    no model work), nor those an interrupted run scored before --resume."""
    import types

    import evo_cli
    import evo_cli.mutagenesis as mut
    from evo_cli.io.vcf import parse_region

    def clock_of(seconds):  # run_mutagenize reads the clock at its start and its end
        ticks = iter([0.0, seconds])
        monkeypatch.setattr(mut, "time", types.SimpleNamespace(perf_counter=lambda: next(ticks)))

    fasta = tmp_path / "n.fa"
    fasta.write_text(format_fasta("d1", "ACG" + "N" * 297))
    args = ["mutagenize", "--fasta", fasta, "--record", "d1", "-m", TINY, "--window", 8, "--batch-size", 2]
    clock_of(10.0)
    code, _, err = evo(*args, "-o", tmp_path / "a.tsv")
    assert code == 0, err
    assert "scored 9 variants at 3 of 300 positions in 10.0 s, 0.9 variants/s" in err  # was 90.0

    class Stop(Exception):
        pass

    def stop(n):
        raise Stop

    # an interrupted run scored the first chunk (2 positions); the resumed run scores 1
    model = evo_cli.load_model(TINY, device="cpu", dtype="float32")
    clock_of(1.0)
    with pytest.raises(Stop):
        run_mutagenize(model, fasta, tmp_path / "b.tsv", regions=[parse_region("d1")], window=8, batch_size=2,
                       model_name=str(TINY), progress=stop)
    clock_of(10.0)
    code, _, err = evo(*args, "-o", tmp_path / "b.tsv", "--resume")
    assert code == 0, err
    assert "in 10.0 s, 0.3 variants/s; 2 positions done before resuming" in err
    assert (tmp_path / "b.tsv").read_text() == (tmp_path / "a.tsv").read_text()


def test_a_whole_genome_is_refused_in_one_line_before_the_model_loads(tmp_path, monkeypatch):
    """A region of millions of positions (a chromosome named alone) would run for weeks and hold every
    position in memory at its end: one line, before the model loads, and no file."""
    import evo_cli.cli.mutagenize

    monkeypatch.setattr(evo_cli.cli.mutagenize, "load_model_cli", lambda *a, **k: pytest.fail("the model was loaded"))
    fasta = tmp_path / "genome.fa"
    fasta.write_text(format_fasta("chr", "ACGT" * 300_000))
    for args, n in [(["--region", "chr"], "1,200,000"), (["--record", "chr"], "1,200,000"),
                    # 600,001 + 400,001 positions: the limit is on the run, not on each region
                    (["--region", "chr:1-600001", "--region", "chr:700001-1100001"], "1,000,002")]:
        code, out, err = evo("mutagenize", "--fasta", fasta, *args, "-m", "evo-demo", "-o", tmp_path / "o.tsv",
                             "--plot", tmp_path / "o.png")
        assert code == 1 and out == "" and err.count("\n") == 1 and "Traceback" not in err, err
        assert f"{n} positions to mutate, more than the 1,000,000 of one run" in err, err
        assert not list(tmp_path.glob("o.*"))


@pytest.mark.parametrize("args", [["-o", "x.png", "--format", "tsv", "--plot", "x.png"],
                                  ["-o", "x.bedGraph", "--format", "vcf.gz", "--bedgraph", "./sub/../x.bedGraph"]])
def test_two_outputs_on_one_file_fail_before_the_model_loads(args, tmp_path, monkeypatch):
    """--format lets the table take the figure's or the track's name: the table was written over it."""
    import evo_cli.cli.mutagenize

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(evo_cli.cli.mutagenize, "load_model_cli", lambda *a, **k: pytest.fail("the model was loaded"))
    (tmp_path / "in.fa").write_text(format_fasta("s", "ACGTACGT"))
    code, out, err = evo("mutagenize", "--fasta", "in.fa", "--record", "s", "-m", "evo-demo", *args)
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert f"{args[-2]} {args[-1]} and -o {args[1]} are both one output" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.fa"]
