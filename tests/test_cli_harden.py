"""Issue 16, CLI half: exit codes, pipes, recorded commands, messages and help, and the fault campaign's
output faults (unwritable or read-only outputs, an output that is an input, stale temporaries, a full disk)."""

from __future__ import annotations

import errno
import gzip
import json
import logging
import os
import shlex
import stat
import threading
from pathlib import Path

import pandas as pd
import pysam
import pytest
from click.testing import CliRunner

import evo_cli
import evo_cli.io.atomic as atomic
from evo_cli.cli.main import cli
from evo_cli.io.embeddings import read_metadata
from evo_cli.io.fasta import format_fasta, read_fasta
from evo_cli.io.generated import read_generations_jsonl
from evo_cli.kernels import resolve_backend

from .test_cli_score_variants import FA, SNVS, TINY, evo

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONTIG = "GRCh37_chr17_41100001_41300000"
# the first three records of SNVS share one position: a small, fast selection
FEW = f"{CONTIG}:97722-97722"


def _sv(out, *extra, model=TINY):
    return evo("score-variants", "--vcf", SNVS, "--fasta", FA, "-m", model, "--window", 64, "-o", out, *extra)


def _lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


# --- wrong exit codes and silent nothing -------------------------------------------------------------

def test_no_rate_when_nothing_is_scored(tmp_path):
    vcf = tmp_path / "sym.vcf"
    vcf.write_text(f"##fileformat=VCFv4.2\n##contig=<ID={CONTIG}>\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
                   f"{CONTIG}\t97722\t.\tT\t<DEL>\t.\t.\t.\n")
    code, _, err = evo("score-variants", "--vcf", vcf, "--fasta", FA, "-m", TINY, "--window", 64, "-o",
                       tmp_path / "o.tsv")
    summary = next(line for line in err.splitlines() if line.startswith("evo: scored"))
    assert code == 0 and summary.startswith("evo: scored 0 of 1 variants") and "/s" not in summary, err


def test_region_on_an_unknown_contig_is_an_error_and_an_empty_region_a_warning(tmp_path):
    out = tmp_path / "o.tsv"
    code, _, err = _sv(out, "--region", "chr1:1-100", model=tmp_path / "no_model")
    assert code == 1 and len(_lines(err)) == 1 and not out.exists()
    assert err.startswith("evo: error: region chr1:1-100: contig chr1 is in neither the VCF header (")
    assert err.endswith(f"nor GRCh37_chr17_41100001-41300000.fa ({CONTIG})\n")
    code, _, err = _sv(out, "--region", f"{CONTIG}:1-100")
    assert code == 0 and f"evo: warning: region {CONTIG}:1-100 holds no record of" in err, err
    assert "scored 0 of 0 variants" in err


@pytest.mark.parametrize("region", ["::::", "a b:1-2", "chr1:", "", "chr1:,", "*x"])
def test_a_region_that_does_not_parse_is_a_usage_error(region, tmp_path):
    code, out, err = _sv(tmp_path / "o.tsv", "--region", region)
    assert code == 2 and out == "" and len(_lines(err)) == 1
    assert "expected chr, chr:start or chr:start-end" in err and not (tmp_path / "o.tsv").exists()


def test_embed_refuses_another_extension_before_loading_the_model(tmp_path):
    fa = tmp_path / "in.fa"
    fa.write_text(">a\nACGT\n")
    code, _, err = evo("embed", "--fasta", fa, "-o", tmp_path / "e.tsv", "-m", tmp_path / "no_model")
    assert code == 2 and err == f"evo: error: {tmp_path / 'e.tsv'}: embeddings are written as Parquet; name the " \
                                "output .parquet (or .pq) (see `evo embed --help`)\n"


@pytest.mark.parametrize("command,args", [
    ("generate", ["-p", "ACGT", "--top-k", "-3"]),
    ("generate", ["-p", "ACGT", "--top-p", "0"]),
    ("score-variants", ["--vcf", SNVS, "--fasta", FA, "-o", "x.vcf", "--window", "1"]),
    ("score", ["--fasta", FA, "--chunk-size", "0"]),
    ("embed", ["--fasta", FA, "-o", "x.parquet", "--batch-size", "-1"]),
])
def test_numeric_options_are_range_checked_at_parse_time(command, args):
    code, out, err = evo(command, "-m", "no_model", *args)
    assert code == 2 and out == "" and "is not in the range" in err and len(_lines(err)) == 1, err


