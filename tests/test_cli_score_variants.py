"""``evo score-variants`` end to end: deltas against full-window ``evo score``, outputs read back, every
edge-case VCF, regions, and resuming after a kill."""

import contextlib
import gzip
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pysam
import pytest

import evo_cli
from evo_cli.cli.main import main
from evo_cli.io.fasta import format_fasta, read_fasta, reverse_complement

from .conftest import CONFORMANCE, DATA

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = CONFORMANCE / "evo2" / "tiny_a"
BRCA1 = DATA / "brca1"
FA = BRCA1 / "GRCh37_chr17_41100001-41300000.fa"
SNVS = BRCA1 / "brca1_sge_first48.region.vcf"
INDELS = BRCA1 / "brca1_indels.region.vcf"
EDGE = DATA / "vcf_edge_cases"


def evo(*args) -> tuple[int, str, str]:
    """Run ``evo ARGS`` in this process: (exit code, stdout, stderr)."""
    out, err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8"), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code
    out.seek(0)
    return code, out.read(), err.getvalue()


def _summary(stderr: str) -> tuple[int, dict]:
    """(scored, {reason: n}) from the closing summary lines."""
    scored = int(next(line for line in stderr.splitlines() if "evo: scored" in line).split()[2].replace(",", ""))
    skipped = {}
    for line in stderr.splitlines():
        if line.startswith("evo: skipped"):
            for part in line.split(": ", 2)[2].split(", "):
                reason, n = part.rsplit(" ", 1)
                skipped[reason] = int(n.replace(",", ""))
    return scored, skipped