def test_ranges_show_in_help():
    result = CliRunner().invoke(cli, ["generate", "--help"])
    assert "[default: 4; x>=0]" in " ".join(result.output.split())


def test_top_k_below_zero_is_refused_by_the_api(tiny_models):
    with pytest.raises(evo_cli.InputError, match="top_k must be an integer >= 0"):
        evo_cli.generate(tiny_models["evo2"], "ACGT", 3, top_k=-3, seed=0)


# --- pipes and conventions ---------------------------------------------------------------------------

def test_stdout_is_vcf_like_the_input_and_format_chooses(tmp_path):
    code, out, err = _sv("-", "--region", FEW)
    assert code == 0, err
    (tmp_path / "o.vcf").write_text(out)
    with pysam.VariantFile(str(tmp_path / "o.vcf")) as vf:
        deltas = [rec.info["EVO_DELTA"][0] for rec in vf]
    assert len(deltas) == 3 and all(isinstance(d, float) for d in deltas)
    code, out, err = _sv("-", "--region", FEW, "--format", "tsv")
    assert code == 0 and out.startswith("chrom\tpos\tid\tref\talt\t")
    help_text = " ".join(CliRunner().invoke(cli, ["score-variants", "--help"]).output.split())
    assert "- for stdout (VCF unless --format)" in help_text


def test_reduce_sum_is_the_whole_window_log_likelihood(tmp_path):
    runs = {}
    for reduce in ("mean", "sum"):
        code, out, err = _sv(tmp_path / f"{reduce}.tsv", "--region", FEW, "--reduce", reduce)
        assert code == 0, err
        runs[reduce] = pd.read_csv(tmp_path / f"{reduce}.tsv", sep="\t")
    # a 64-base window scores its positions 2..64: sum = 63 x mean
    mean, total = runs["mean"], runs["sum"]
    for col in ("ref_ll", "alt_ll", "delta"):
        assert (total[col] - 63 * mean[col]).abs().max() < 1e-9 * 63 * mean.ref_ll.abs().max()
    assert (total.delta.abs() > 10 * mean.delta.abs()).all()
    vcf = tmp_path / "sum.vcf"
    assert _sv(vcf, "--region", FEW, "--reduce", "sum")[0] == 0
    text = vcf.read_text()
    assert "##evo_reduce=sum" in text and "(summed log-likelihood;" in text and " --reduce sum " in text


def test_generate_records_the_full_command_and_a_summary(tmp_path):
    out = tmp_path / "g.jsonl"
    result = CliRunner().invoke(cli, ["generate", "-m", TINY, "-p", "ACGT", "-n", "5", "-o", str(out),
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    rec = read_generations_jsonl(out)[0]
    words = shlex.split(rec["command"])
    assert words[:2] == ["evo", "generate"] and words[words.index("--seed") + 1] == str(rec["seed"])
    for option in ("--n-tokens", "--temperature", "--top-k", "--top-p", "--batch-size", "--format", "--kernels"):
        assert option in words, option
    assert f"evo: generated 1 sequence(s) x 5 tokens (seed {rec['seed']}) to {out}" in result.output
    # the recorded command reproduces the run
    out.unlink()
    assert CliRunner().invoke(cli, words[1:]).exit_code == 0
    assert read_generations_jsonl(out)[0]["token_ids"] == rec["token_ids"]


# --- messages and help -------------------------------------------------------------------------------

def test_embed_progress_has_a_unit_and_a_rate(tmp_path):
    fa = tmp_path / "in.fa"
    fa.write_text(">a\nACGTACGTAA\n>b\nGGA\n")
    result = CliRunner().invoke(cli, ["embed", "--fasta", str(fa), "-o", str(tmp_path / "e.parquet"), "-m", TINY])
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("embedding"))
    assert "13/13 bases" in line and "bases/s" in line


def test_help_texts():
    runner = CliRunner()
    info = " ".join(runner.invoke(cli, ["info", "--help"]).output.split())
    assert "--device auto|cpu|cuda[:N] Device the runtime dtype is resolved for" in info
    assert "Runtime dtype to report" in info
    embed = runner.invoke(cli, ["embed", "--help"]).output
    assert "evo embed --fasta genes.fa -m evo2_7b -o genes.parquet" in embed
    generate = runner.invoke(cli, ["generate", "--help"]).output
    assert generate.index("--prompt SEQ") < generate.index("--n-tokens") < generate.index("-m, --model")


def test_info_describes_an_uncached_published_model_from_its_shipped_config(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out, err = evo("info", "-m", "evo2_7b", "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["path"].startswith("not downloaded") and d["layers"] == 32 and d["context"] == 1 << 20
    assert d["parameters"] == 6_581_722_880  # a number in JSON


def test_device_is_checked_at_parse_time_naming_this_torchs_devices():
    code, _, err = evo("score", "--fasta", FA, "-m", "no_model", "--device", "mps")
    assert code == 2 and len(_lines(err)) == 1 and "device 'mps' is not available here: this torch" in err
    assert "has cpu" in err


def test_long_records_warn_and_report_progress_in_positions(tmp_path, caplog):
    from evo_cli.model.init import motif_config, random_model
    from evo_cli.scoring import run_score

    model = random_model(motif_config("evo2", hidden_size=16, num_layers=3, head_dim=8, state_size=2,
                                      max_seqlen=64, name="short"), seed=0)
    records = read_fasta(_fasta(tmp_path / "in.fa", {"long": "ACGT" * 30, "short": "ACG"}))
    seen = []
    with caplog.at_level(logging.WARNING):
        run_score(model, records, tmp_path / "o.tsv", chunk_size=32, progress=seen.append)
    assert "1 record(s) are longer than the model's context of 64 positions (longest: 'long', 120 bp)" in caplog.text
    # the long record reports chunk by chunk (32, 32, 32, 24), then the short one
    assert seen == [32, 32, 32, 24, 3]


def _fasta(path: Path, seqs: dict[str, str]) -> Path:
    path.write_text("".join(format_fasta(k, v) for k, v in seqs.items()))
    return path


# --- output faults -----------------------------------------------------------------------------------

def test_output_that_is_an_input_is_refused(tmp_path):
    vcf = tmp_path / "in.vcf"
    vcf.write_bytes(SNVS.read_bytes())
    code, _, err = evo("score-variants", "--vcf", vcf, "--fasta", FA, "-m", tmp_path / "no_model", "-o", vcf)
    assert code == 1 and err == f"evo: error: {vcf}: the output is also an input ({vcf}); choose another output file\n"
    assert vcf.read_bytes() == SNVS.read_bytes()
    fa = _fasta(tmp_path / "in.fa", {"a": "ACGT"})
    code, _, err = evo("generate", "--prompts", fa, "-m", tmp_path / "no_model", "-o", fa)
    assert code == 1 and "the output is also an input" in err and fa.read_text() == ">a\nACGT\n"


def test_read_only_output_is_kept_and_refused(tmp_path):
    out = tmp_path / "o.tsv"
    out.write_text("keep me\n")
    out.chmod(0o444)
    code, _, err = _sv(out, "--region", FEW, model=tmp_path / "no_model")
    assert code == 1 and err == (f"evo: error: {out}: the output exists and is read-only; evo does not replace "
                                 "read-only files (make it writable or choose another output)\n")
    assert out.read_text() == "keep me\n" and oct(out.stat().st_mode & 0o777) == "0o444"


@pytest.mark.parametrize(("command", "name"), [("score-variants", "o.vcf.gz"), ("score-variants", "o.vcf.bgz"),
                                             ("mutagenize", "o.vcf.gz")])
def test_read_only_tabix_index_of_a_vcf_gz_output_is_kept_and_refused(command, name, tmp_path):
    # the bgzipped VCF's index is replaced with it: a chmod 444 index was deleted and rewritten 0644
    out, index = tmp_path / name, tmp_path / f"{name}.tbi"
    index.write_text("keep me\n")
    index.chmod(0o444)
    if command == "score-variants":
        code, _, err = _sv(out, "--region", FEW, model=tmp_path / "no_model")
    else:
        code, _, err = evo("mutagenize", "--fasta", FA, "--region", FEW, "-m", tmp_path / "no_model", "-o", out)
    assert code == 1 and err == (f"evo: error: {index}: the output exists and is read-only; evo does not replace "
                                 "read-only files (make it writable or choose another output)\n")
    assert index.read_text() == "keep me\n" and oct(index.stat().st_mode & 0o777) == "0o444" and not out.exists()


@pytest.mark.parametrize("command", ["score-variants", "score", "embed", "generate"])
def test_output_under_a_regular_file_fails_before_the_model_loads(command, tmp_path):
    (tmp_path / "f").write_text("")
    out = tmp_path / "f" / "o.vcf"
    args = {"score-variants": ["--vcf", SNVS, "--fasta", FA, "-o", out],
            "score": ["--fasta", FA, "-o", out.with_suffix(".tsv")],
            "embed": ["--fasta", FA, "-o", out.with_suffix(".parquet")],
            "generate": ["-p", "ACGT", "-o", out.with_suffix(".fa")]}[command]
    code, _, err = evo(command, "-m", tmp_path / "no_model", *args)
    assert code == 1 and len(_lines(err)) == 1 and "is not a directory" in err and "no_model" not in err, err


def test_unwritable_directory_names_the_output_not_a_temporary(tmp_path, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(atomic.tempfile, "mkstemp", denied)
    out = tmp_path / "o.tsv"
    code, _, err = _sv(out, "--region", FEW)
    # the progress file is the first file written: named, not a temporary
    assert code == 1 and err.splitlines()[-1] == f"evo: error: cannot write {out}.evo-partial: Permission denied", err


def test_full_disk_names_the_output_and_the_intact_progress_file(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    out = tmp_path / "o.tsv"
    monkeypatch.setattr(atomic.os, "fsync", full)
    code, _, err = _sv(out, "--region", FEW)
    # the progress file is written first (one chunk: it is created atomically, and fails the same way)
    assert code == 1 and err.splitlines()[-1].startswith(f"evo: error: cannot write {out}.evo-partial: No space left")
    assert not list(tmp_path.iterdir())  # no temporary, no output, no progress file left
    # with progress stored, a failed output says that the progress is kept for --resume
    from evo_cli.io.partial import sidecar_path
    from evo_cli.io.tables import table_writer

    sidecar_path(out).write_text("progress\n")
    with pytest.raises(evo_cli.EvoError) as info:
        with table_writer(out, [("x", "int")]) as write:
            write([(1,)])
    assert str(info.value) == (f"cannot write {out}: No space left on device; the progress file {out}.evo-partial "
                               "is intact: fix this and rerun with --resume")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.tsv.evo-partial"]


def test_stale_temporaries_of_a_killed_run_are_removed(tmp_path):
    out = tmp_path / "o.tsv"
    dead = tmp_path / ".o.tsv.evo-tmp-999999999-abcd.tsv"  # no such process
    alive = tmp_path / f".o.tsv.evo-tmp-{os.getppid()}-efgh.tsv"  # a running process: another run's
    other = tmp_path / ".other.tsv.evo-tmp-999999999-abcd.tsv"  # another output's
    for p in (dead, alive, other):
        p.write_text("partial")
    code, _, err = _sv(out, "--region", FEW)
    assert code == 0, err
    assert not dead.exists() and alive.exists() and other.exists()


def test_convert_checks_its_output_first_and_removes_stale_temporary_directories(tmp_path):
    (tmp_path / "f").write_text("")
    code, _, err = evo("convert", tmp_path / "no_model", "-o", tmp_path / "f" / "out")
    assert code == 1 and err == f"evo: error: {tmp_path / 'f' / 'out'}: cannot create it, {tmp_path / 'f'} is not a directory\n"
    stale = tmp_path / ".out.evo-tmp-999999999-abcd"  # a killed conversion's directory
    stale.mkdir()
    (stale / "model-00001-of-00001.safetensors").write_text("partial")
    code, _, err = evo("convert", TINY, "-o", tmp_path / "out")
    assert code == 0, err
    assert not stale.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["f", "out"]


def test_api_refuses_a_region_on_an_unknown_contig(tmp_path):
    model = evo_cli.load_model(TINY, device="cpu", dtype="float32")
    with pytest.raises(evo_cli.InputError, match="region chrX:1-10: contig chrX is in neither the VCF header"):
        evo_cli.score_variants(model, SNVS, FA, window=32, regions=["chrX:1-10"])


def test_empty_regions_of_a_bed_file_are_one_warning(tmp_path):
    bed = tmp_path / "r.bed"
    bed.write_text("".join(f"{CONTIG}\t{s}\t{s + 10}\n" for s in range(0, 1000, 100)) + f"{CONTIG}\t97720\t97722\n")
    code, _, err = _sv(tmp_path / "o.tsv", "--regions", bed)
    assert code == 0, err
    assert [line for line in err.splitlines() if "warning" in line] == [
        f"evo: warning: 10 regions hold no record of brca1_sge_first48.region.vcf: {CONTIG}:1-10, {CONTIG}:101-110, "
        f"{CONTIG}:201-210 ... (10 in all)"]


def test_region_checks_read_the_header_of_a_plain_gzip_vcf(tmp_path):
    import gzip

    vcf = tmp_path / "in.vcf.gz"
    vcf.write_bytes(gzip.compress(SNVS.read_bytes()))  # its header declares the contig
    code, _, err = evo("score-variants", "--vcf", vcf, "--fasta", FA, "-m", tmp_path / "no_model", "-o",
                       tmp_path / "o.tsv", "--region", "chr9:1-10")
    assert code == 1 and err == (f"evo: error: region chr9:1-10: contig chr9 is in neither the VCF header ({CONTIG}) "
                                 f"nor GRCh37_chr17_41100001-41300000.fa ({CONTIG})\n")


def test_mutagenize_follows_the_same_conventions(tmp_path):
    code, _, err = evo("mutagenize", "--fasta", FA, "--region", "a b:1-2", "-m", "no_model", "-o", tmp_path / "o.tsv")
    assert code == 2 and len(_lines(err)) == 1 and "expected chr, chr:start or chr:start-end" in err
    (tmp_path / "f").write_text("")
    code, _, err = evo("mutagenize", "--fasta", FA, "--region", f"{CONTIG}:97722-97722", "-m", "no_model",
                       "-o", tmp_path / "o.tsv", "--bedgraph", tmp_path / "f" / "t.bedGraph")
    assert code == 1 and "is not a directory" in err and not (tmp_path / "o.tsv").exists()
    out = tmp_path / "m.parquet"
    code, _, err = evo("mutagenize", "--fasta", FA, "--region", f"{CONTIG}:97722-97722", "-m", TINY, "--window", 32,
                       "-o", out)
    assert code == 0, err
    meta = read_metadata(out)
    assert meta["window"] == 32 and " --window 32 " in meta["command"] and f" --kernels {resolve_backend('auto', 'cpu')} " in meta["command"]


def _read_fifo(fifo: Path) -> tuple[threading.Thread, list[bytes]]:
    got: list[bytes] = []

    def read():
        with open(fifo, "rb") as fh:
            got.append(fh.read())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return reader, got


@pytest.mark.parametrize("fmt", ["tsv", "vcf.gz"])
def test_output_to_a_fifo_is_written_in_place_not_replaced(fmt, tmp_path):
    # -o /dev/null, /dev/stdout or >(gzip > x): the rename of a temporary replaced the device or pipe
    # with a regular file (the reader waited forever), and tabix bgzipped it into o.gz and deleted it
    fifo = tmp_path / "o"
    os.mkfifo(fifo)
    reader, got = _read_fifo(fifo)
    code, _, err = _sv(fifo, "--region", FEW, "--format", fmt)
    reader.join(timeout=30)
    assert code == 0 and "not indexed" not in err, err
    assert stat.S_ISFIFO(fifo.stat().st_mode) and sorted(p.name for p in tmp_path.iterdir()) == ["o"]
    data = got[0] if fmt == "tsv" else gzip.decompress(got[0])
    records = [line.split("\t") for line in data.decode().splitlines() if line.startswith(CONTIG)]
    assert [r[1] for r in records] == ["97722"] * 3  # FEW's three records


def test_mutagenize_vcf_gz_to_a_fifo_keeps_the_fifo(tmp_path):
    fifo = tmp_path / "o"
    os.mkfifo(fifo)
    reader, got = _read_fifo(fifo)
    code, _, err = evo("mutagenize", "--fasta", FA, "--region", FEW, "-m", TINY, "--window", 32, "--format", "vcf.gz",
                       "-o", fifo)
    reader.join(timeout=30)
    assert code == 0, err
    assert stat.S_ISFIFO(fifo.stat().st_mode) and sorted(p.name for p in tmp_path.iterdir()) == ["o"]
    records = [line for line in gzip.decompress(got[0]).decode().splitlines() if not line.startswith("#")]
    assert len(records) == 1 and records[0].split("\t")[1] == "97722"


@pytest.mark.parametrize("argv", [
    ["score-variants", "--vcf", SNVS, "--fasta", FA, "--region", FEW, "--window", 64],
    ["score", "--fasta", "{fa}"],
    ["generate", "--prompt", "ACGT", "-n", 4, "--seed", 1],
    ["mutagenize", "--fasta", FA, "--region", FEW, "--window", 32],
])
def test_a_device_or_pipe_output_keeps_no_progress_file(argv, tmp_path):
    # the progress sidecar was created beside the output during the run: as root, -o /dev/null made
    # /dev/null.evo-partial; such an output cannot be resumed, so the run keeps its chunks in memory
    fa = tmp_path / "in.fa"
    fa.write_text(">a\nACGTACGTAC\n>b\nGGGTTTAAC\n")
    argv = [str(a).format(fa=fa) for a in argv] + ["-m", TINY, "--format", "fasta" if argv[0] == "generate" else "tsv"]
    out = tmp_path / "out"
    out.mkdir()
    fifo = out / "o"
    os.mkfifo(fifo)
    os.utime(out, ns=(0, 0))  # a file created or removed in out during the run changes its mtime
    reader, got = _read_fifo(fifo)
    code, _, err = evo(*argv, "-o", fifo)
    reader.join(timeout=30)
    assert code == 0, err
    assert out.stat().st_mtime_ns == 0 and sorted(p.name for p in out.iterdir()) == ["o"]
    code, _, err = evo(*argv, "-o", tmp_path / "o.txt")
    assert code == 0, err
    assert got[0] == (tmp_path / "o.txt").read_bytes()


def test_resume_with_a_pipe_output_is_one_line(tmp_path):
    fifo = tmp_path / "o"
    os.mkfifo(fifo)
    held = os.open(fifo, os.O_RDWR)  # a reader for the run's lifetime, so that a wrong open() cannot block
    try:
        code, _, err = _sv(fifo, "--region", FEW, "--format", "tsv", "--resume")
    finally:
        os.close(held)
    assert code == 1 and _lines(err) == [f"evo: error: {fifo}: is a device or a pipe, and a run writing there keeps "
                                         "no progress to resume; rerun without --resume"], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_embeddings_to_a_pipe_are_refused(tmp_path):
    # they are assembled from part files beside the output: a pipe got its parts and was replaced by one
    fifo = tmp_path / "o.parquet"
    os.mkfifo(fifo)
    code, _, err = evo("embed", "--fasta", FA, "-m", tmp_path / "no_model", "-o", fifo)
    assert code == 1 and _lines(err) == [f"evo: error: {fifo}: is a device or a pipe; embeddings are written to a "
                                         "regular Parquet file"], err
    assert stat.S_ISFIFO(fifo.stat().st_mode) and sorted(p.name for p in tmp_path.iterdir()) == ["o.parquet"]


@pytest.mark.parametrize("argv", [
    ["score-variants", "--vcf", SNVS, "--fasta", FA, "--region", FEW],
    ["score", "--fasta", FA],
    ["mutagenize", "--fasta", FA, "--region", FEW],
])
def test_parquet_to_a_pipe_is_refused(argv, tmp_path):
    # pyarrow's writer seeks: the run ended in "OSError: lseek failed" after scoring everything
    fifo = tmp_path / "o.parquet"
    os.mkfifo(fifo)
    code, _, err = evo(*argv, "-m", TINY, "-o", fifo)
    assert code == 1 and _lines(err) == [f"evo: error: {fifo}: is a device or a pipe; parquet output needs a regular "
                                         "file (its writer seeks)"], err
    assert stat.S_ISFIFO(fifo.stat().st_mode) and sorted(p.name for p in tmp_path.iterdir()) == ["o.parquet"]


def test_a_dev_or_proc_name_redirected_to_a_file_is_written_in_place(tmp_path):
    # `evo ... -o /dev/stdout > file`: the name leads to a regular file, so the output was refused as a
    # non-root user ("the directory /dev is not writable") and, as root, written to a temporary in /dev
    # renamed over the link; /proc/self/fd/1 is the same link without the risk to /dev in a failing run
    import subprocess
    import sys

    fa = tmp_path / "in.fa"
    fa.write_text(">a\nACGTACGTAC\n>b\nGGGTTTAAC\n")
    want = tmp_path / "want.tsv"
    code, _, err = evo("score", "--fasta", fa, "-m", TINY, "-o", want)
    assert code == 0, err
    got = tmp_path / "got.tsv"
    with open(got, "w") as fh:
        proc = subprocess.run([sys.executable, "-m", "evo_cli.cli.main", "score", "--fasta", str(fa), "-m", str(TINY),
                               "--format", "tsv", "-q", "-o", "/proc/self/fd/1"], stdout=fh, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert got.read_bytes() == want.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["got.tsv", "in.fa", "want.tsv"]


def test_bigwig_to_a_pipe_is_refused(tmp_path):
    # pyBigWig seeks: the run scored everything, then failed writing the header (two lines, no file named)
    fifo = tmp_path / "t.bw"
    os.mkfifo(fifo)
    fa = tmp_path / "in.fa"
    fa.write_text(">a\nACGTACGTAC\n")
    code, _, err = evo("score", "--fasta", fa, "-m", TINY, "-o", tmp_path / "o.tsv", "--bedgraph", fifo)
    assert code == 1 and _lines(err) == [f"evo: error: {fifo}: is a device or a pipe; bigWig output needs a regular "
                                         "file (its writer seeks)"], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.fa", "t.bw"]


def test_what_is_written_in_place(tmp_path):
    # links into /dev or /proc (descriptors), devices and pipes are written in place; an ordinary file in
    # a directory under /dev (/dev/shm, a tmpfs) or a link elsewhere keeps the atomic rename and --resume
    regular = tmp_path / "o.tsv"
    regular.write_text("x")
    link = tmp_path / "link.tsv"
    link.symlink_to(regular)
    fifo = tmp_path / "p"
    os.mkfifo(fifo)
    assert [atomic.is_special(p) for p in ("/proc/self/fd/1", "/dev/null", fifo)] == [True, True, True]
    assert [atomic.is_special(p) for p in (regular, link, "/dev/shm/evo-test-never-made.tsv", "-")] == [False] * 4


def test_two_runs_of_one_output_at_the_same_time_are_refused(tmp_path):
    """A second run of an output that another run is writing (two terminals, a requeued job whose first
    copy still runs) stops with one line, whether the progress file exists when it starts or the two
    create it at the same moment; the first run's progress stays whole."""
    from evo_cli.io.partial import Checkpoint, sidecar_path

    out = tmp_path / "o.tsv"
    first, racing = Checkpoint(out, {"a": 1}, False), Checkpoint(out, {"a": 1}, True)  # neither sees a file
    first.append(0, [1.5])
    with pytest.raises(evo_cli.InputError, match="another evo run of this output started at the same time"):
        racing.append(0, [2.5])
    with pytest.raises(evo_cli.InputError, match="another evo run is writing this output now"):
        Checkpoint(out, {"a": 1}, True)
    first.append(1, [3.5])
    assert list(first.chunks()) == [[1.5], [3.5]] and sidecar_path(out).read_text().count("\n") == 3
    first.close()  # the first run ends (killed, say): its progress is resumed
    with Checkpoint(out, {"a": 1}, True) as again:
        assert list(again.chunks()) == [[1.5], [3.5]]
        again.append(2, [4.5])
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # completed: progress removed, no temporary left
    out = tmp_path / "new" / "folder" / "o.tsv"  # missing folders are created, the progress file's first
    code, _, err = _sv(out, "--region", FEW)
    assert code == 0 and sorted(p.name for p in out.parent.iterdir()) == ["o.tsv"], err