def _window_pair(seq: str, start: int, ref: str, alt: str, w: int) -> tuple[str, str]:
    """The documented window rule, restated: the REF window clipped to the contig, and the ALT window with
    the same left flank, ALT in place of REF, then the bases after REF, cut to the REF window's length."""
    lo, hi = max(0, start - w // 2), min(len(seq), start - w // 2 + w)
    return seq[lo:hi], (seq[lo:start] + alt + seq[start + len(ref) :])[: hi - lo]


@pytest.mark.parametrize("vcf,strand", [(SNVS, "forward"), (INDELS, "forward"), (INDELS, "both")],
                         ids=["snvs", "indels", "indels-both-strands"])
def test_deltas_equal_evo_score_of_full_windows(vcf, strand, tmp_path):
    out = tmp_path / "scores.tsv"
    code, _, err = evo("score-variants", "--vcf", vcf, "--fasta", FA, "-m", TINY, "--window", 96, "--strand", strand,
                       "--batch-size", 4, "-o", out)
    assert code == 0, err
    df = pd.read_csv(out, sep="\t")
    assert (df.status == "ok").all() and len(df) == (48 if vcf == SNVS else 14)
    seq = read_fasta(FA)[0].sequence
    pairs = [_window_pair(seq, r.pos - 1, r.ref, r.alt, 96) for r in df.itertuples()]
    strands = [lambda s: s] + ([reverse_complement] if strand == "both" else [])
    windows = sorted({f(w) for pair in pairs for w in pair for f in strands})
    (tmp_path / "windows.fa").write_text("".join(format_fasta(f"w{i}", w) for i, w in enumerate(windows)))
    code, _, err = evo("score", "--fasta", tmp_path / "windows.fa", "-m", TINY, "-o", tmp_path / "windows.tsv")
    assert code == 0, err
    full = dict(zip(windows, pd.read_csv(tmp_path / "windows.tsv", sep="\t").mean_ll))
    ref_ll = np.array([np.mean([full[f(r)] for f in strands]) for r, _ in pairs])
    alt_ll = np.array([np.mean([full[f(a)] for f in strands]) for _, a in pairs])
    assert np.abs(df.ref_ll - ref_ll).max() < 1e-5 and np.abs(df.alt_ll - alt_ll).max() < 1e-5
    assert np.abs(df.delta - (alt_ll - ref_ll)).max() < 1e-5
    assert (df.delta != 0).all()


def test_outputs_agree_and_read_back(tmp_path):
    outs = {fmt: tmp_path / f"scores.{fmt}" for fmt in ("vcf", "vcf.gz", "tsv", "parquet")}
    for fmt, out in outs.items():
        code, _, err = evo("score-variants", "--vcf", INDELS, "--fasta", FA, "-m", TINY, "--window", 64, "-o", out)
        assert code == 0, err
    assert "scored 14 of 14 variants (11 records)" in err
    tsv = pd.read_csv(outs["tsv"], sep="\t")
    assert list(tsv.columns) == ["chrom", "pos", "id", "ref", "alt", "ref_ll", "alt_ll", "delta", "status"]
    pd.testing.assert_frame_equal(pd.read_parquet(outs["parquet"]), tsv, check_dtype=False)
    meta = json.loads(pq.read_schema(outs["parquet"]).metadata[b"evo"])
    assert meta["window"] == 64 and meta["strand"] == "forward" and meta["version"] == evo_cli.__version__
    assert meta["reduce"] == "mean" and meta["command"].startswith("evo score-variants --vcf")
    # the Python API gives the same table
    model = evo_cli.load_model(TINY, device="cpu", dtype="float32")
    api = evo_cli.score_variants(model, INDELS, FA, window=64)
    pd.testing.assert_frame_equal(api, tsv, check_dtype=False)
    assert api.attrs["summary"] == {"records": 11, "variants": 14, "scored": 14, "skipped": {}}
    # multi-allelic: one REF score per record; the same site twice gives the same numbers
    multi = tsv[tsv.pos == 98050]
    assert len(multi) == 4 and multi.ref_ll.nunique() == 1 and multi.alt_ll.nunique() == 3
    assert multi[multi.id == "dup_of_multi_del"].alt_ll.item() == multi[multi.alt == "T"].alt_ll.iloc[0]
    # VCF: INFO per ALT, header lines; .vcf.gz is the same text, bgzipped and indexed
    text = outs["vcf"].read_text()
    for line in ("##evo_window=64", "##evo_strand=forward", "##evo_dtype=float32", f"##evo_version={evo_cli.__version__}",
                 f"##evo_model={TINY}", "##INFO=<ID=EVO_DELTA,Number=A,Type=Float",
                 "##INFO=<ID=EVO_STATUS,Number=A,Type=String"):
        assert line in text
    with gzip.open(outs["vcf.gz"], "rt") as fh:
        assert fh.read().replace("scores.vcf.gz ", "scores.vcf ").replace("--format vcf.gz ", "--format vcf ") == text
    assert (tmp_path / "scores.vcf.gz.tbi").exists()
    with pysam.VariantFile(str(outs["vcf"])) as vf:
        recs = list(vf)
    assert [r.id for r in recs] == list(dict.fromkeys(tsv.id))
    deltas = [d for r in recs for d in r.info["EVO_DELTA"]]
    assert np.allclose(deltas, tsv.delta, rtol=1e-6, atol=1e-9)
    assert [len(r.info["EVO_ALT_LL"]) for r in recs] == [len(r.alts) for r in recs]
    assert [s for r in recs for s in r.info["EVO_STATUS"]] == ["ok"] * 14  # as the table's status column


def _synthetic_fasta(vcf: Path, out: Path, cap: int = 2_000_000) -> Path:
    """A random reference that carries each record's REF at its position (contigs cut at ``cap`` bases)."""
    with pysam.VariantFile(str(vcf)) as vf:
        recs = [(r.chrom, r.start, r.ref.upper()) for r in vf]
    rng = np.random.default_rng(0)
    with open(out, "w") as fh:
        for contig in dict.fromkeys(c for c, _, _ in recs):
            mine = [(s, ref) for c, s, ref in recs if c == contig and s + len(ref) <= cap]
            seq = bytearray(rng.choice(np.frombuffer(b"ACGT", np.uint8), max((s + len(r) for s, r in mine), default=0) + 50))
            for s, ref in mine:
                if set(ref) <= set("ACGTN"):
                    seq[s : s + len(ref)] = ref.encode()
            fh.write(f">{contig}\n{seq.decode()}\n")
    return out


# file -> (FASTA or None for a synthetic one, extra arguments, error without --skip-ref-mismatch or None,
#          scored ALTs, skipped ALTs by reason)
EDGE_CASES = {
    "bcftools/fixref.3.vcf": ("bcftools/fixref.3.fa", [], None, 8, {}),
    "bcftools/norm.breakend.1.vcf": ("bcftools/norm.breakend.1.fa", [], None, 0, {"breakend": 2}),
    "bcftools/norm.check-ref.vcf": ("bcftools/norm.check-ref.fa", [],
                                    "chr1:11: REF C does not match the FASTA (norm.check-ref.fa has T)",
                                    0, {"ref_mismatch": 1}),
    "bcftools/norm.iupac.vcf": ("bcftools/norm.iupac.fa", [], "1:8: REF BA does not match the FASTA (norm.iupac.fa has NA)",
                                0, {"ref_mismatch": 1}),
    "bcftools/norm.symbolic.vcf": ("bcftools/norm.symbolic.fa", [], None, 2, {"symbolic": 2}),
    "bcftools/norm.vcf": ("bcftools/norm.fa", [], "1:60: REF A does not match the FASTA (norm.fa has C)", 31,
                          {"ref_mismatch": 1, "no_alt": 1, "star_allele": 1, "invalid_allele": 1,
                           "alt_window_equals_ref": 4}),  # 3:10, (AC)n insertions running past the window
    "cyvcf2/multi-contig.vcf.gz": (None, [], None, 11, {"no_alt": 2}),
    "cyvcf2/no-seq-names.vcf": (None, [], None, 1, {}),
    "cyvcf2/o.vcf.gz": (None, [], "chr1:3769970: REF A runs past the end of contig chr1 (50 bp) in ref.fa", 31,
                        {"past_contig_end": 2056}),
    "cyvcf2/test-invalid-header.vcf": ("bcftools/norm.fa", [], "not a valid VCF/BCF", None, None),
    "derived/brca1_sge_first24.chr17.vcf": ("../brca1/GRCh37_chr17_BRCA1locus_Npadded.fa.gz", [], None, 24, {}),
    "ga4gh_compliance/brca1_1kgPhase3_variants.vcf": ("ga4gh_compliance/ref_brca1.fa",
                                                      ["--region", "ref_brca1:25000-27000"], None, 50, {"symbolic": 1}),
    "htslib/test-vcf-hdr-in.vcf": (None, [], "1:12065947: REF C runs past the end of contig 1", 0,
                                   {"past_contig_end": 10, "no_alt": 2}),
    "htslib/vcf44_1.vcf": (None, [], None, 28, {}),
    "htslib/weird-chr-names.vcf": (None, [], None, 6, {}),
    "pysam/ex1.vcf.gz": (None, [], "chr1:12939904: REF A runs past the end of contig chr1", 8, {"past_contig_end": 157}),
    "pysam/example_vcf43_with_utf8.vcf": (None, [], "20:2345678: REF G runs past the end of contig 20", 6,
                                          {"no_alt": 1, "past_contig_end": 1}),
    "pysam/gnomad.vcf": (None, [], "22:16050036: REF A runs past the end of contig 22", 0, {"past_contig_end": 10}),
}


def test_every_edge_case_file_is_covered():
    assert sorted(str(p.relative_to(EDGE)) for p in EDGE.rglob("*.vcf*")) == sorted(EDGE_CASES)


@pytest.mark.parametrize("name", sorted(EDGE_CASES))
def test_edge_case_scores_or_fails_clearly(name, tmp_path):
    fasta, extra, error, scored, skipped = EDGE_CASES[name]
    vcf = EDGE / name
    fa = EDGE / fasta if fasta else _synthetic_fasta(vcf, tmp_path / "ref.fa")
    out = tmp_path / "out.vcf"
    args = ["score-variants", "--vcf", vcf, "--fasta", fa, "-m", TINY, "--window", 64, "-o", out, *extra]
    code, _, err = evo(*args)
    assert "Traceback" not in err and "run with -v" not in err
    if error:
        assert code == 1 and error in err and err.count("evo: error") == 1 and not out.exists()
        if scored is None:
            return
        code, _, err = evo(*args, "--skip-ref-mismatch")
    assert code == 0, err
    assert _summary(err) == (scored, skipped)
    with pysam.VariantFile(str(out)) as vf:
        recs = list(vf)
    values = [d for r in recs for d in r.info.get("EVO_DELTA", ())]
    assert sum(v is not None for v in values) == scored
    # every record says why each ALT was (not) scored: the summary's counts, per ALT
    assert Counter(s for r in recs for s in r.info["EVO_STATUS"]) == Counter({"ok": scored, **skipped})


def test_regions_select_variants(tmp_path):
    contig = "GRCh37_chr17_41100001_41300000"
    bed = tmp_path / "r.bed"
    bed.write_text(f"{contig}\t97729\t97731\n")  # POS 97730 and 97731
    gz = pysam.tabix_index(str(shutil.copy(SNVS, tmp_path / "snvs.vcf")), preset="vcf", keep_original=True)
    for vcf in (SNVS, gz):
        out = tmp_path / "r.tsv"
        code, _, err = evo("score-variants", "--vcf", vcf, "--fasta", FA, "-m", TINY, "--window", 64, "-o", out,
                           "--region", f"{contig}:97724-97724", "--regions", bed)
        assert code == 0, err
        df = pd.read_csv(out, sep="\t")
        assert list(df.pos) == [97724] * 3 + [97730] * 3 + [97731] * 3 and (df.status == "ok").all()


def test_bad_inputs_end_in_one_line(tmp_path):
    plain_gz = tmp_path / "ref.fa.gz"
    plain_gz.write_bytes(gzip.compress(FA.read_bytes()))
    cases = [
        (["--vcf", tmp_path / "missing.vcf", "--fasta", FA, "-o", tmp_path / "o.tsv"], "missing.vcf: no such file"),
        (["--vcf", SNVS, "--fasta", plain_gz, "-o", tmp_path / "o.tsv"], "recompress it with `bgzip`"),
        (["--vcf", SNVS, "--fasta", FA, "-o", tmp_path / "o.csv"], "cannot tell the output format"),
        (["--vcf", SNVS, "--fasta", FA, "-o", tmp_path / "o.tsv", "--regions", tmp_path / "no.bed"], "no.bed: no such file"),
    ]
    for args, message in cases:
        code, _, err = evo("score-variants", "-m", TINY, "--window", 64, *args)
        assert code != 0 and message in err and "Traceback" not in err, err
        assert len([line for line in err.splitlines() if line.strip()]) == 1, err
    for output in ("-", ""):  # "" is stdout too: it failed after the model had loaded
        code, _, err = evo("score-variants", "-m", TINY, "--vcf", SNVS, "--fasta", FA, "-o", output, "--resume")
        assert code == 2 and err == ("evo: error: --resume needs an output file (-o PATH), not stdout "
                                     "(see `evo score-variants --help`)\n")  # a usage error, in one line
    # a VCF none of whose contigs is in the FASTA: an error naming the first contigs of both, before the model loads
    out = tmp_path / "none.vcf"
    code, _, err = evo("score-variants", "-m", tmp_path / "no_model", "--window", 64, "--vcf",
                       EDGE / "bcftools/fixref.3.vcf", "--fasta", FA, "-o", out)
    assert code == 1 and err == ("evo: error: no contig of fixref.3.vcf is in GRCh37_chr17_41100001-41300000.fa: the VCF "
                                 "has 1, 2, 3 ... (8 in all), the FASTA has GRCh37_chr17_41100001_41300000; check the "
                                 "reference build\n")
    assert not out.exists()


def _cli(out, *extra):
    return ["score-variants", "--vcf", SNVS, "--fasta", FA, "-m", TINY, "--window", 256, "--batch-size", 2,
            "-o", out, *extra]


def test_resume_after_sigkill_gives_identical_output(tmp_path):
    out = tmp_path / "scores.tsv"
    code, _, err = evo(*_cli(out))
    assert code == 0, err
    expected = out.read_bytes()
    out.unlink()
    partial = Path(str(out) + ".evo-partial")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "evo_cli.cli.main", *map(str, _cli(out)), "-q"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if partial.exists() and partial.read_text().count("\n") >= 3:  # settings + two chunks done
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    done = partial.read_text().count("\n") - 1
    assert 2 <= done < 16 and not out.exists()  # 48 records, 3 per position: 16 chunks of 3
    code, _, err = evo(*_cli(out))
    assert code == 1 and "add --resume" in err
    code, _, err = evo(*_cli(out, "--resume"))
    assert code == 0, err
    assert f"{done * 3} done before resuming" in err
    assert out.read_bytes() == expected and not partial.exists()


def test_resume_bgzip_vcf_and_settings_check(tmp_path):
    model = evo_cli.load_model(TINY, device="cpu", dtype="float32")
    out = tmp_path / "scores.vcf.gz"
    kw = dict(window=128, batch_size=3)
    evo_cli.score_variants(model, SNVS, FA, out, **kw)
    expected = out.read_bytes(), Path(str(out) + ".tbi").read_bytes()
    out.unlink()

    calls = []

    def stop_after_two(n):
        calls.append(n)
        if len(calls) == 2:
            raise KeyboardInterrupt

    from evo_cli.variants import run_score_variants

    with pytest.raises(KeyboardInterrupt):
        run_score_variants(model, SNVS, FA, out, progress=stop_after_two, **kw)
    assert not out.exists() and Path(str(out) + ".evo-partial").exists()
    with pytest.raises(evo_cli.InputError, match=r"settings differ \(window: 128 then, 64 now\)"):
        evo_cli.score_variants(model, SNVS, FA, out, window=64, batch_size=3, resume=True)
    df = evo_cli.score_variants(model, SNVS, FA, out, resume=True, **kw)
    assert len(df) == 48 and (out.read_bytes(), Path(str(out) + ".tbi").read_bytes()) == expected


def _interrupt_after(n_calls):
    calls = []

    def progress(n):
        calls.append(n)
        if len(calls) == n_calls:
            raise KeyboardInterrupt

    return progress


def test_resume_refuses_an_input_edited_in_place_and_another_kernel_backend(tmp_path):
    from evo_cli.variants import run_score_variants

    model = evo_cli.load_model(TINY, device="cpu", dtype="float32", kernels="torch")
    vcf = Path(shutil.copy(SNVS, tmp_path / "in.vcf"))
    out = tmp_path / "scores.tsv"
    partial = Path(str(out) + ".evo-partial")
    with pytest.raises(KeyboardInterrupt):
        run_score_variants(model, vcf, FA, out, window=64, batch_size=3, progress=_interrupt_after(2))
    settings = json.loads(partial.read_text().splitlines()[0])["settings"]
    assert settings["kernels"] == "torch" and settings["vcf_mtime_ns"] == os.stat(vcf).st_mtime_ns
    assert settings["fasta_mtime_ns"] == os.stat(FA).st_mtime_ns
    # another kernel backend
    triton_model = evo_cli.load_model(TINY, device="cpu", dtype="float32", kernels="triton")
    with pytest.raises(evo_cli.InputError, match=r"settings differ \(kernels: 'torch' then, 'triton' now\)"):
        evo_cli.score_variants(triton_model, vcf, FA, out, window=64, batch_size=3, resume=True)
    # the same size, other bytes: one ID changed in place
    text = vcf.read_text()
    first_id = text.split("\n#CHROM")[1].splitlines()[1].split("\t")[2]
    edited = text.replace(first_id, first_id[:-1] + ("X" if first_id[-1] != "X" else "Y"), 1)
    assert len(edited) == len(text) and edited != text
    stat = os.stat(vcf)
    vcf.write_text(edited)
    os.utime(vcf, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert os.path.getsize(vcf) == stat.st_size
    with pytest.raises(evo_cli.InputError, match=r"settings differ \(vcf_mtime_ns: "):
        evo_cli.score_variants(model, vcf, FA, out, window=64, batch_size=3, resume=True)
    assert partial.exists() and not out.exists()


def test_failed_start_leaves_no_progress_file(tmp_path):
    model = evo_cli.load_model(TINY, device="cpu", dtype="float32")
    plain_gz = tmp_path / "ref.fa.gz"
    plain_gz.write_bytes(gzip.compress(FA.read_bytes()))
    out = tmp_path / "scores.vcf"
    for fasta, message in [(plain_gz, "recompress it with `bgzip`"), (tmp_path / "missing.fa", "missing.fa: no such file")]:
        with pytest.raises(evo_cli.InputError, match=message):
            evo_cli.score_variants(model, SNVS, fasta, out, window=64)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["ref.fa.gz"]
    # once a chunk is done, an interrupted run keeps it (progress is reported after storing)
    from evo_cli.variants import run_score_variants

    with pytest.raises(KeyboardInterrupt):
        run_score_variants(model, SNVS, FA, out, window=64, progress=_interrupt_after(1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref.fa.gz", "scores.vcf.evo-partial"]


def test_pos_0_records_are_skipped_as_telomeres(tmp_path):
    """POS 0 (a telomere: VCF allows it, there is no base to score) is a status, not an error."""
    first = next(line for line in SNVS.read_text().splitlines() if not line.startswith("#"))
    contig = first.split("\t")[0]
    vcf = tmp_path / "tel.vcf"
    vcf.write_text(f"##fileformat=VCFv4.2\n##contig=<ID={contig}>\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
                   f"{contig}\t0\ttel\tN\t<TEL>,A\t.\t.\t.\n{first}\n{contig}\t0\ttel2\tA\t.\t.\t.\t.\n")
    args = ["score-variants", "--vcf", vcf, "--fasta", FA, "-m", TINY, "--window", 64, "-o"]
    code, _, err = evo(*args, tmp_path / "o.tsv")
    assert code == 0, err
    assert _summary(err) == (1, {"telomere": 2, "no_alt": 1})
    rows = pd.read_csv(tmp_path / "o.tsv", sep="\t", keep_default_na=False)
    assert rows[["pos", "alt", "status"]].values.tolist() == [[0, "<TEL>", "telomere"], [0, "A", "telomere"],
                                                             [97722, "A", "ok"], [0, ".", "no_alt"]]
    code, _, err = evo(*args, tmp_path / "o.vcf")
    assert code == 0, err
    with pysam.VariantFile(str(tmp_path / "o.vcf")) as vf:
        assert [(r.pos, "EVO_DELTA" in r.info, r.info["EVO_STATUS"]) for r in vf] == [
            (0, False, ("telomere", "telomere")), (97722, True, ("ok",)), (0, False, ("no_alt",))]


def test_plain_gzip_vcf_and_malformed_records(tmp_path):
    """A plain-gzip VCF is streamed to the same scores; a malformed record is one line naming line and field."""
    plain_gz = tmp_path / "snvs.vcf.gz"
    plain_gz.write_bytes(gzip.compress(SNVS.read_bytes()))
    outs = {}
    for vcf in (SNVS, plain_gz):
        outs[vcf] = tmp_path / f"{vcf.name}.tsv"
        code, _, err = evo("score-variants", "--vcf", vcf, "--fasta", FA, "-m", TINY, "--window", 64, "-o", outs[vcf])
        assert code == 0, err
    assert outs[SNVS].read_text() == outs[plain_gz].read_text() and len(outs[SNVS].read_text().splitlines()) == 49
    lines = SNVS.read_text().splitlines(keepends=True)
    first = next(i for i, line in enumerate(lines) if not line.startswith("#"))
    message = "POS '97,724' is not a position"
    cols = lines[first + 2].split("\t")
    bad = tmp_path / "bad.vcf"
    bad.write_text("".join(lines[: first + 2] + ["\t".join([cols[0], "97,724", *cols[2:]])] + lines[first + 3 :]))
    code, _, err = evo("score-variants", "--vcf", bad, "--fasta", FA, "-m", TINY, "--window", 64,
                       "-o", tmp_path / "bad.tsv")
    assert code == 1 and err == f"evo: error: {bad}:{first + 3}: {message}" + err.split(message, 1)[1]
    assert err.count("\n") == 1 and not (tmp_path / "bad.tsv").exists()


def _skips_vcf(tmp_path) -> tuple[Path, str]:
    """A VCF on the BRCA1 region (200,000 bp) with one record per way of not being scored, and its contig."""
    contig = read_fasta(FA)[0].id
    seq = read_fasta(FA)[0].sequence
    assert len(seq) == 200_000
    other = next(b for b in "ACGT" if b != seq[99_999])
    tail = seq[199_998:]  # the last two bases: REF tail + "A" runs one base past the end
    alts = ",".join([b for b in "ACGT" if b != other][:2])
    vcf = tmp_path / "skips.vcf"
    vcf.write_text(
        f"##fileformat=VCFv4.2\n##contig=<ID={contig},length=200000>\n##contig=<ID=chrZ>\n"
        f'##INFO=<ID=EVO_STATUS,Number=1,Type=String,Description="a stale value, replaced">\n'
        "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
        f"{contig}\t97722\tok_star\tT\tA,*\t.\t.\tEVO_STATUS=stale\n"
        f"{contig}\t100000\tmismatch\t{other}\t{alts}\t.\t.\t.\n"
        f"{contig}\t150000\tnoalt\t{seq[149_999]}\t.\t.\t.\t.\n"
        f"{contig}\t150010\tsym\t{seq[150_009]}\t<DEL>\t.\t.\t.\n"
        f"{contig}\t199999\tstraddle\t{tail}A\t{tail[0]}\t.\t.\t.\n"
        f"{contig}\t200000\tlast\t{seq[-1]}\t{'A' if seq[-1] != 'A' else 'C'}\t.\t.\t.\n"
        f"{contig}\t200005\tpast\tA\tG\t.\t.\t.\n"
        "chrZ\t10\tnocontig\tA\tC\t.\t.\t.\n")
    return vcf, contig


STATUSES = {"ok_star": ("ok", "star_allele"), "mismatch": ("ref_mismatch", "ref_mismatch"), "noalt": ("no_alt",),
            "sym": ("symbolic",), "straddle": ("past_contig_end",), "last": ("ok",), "past": ("past_contig_end",),
            "nocontig": ("contig_not_in_fasta",)}


@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_a_window_of_one_base_is_not_scored(tmp_path, reduce):
    """--window 2 at a contig's first base holds that base alone, and a window scores its bases 2..n: the
    status window_under_2_bases, where the mean was NaN (an error blaming the checkpoint) and the sum 0."""
    contig, seq = read_fasta(FA)[0].id, read_fasta(FA)[0].sequence
    vcf = tmp_path / "w.vcf"
    vcf.write_text(f"##fileformat=VCFv4.2\n##contig=<ID={contig}>\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
                   f"{contig}\t1\tfirst\t{seq[0]}\t{'C' if seq[0] != 'C' else 'G'}\t.\t.\t.\n"
                   f"{contig}\t2\tsecond\t{seq[1]}\t{'C' if seq[1] != 'C' else 'G'}\t.\t.\t.\n")
    code, _, err = evo("score-variants", "--vcf", vcf, "--fasta", FA, "-m", TINY, "--window", 2, "--reduce", reduce,
                       "-o", tmp_path / "w.tsv")
    assert code == 0, err
    df = pd.read_csv(tmp_path / "w.tsv", sep="\t")
    assert df.status.tolist() == ["window_under_2_bases", "ok"] and df.delta.isna().tolist() == [True, False]
    assert "skipped 1: window_under_2_bases 1" in err


def test_past_contig_end_is_its_own_status(tmp_path):
    """A REF that starts or ends past its contig's end is past_contig_end, not ref_mismatch: an error naming the
    contig's length, or with --skip-ref-mismatch a status counted in the summary (the contig's last base scores)."""
    vcf, contig = _skips_vcf(tmp_path)
    base = ["score-variants", "--vcf", vcf, "--fasta", FA, "-m", TINY, "--window", 64]
    # without the flag: one line, before the model loads (there is none here)
    out = tmp_path / "e.tsv"
    code, _, err = evo(*base[:5], "-m", tmp_path / "no_model", "--region", f"{contig}:199000", "-o", out)
    assert code == 1 and not out.exists()
    assert err == (f"evo: error: {contig}:199999: REF {read_fasta(FA)[0].sequence[199_998:]}A runs past the end of "
                   f"contig {contig} (200,000 bp) in {FA.name}; check the reference build, or skip such records "
                   f"with --skip-ref-mismatch\n")
    code, _, err = evo(*base[:5], "-m", tmp_path / "no_model", "--region", f"{contig}:200001", "-o", out)
    assert code == 1 and f"{contig}:200005: REF A runs past the end of contig {contig} (200,000 bp)" in err
    # with it: its own status in the summary and the table
    code, _, err = evo(*base, "-o", tmp_path / "s.tsv", "--skip-ref-mismatch")
    assert code == 0, err
    assert "evo: scored 2 of 10 variants (8 records)" in err
    assert _summary(err) == (2, {"past_contig_end": 2, "ref_mismatch": 2, "star_allele": 1, "no_alt": 1,
                                 "symbolic": 1, "contig_not_in_fasta": 1})
    assert "evo: skipped 8: ref_mismatch 2, past_contig_end 2, " in err
    df = pd.read_csv(tmp_path / "s.tsv", sep="\t", keep_default_na=False)
    assert df.status.tolist() == [s for v in STATUSES.values() for s in v]
    scored = df[df.status == "ok"]
    assert scored.id.tolist() == ["ok_star", "last"] and (scored.delta.astype(float) != 0).all()
    assert (df[df.status != "ok"][["ref_ll", "alt_ll", "delta"]] == "").all().all()
    # the Python API counts it too
    model = evo_cli.load_model(TINY, device="cpu", dtype="float32")
    api = evo_cli.score_variants(model, vcf, FA, window=64, skip_ref_mismatch=True)
    assert api.status.tolist() == df.status.tolist()
    assert api.attrs["summary"]["skipped"]["past_contig_end"] == 2


@pytest.mark.parametrize("ext", ["vcf", "vcf.gz"])
def test_vcf_output_says_why_each_alt_was_not_scored(ext, tmp_path):
    """EVO_STATUS (Number=A, declared after the score keys) on every record, ``ok`` for a scored ALT as in the
    table; a stale EVO_STATUS of the input is replaced; ALT . gets one value, no_alt."""
    vcf, _ = _skips_vcf(tmp_path)
    out = tmp_path / f"s.{ext}"
    code, _, err = evo("score-variants", "--vcf", vcf, "--fasta", FA, "-m", TINY, "--window", 64, "-o", out,
                       "--skip-ref-mismatch")
    assert code == 0, err
    with pysam.VariantFile(str(out)) as vf:
        recs = list(vf)
        assert vf.header.info["EVO_STATUS"].number == "A" and vf.header.info["EVO_STATUS"].type == "String"
        assert "past_contig_end" in vf.header.info["EVO_STATUS"].description
    assert {r.id: r.info["EVO_STATUS"] for r in recs} == STATUSES
    assert {r.id for r in recs if "EVO_DELTA" in r.info} == {"ok_star", "last"}
    star = next(r for r in recs if r.id == "ok_star")
    assert star.info["EVO_DELTA"][0] != 0 and star.info["EVO_DELTA"][1] is None
    text = (gzip.open(out, "rt") if ext == "vcf.gz" else open(out)).read()
    lines = text.splitlines()
    infos = [line.split(",")[0] for line in lines if line.startswith("##INFO=")]
    assert infos == ["##INFO=<ID=EVO_DELTA", "##INFO=<ID=EVO_REF_LL", "##INFO=<ID=EVO_ALT_LL", "##INFO=<ID=EVO_STATUS"]
    assert "stale" not in text
    record = {line.split("\t")[2]: line.split("\t")[7] for line in lines if not line.startswith("#")}
    assert record["past"] == "EVO_STATUS=past_contig_end" and record["noalt"] == "EVO_STATUS=no_alt"
    assert [kv.split("=")[0] for kv in record["ok_star"].split(";")] == ["EVO_DELTA", "EVO_REF_LL", "EVO_ALT_LL",
                                                                         "EVO_STATUS"]
    assert record["ok_star"].split(";")[0].endswith(",.") and record["ok_star"].endswith(";EVO_STATUS=ok,star_allele")
    # the table and the VCF agree, ALT by ALT
    tsv = tmp_path / "s.tsv"
    code, _, err = evo("score-variants", "--vcf", vcf, "--fasta", FA, "-m", TINY, "--window", 64, "-o", tsv,
                       "--skip-ref-mismatch")
    assert code == 0, err
    assert pd.read_csv(tsv, sep="\t").status.tolist() == [s for r in recs for s in r.info["EVO_STATUS"]]


def test_resume_keeps_the_statuses_and_refuses_older_results(tmp_path):
    """A resumed VCF run writes the same EVO_STATUS values as an uninterrupted one; progress stored before
    past_contig_end existed (no ``results`` setting) is not resumed."""
    from evo_cli.variants import RESULTS, run_score_variants

    vcf, _ = _skips_vcf(tmp_path)
    model = evo_cli.load_model(TINY, device="cpu", dtype="float32")
    out = tmp_path / "s.vcf"
    kw = dict(window=64, batch_size=2, skip_ref_mismatch=True)
    evo_cli.score_variants(model, vcf, FA, out, **kw)
    expected = out.read_bytes()
    assert b"EVO_STATUS=past_contig_end" in expected
    out.unlink()
    partial = Path(str(out) + ".evo-partial")
    with pytest.raises(KeyboardInterrupt):
        run_score_variants(model, vcf, FA, out, progress=_interrupt_after(2), **kw)
    head, *chunks = partial.read_text().splitlines()
    assert json.loads(head)["settings"]["results"] == RESULTS == "score-variants/4" and len(chunks) == 2
    evo_cli.score_variants(model, vcf, FA, out, resume=True, **kw)
    assert out.read_bytes() == expected and not partial.exists()
    # an older progress file: its past-the-end records were stored as ref_mismatch
    out.unlink()
    with pytest.raises(KeyboardInterrupt):
        run_score_variants(model, vcf, FA, out, progress=_interrupt_after(2), **kw)
    head, *chunks = partial.read_text().splitlines()
    old = json.loads(head)
    del old["settings"]["results"]
    partial.write_text("\n".join([json.dumps(old, sort_keys=True), *chunks]) + "\n")
    with pytest.raises(evo_cli.InputError, match=r"settings differ \(results: None then, 'score-variants/4' now\)"):
        evo_cli.score_variants(model, vcf, FA, out, resume=True, **kw)
    assert partial.exists() and not out.exists()


def test_every_status_is_documented():
    """The README's list of statuses and the EVO_STATUS header description name every skip status."""
    from evo_cli.variants import SKIP_STATUSES, STATUS_FIELD

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    listed = readme.split("Not scored, with the reason as the ALT's status", 1)[1].split("\n\n", 1)[0]
    assert [s for s in SKIP_STATUSES if f"`{s}`" not in listed] == []
    assert "`ok`" in listed and "`EVO_STATUS`" in readme
    assert all(s in STATUS_FIELD.description for s in SKIP_STATUSES)
    assert len(set(SKIP_STATUSES)) == 12 and {"past_contig_end", "window_under_2_bases", "alt_window_equals_ref"} <= set(SKIP_STATUSES)


def test_pipes_empty_vcf_and_a_format_contradicting_the_name_end_in_one_line(tmp_path):
    """A VCF or FASTA given as a pipe (``<(zcat x)``) failed with a message blaming the file's header (the VCF
    is read more than once, the FASTA at random); an empty VCF pointed at an htslib message that never came;
    ``--format`` against the output's name wrote plain text into ``x.vcf.gz``. All before the model loads."""
    empty = tmp_path / "empty.vcf"
    empty.write_text("")

    def pipe_of(path: Path) -> str:
        r, w = os.pipe()
        os.write(w, path.read_bytes()[:4096])  # fits the pipe's buffer
        os.close(w)
        return f"/dev/fd/{r}"

    cases = [
        (["--vcf", pipe_of(SNVS), "--fasta", FA, "-o", tmp_path / "o.tsv"],
         "is a device or a pipe, not a file; the VCF is read more than once, so save it to a file first"),
        (["--vcf", SNVS, "--fasta", pipe_of(FA), "-o", tmp_path / "o.tsv"],
         "is a device or a pipe, not a file; the reference is read at random, so give a FASTA file (plain or bgzip)"),
        (["--vcf", empty, "--fasta", FA, "-o", tmp_path / "o.tsv"],
         "empty.vcf: is empty, not a VCF (a VCF has at least a #CHROM header line)"),
        (["--vcf", SNVS, "--fasta", FA, "-o", tmp_path / "o.vcf.gz", "--format", "vcf"],
         "--format vcf contradicts -o"),
        (["--vcf", SNVS, "--fasta", FA, "-o", tmp_path / "o.tsv", "--format", "vcf.gz"],
         "--format vcf.gz contradicts -o"),
    ]
    for args, message in cases:
        code, _, err = evo("score-variants", "-m", tmp_path / "no_model", "--window", 64, *args)
        # bad files exit 1, a --format that contradicts -o 2 (a usage error, as in every command)
        assert code == (2 if "--format" in args else 1) and message in err and "Traceback" not in err, err
        assert len(err.splitlines()) == 1, err
    assert not list(tmp_path.glob("o.*"))
    # a name without a known ending takes the --format given, as before
    code, _, err = evo("score-variants", "-m", TINY, "--window", 64, "--vcf", SNVS, "--fasta", FA, "--region",
                       "GRCh37_chr17_41100001_41300000:97722", "-o", tmp_path / "o.txt", "--format", "tsv", "-q")
    assert code == 0, err
    assert (tmp_path / "o.txt").read_text().startswith("chrom\tpos\tid\tref\talt")


def test_an_alt_window_equal_to_the_ref_window_is_not_scored(tmp_path):
    """An insertion after a contig's last base was cut off with the window (no room right of REF), so the
    ALT window was the REF window and the row said ok with a delta of exactly 0; likewise a repeat unit added
    to a repeat running past the window, and an ALT spelling REF. They are alt_window_equals_ref now; the
    last base's SNV and deletion, and the same insertion with room, are still scored."""
    seq = "ACGTTGCAAGGCTTACGATCGGATCCATG" + "CACACACACAC" + "GTTAGCATTG"  # 50 bp, (CA)n at 30-40
    fa = tmp_path / "c.fa"
    fa.write_text(f">c\n{seq}\n")
    rows = [(50, "G", "GTTT", "ins_end"), (50, "G", "A", "snv_end"), (49, "TG", "T", "del_end"),
            (20, "C", "CTTT", "ins_mid"), (30, "C", "CAC", "repeat"), (10, "G", "g", "same"),
            (10, "G", "T,g", "multi")]
    assert all(seq[p - 1 : p - 1 + len(r)] == r for p, r, _, _ in rows)
    vcf = tmp_path / "e.vcf"
    vcf.write_text("##fileformat=VCFv4.2\n##contig=<ID=c,length=50>\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
                   + "".join(f"c\t{p}\t{i}\t{r}\t{a}\t.\t.\t.\n" for p, r, a, i in rows))
    for strand in ("forward", "both"):
        code, _, err = evo("score-variants", "--vcf", vcf, "--fasta", fa, "-m", TINY, "--window", 16, "--strand", strand,
                           "-o", tmp_path / f"{strand}.tsv")
        assert code == 0, err
        df = pd.read_csv(tmp_path / f"{strand}.tsv", sep="\t")
        same = "alt_window_equals_ref"
        assert df.status.tolist() == [same, "ok", "ok", "ok", same, same, "ok", same], df
        assert df.delta.isna().tolist() == [s == same for s in df.status]
        assert (df.delta[df.status == "ok"] != 0).all()
        assert _summary(err) == (4, {same: 4})
    code, _, err = evo("score-variants", "--vcf", vcf, "--fasta", fa, "-m", TINY, "--window", 16, "-o", tmp_path / "out.vcf")
    assert code == 0, err
    with pysam.VariantFile(str(tmp_path / "out.vcf")) as vf:
        recs = {r.id: r for r in vf}
        assert same in vf.header.info["EVO_STATUS"].description
    assert recs["ins_end"].info["EVO_STATUS"] == (same,) and "EVO_DELTA" not in recs["ins_end"].info
    assert recs["multi"].info["EVO_STATUS"] == ("ok", same) and recs["multi"].info["EVO_DELTA"][1] is None
    # with a longer window the repeat's change comes into view and is scored
    code, _, err = evo("score-variants", "--vcf", vcf, "--fasta", fa, "-m", TINY, "--window", 64, "--region", "c:30-30",
                       "-o", tmp_path / "w64.tsv")
    assert code == 0 and pd.read_csv(tmp_path / "w64.tsv", sep="\t").status.tolist() == ["ok"], err


def test_output_vcf_declares_the_contigs_of_its_records(tmp_path):
    """A VCF without ##contig lines (cyvcf2/no-seq-names.vcf, htslib's test-vcf-hdr-in.vcf) gave an output
    that htslib warned about on every read and could not write as BCF (`bcftools view -Ob` failed); the
    output now declares each undeclared contig of its records, with its FASTA length where there is one."""
    seq = read_fasta(FA)[0].sequence
    contig = read_fasta(FA)[0].id
    vcf = tmp_path / "nc.vcf"
    vcf.write_text("##fileformat=VCFv4.2\n##INFO=<ID=X,Number=1,Type=String,Description=\"x\">\n"
                   "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
                   f"{contig}\t97722\ta\t{seq[97721]}\tA\t.\t.\tX=1\nnowhere\t5\tb\tA\tC\t.\t.\t.\n"
                   f"{contig}\t97723\tc\t{seq[97722]}\tC\t.\t.\t.\n")
    for out in (tmp_path / "o.vcf", tmp_path / "o.vcf.gz"):
        code, _, err = evo("score-variants", "--vcf", vcf, "--fasta", FA, "-m", TINY, "--window", 32, "-o", out, "-q")
        assert code == 0, err
        with gzip.open(out, "rt") if out.suffix == ".gz" else open(out) as fh:
            header = [line.rstrip("\n") for line in fh if line.startswith("##")]
        assert header[:3] == ["##fileformat=VCFv4.2", f"##contig=<ID={contig},length=200000>", "##contig=<ID=nowhere>"]
        bcf = tmp_path / "o.bcf"
        with pysam.VariantFile(str(out)) as vf, pysam.VariantFile(str(bcf), "wb", header=vf.header) as w:
            assert dict(vf.header.contigs.items())[contig].length == 200000
            for rec in vf:
                w.write(rec)
        with pysam.VariantFile(str(bcf)) as vf:
            assert [(r.chrom, r.info["EVO_STATUS"]) for r in vf] == [(contig, ("ok",)), ("nowhere", ("contig_not_in_fasta",)),
                                                                     (contig, ("ok",))]
    # declared contigs are kept as they are, never repeated
    code, _, err = evo("score-variants", "--vcf", SNVS, "--fasta", FA, "-m", TINY, "--window", 32, "-o",
                       tmp_path / "s.vcf", "-q", "--region", f"{contig}:97722-97722")
    assert code == 0, err
    assert [h for h in (tmp_path / "s.vcf").read_text().splitlines() if h.startswith("##contig")] == [
        h for h in SNVS.read_text().splitlines() if h.startswith("##contig")]


def test_a_bcf_record_that_is_not_utf8_fails_in_one_line_before_the_model_loads(tmp_path):
    """pysam formats BCF records as UTF-8 only: a Latin-1 INFO value ended, after the whole scoring, in a bare
    UnicodeDecodeError with a progress file left that could never finish."""
    seq = read_fasta(FA)[0].sequence
    contig = read_fasta(FA)[0].id
    vcf = tmp_path / "lat.vcf"
    vcf.write_bytes(f"##fileformat=VCFv4.2\n##contig=<ID={contig},length=200000>\n"
                    "##INFO=<ID=CITY,Number=1,Type=String,Description=\"c\">\n"
                    "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n".encode()
                    + f"{contig}\t97722\t.\t{seq[97721]}\tA\t.\t.\tCITY=M".encode() + b"\xfcnchen\n")
    bcf = tmp_path / "lat.bcf"
    with pysam.VariantFile(str(vcf)) as src, pysam.VariantFile(str(bcf), "wb", header=src.header) as dst:
        for rec in src:
            dst.write(rec)
    out = tmp_path / "o.vcf"
    code, _, err = evo("score-variants", "--vcf", bcf, "--fasta", FA, "-m", tmp_path / "no_model", "-o", out)
    assert code == 1 and err == (f"evo: error: {bcf}: record {contig}:97722 holds text that is not UTF-8, which pysam "
                                 "cannot write out from a BCF; convert it to VCF (bcftools view -Oz) and score that\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lat.bcf", "lat.vcf"]
    # the VCF itself is copied byte for byte
    code, _, err = evo("score-variants", "--vcf", vcf, "--fasta", FA, "-m", TINY, "--window", 32, "-o", out, "-q")
    assert code == 0 and b"CITY=M\xfcnchen;EVO_DELTA=" in out.read_bytes(), err


def test_a_vcf_id_that_is_not_utf8_reaches_tsv_and_parquet(tmp_path):
    """A Latin-1 byte in a VCF's ID column (kept as a surrogate so that VCF output copies it byte for
    byte) ended the run with a bare UnicodeEncodeError when the TSV or Parquet table was written, after
    the whole scoring, leaving a progress file that could never finish. The table holds U+FFFD there."""
    seq = read_fasta(FA)[0].sequence
    contig = read_fasta(FA)[0].id
    vcf = tmp_path / "lat.vcf"
    vcf.write_bytes(f"##fileformat=VCFv4.2\n##contig=<ID={contig},length=200000>\n"
                    "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n".encode()
                    + f"{contig}\t97722\trs".encode() + b"\xe9" + f"1\t{seq[97721]}\tA\t.\t.\t.\n".encode())
    for name in ("o.tsv", "o.parquet"):
        out = tmp_path / name
        code, _, err = evo("score-variants", "--vcf", vcf, "--fasta", FA, "-m", TINY, "--window", 32, "-o", out, "-q")
        assert code == 0 and err == "", err
        table = pd.read_parquet(out) if name.endswith("parquet") else pd.read_csv(out, sep="\t")
        assert list(table["id"]) == ["rs\ufffd1"] and table["status"].tolist() == ["ok"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lat.vcf", "o.parquet", "o.tsv"]


def test_stdout_output_is_written_as_the_chunks_are_scored(tmp_path):
    """A run to stdout keeps no progress file; it held every chunk's results until the end (~0.5 kB per
    variant: 1.4 GB for a ClinVar-size VCF). Now each chunk's rows are out before the next is scored,
    and the output is the file run's, VCF contig lines included."""
    from evo_cli.variants import run_score_variants

    model = evo_cli.load_model(TINY, device="cpu", dtype="float32")
    sink = io.StringIO()
    lines_at_progress, done = [], []

    def progress(n):
        lines_at_progress.append(sink.getvalue().count("\n"))
        done.append(n)

    with contextlib.redirect_stdout(sink):
        run_score_variants(model, SNVS, FA, "-", format="tsv", window=32, batch_size=4, progress=progress)
    assert len(done) > 2 and sum(done) == sink.getvalue().count("\n") - 1
    # the header and the rows of every chunk before the one just scored
    assert lines_at_progress == [1 + sum(done[:k]) for k in range(len(done))]
    run_score_variants(model, SNVS, FA, tmp_path / "s.tsv", window=32, batch_size=4)
    assert sink.getvalue() == (tmp_path / "s.tsv").read_text()
    for fmt in ("tsv", "vcf"):
        code, out, err = evo(*_cli("-", "--format", fmt, "-q"))
        assert code == 0, err
        code, _, err = evo(*_cli(tmp_path / f"f.{fmt}", "-q"))
        assert code == 0, err
        assert out.replace(" --output -", "") == (tmp_path / f"f.{fmt}").read_text().replace(f" --output {tmp_path}/f.{fmt}", "")
