"""VCF reading (regions, odd files), annotated VCF writing, and the indexed reference (no model here)."""

import gzip
import os
import shutil

import pysam
import pytest

from evo_cli.errors import InputError
from evo_cli.io.reference import Reference, index_cache_dir, quiet_htslib
from evo_cli.io.vcf import (InfoField, Region, VcfReader, VcfRecord, classify_alt, parse_region, read_bed,
                            write_annotated_vcf)

from .conftest import DATA

EDGE = DATA / "vcf_edge_cases"
BRCA1 = DATA / "brca1"
REGION_FA = BRCA1 / "GRCh37_chr17_41100001-41300000.fa"
FIELDS = [InfoField("EVO_DELTA", "A", "Float", "d"), InfoField("EVO_REF_LL", "1", "Float", "r")]


def test_classify_alt():
    cases = {"A": None, "acgtn": None, "TGATTACA": None, "R": None, "*": "star_allele", "<DEL>": "symbolic",
             "<CN0>": "symbolic", "]chrB:123]AGT": "breakend", "CAGT[chrA:321[": "breakend", "A.": "breakend",
             ".A": "breakend", "I": "invalid_allele", "A-C": "invalid_allele"}
    assert {a: classify_alt(a) for a in cases} == cases


def test_parse_region_and_bed(tmp_path):
    assert parse_region("chr17:41,196,312-41,277,500") == Region("chr17", 41196311, 41277500)
    assert parse_region("chrX") == Region("chrX")
    assert parse_region("2:100").start == 99 and parse_region("2:100").end > 10**15
    assert parse_region("1:1-1") == Region("1", 0, 1)  # the samtools reading of a contig named like a region
    for bad in ("chr1:0-5", "chr1:10-5", "", "chr 1"):
        with pytest.raises(InputError, match="region"):
            parse_region(bad)
    bed = tmp_path / "r.bed"
    bed.write_text("track name=x\n# comment\nchr1\t0\t10\tname\n\nchr2\t5\t6\n")
    assert read_bed(bed) == [Region("chr1", 0, 10), Region("chr2", 5, 6)]
    bed.write_text("chr1\tten\t20\n")
    with pytest.raises(InputError, match=r"r.bed:1: not BED"):
        read_bed(bed)
    # compressed BED (gzip or bgzip) is read like plain text
    gz = tmp_path / "r.bed.gz"
    gz.write_bytes(gzip.compress(b"chr1\t0\t10\n"))
    assert read_bed(gz) == [Region("chr1", 0, 10)]
    gz.write_bytes(gzip.compress(b"chr1\t0\t10\n" * 1000)[:60])
    with pytest.raises(InputError, match=r"r.bed.gz: cannot read \("):
        read_bed(gz)


def test_bed_from_a_pipe_is_read_and_a_directory_named(tmp_path):
    """``--regions <(zcat x.bed.gz)`` and a folder both failed with "no such file": the BED file is read
    once, so a pipe can give it."""
    import threading

    fifo = tmp_path / "regions.bed"
    os.mkfifo(fifo)

    def feed():
        with open(fifo, "w") as fh:
            fh.write("chr1\t0\t10\n")

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    try:
        assert read_bed(fifo) == [Region("chr1", 0, 10)]
    finally:
        writer.join(timeout=10)
    with pytest.raises(InputError, match="is a directory, expected a BED file"):
        read_bed(tmp_path)
    with pytest.raises(InputError, match="/dev/null: no BED intervals"):
        read_bed("/dev/null")


def test_reference_aliases_case_and_compression(tmp_path, monkeypatch):
    with Reference(BRCA1 / "GRCh37_chr17_BRCA1locus_Npadded.fa.gz") as ref, Reference(REGION_FA) as region:
        assert ref.resolve("chr17") == ref.resolve("17") == "17" and ref.resolve("chr1") is None
        local = region.fetch("GRCh37_chr17_41100001_41300000", 97700, 97800)
        assert ref.fetch("17", 41197700, 41197800) == local and set(local) <= set("ACGT")
        assert ref.fetch("17", 0, 5) == "NNNNN" and ref.fetch("17", 81195205, 81195300) == "NNNNN"
    # soft-masked bases come back upper-case; a missing index is built in the cache, never beside the FASTA
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    inputs = tmp_path / "in"
    inputs.mkdir()
    fa = inputs / "masked.fa"
    fa.write_text(">chrM\nACGTacgtNNnn\n>2\nAC\n")
    with Reference(fa) as ref:
        assert ref.fetch(ref.resolve("MT"), 0, 12) == "ACGTACGTNNNN" and ref.resolve("chr2") == "2"
    bgz = shutil.copy(BRCA1 / "GRCh37_chr17_BRCA1locus_Npadded.fa.gz", inputs)  # bgzip without its index
    with Reference(bgz) as ref:
        assert ref.fetch("17", 41197700, 41197800) == local
    assert sorted(p.name for p in inputs.iterdir()) == ["GRCh37_chr17_BRCA1locus_Npadded.fa.gz", "masked.fa"]
    cached = sorted(p.name.split(".", 1)[1] for p in index_cache_dir().iterdir())
    assert cached == ["GRCh37_chr17_BRCA1locus_Npadded.fa.gz.fai", "GRCh37_chr17_BRCA1locus_Npadded.fa.gz.gzi",
                      "masked.fa.fai"]
    with Reference(fa) as ref:  # reused while the FASTA is unchanged, rebuilt when it changes
        assert len(list(index_cache_dir().iterdir())) == 3
    fa.write_text(">chrM\nACGTACGTAC\n")
    os.utime(fa, ns=(1, 1))
    with Reference(fa) as ref:
        assert ref.length("chrM") == 10 and len(list(index_cache_dir().iterdir())) == 4
    # a cache that cannot be written: a temporary index, removed on close
    monkeypatch.setenv("XDG_CACHE_HOME", str(fa))
    with Reference(bgz) as ref:
        tmp_index = ref._tmp.name
        assert ref.fetch("17", 41197700, 41197800) == local
    assert not os.path.exists(tmp_index) and sorted(p.name for p in inputs.iterdir()) == [
        "GRCh37_chr17_BRCA1locus_Npadded.fa.gz", "masked.fa"]
    (inputs / "notfasta.fa").write_text("#CHROM\tPOS\n")
    with pytest.raises(InputError, match=r"notfasta.fa: cannot index as FASTA \(Format error, unexpected \"#\" at "
                                           r"line 1; expected '>' headers"):
        Reference(inputs / "notfasta.fa")
    plain_gz = tmp_path / "plain.fa.gz"
    plain_gz.write_bytes(gzip.compress(fa.read_bytes()))
    with pytest.raises(InputError, match="recompress it with `bgzip`"):
        Reference(plain_gz)
    with pytest.raises(InputError, match="no such file"):
        Reference(tmp_path / "missing.fa")


def test_reference_with_two_records_of_one_name_is_refused(tmp_path, monkeypatch):
    """htslib indexes the first of two same-named records and drops the other with a warning that
    quiet_htslib hid: windows came silently from one copy. Nothing is cached for such a file."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    fa = tmp_path / "two.fa"
    fa.write_text(">c1\nACGTACGTAC\n>c2\nGGGG\n>c1 second copy\nTTTT\n")
    with pytest.raises(InputError, match=r"^.*two.fa: holds two records named 'c1'; a reference needs one record"):
        Reference(fa)
    assert not any(p.name.endswith(".fai") for p in (tmp_path / "cache" / "evo" / "fai").iterdir())


@pytest.mark.parametrize("text, message", [
    (b"\xef\xbb\xbf>c1\nACGT\n", "starts with a UTF-8 byte-order mark"),
    (b">c1\rACGT\rACGT\r", "has old Mac line ends \\(CR only\\)"),
    (b">c1\nACGTA CGTAC\nACGTACGTAC\nAC\n", r"cannot index as FASTA \(Format error, unexpected \"A\" at line"),
])
def test_reference_that_faidx_cannot_read_says_why(text, message, tmp_path, monkeypatch):
    """The reason, not only "cannot index", in the one line (htslib's own message was hidden)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    fa = tmp_path / "odd.fa"
    fa.write_bytes(text)
    with pytest.raises(InputError, match=message):
        Reference(fa)


def test_truncated_bgzip_reference_says_so(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cut = tmp_path / "cut.fa.gz"
    cut.write_bytes((BRCA1 / "GRCh37_chr17_BRCA1locus_Npadded.fa.gz").read_bytes()[:200_000])
    with pytest.raises(InputError, match=r"cut.fa.gz: cannot index as FASTA \(.*BGZF.*: the file is truncated or "
                                         r"damaged\)$"):
        Reference(cut)
    # with the intact file's index beside it, bases before the cut are read and those after it fail in one
    # line (it was pysam's "ValueError: failure when retrieving sequence" after two htslib lines)
    for ext in (".fai", ".gzi"):
        shutil.copy(BRCA1 / f"GRCh37_chr17_BRCA1locus_Npadded.fa.gz{ext}", f"{cut}{ext}")
    capfd.readouterr()
    with Reference(cut) as ref:
        assert ref.fetch("17", 41197700, 41197710) == "GTGGCTGTGG"
        with pytest.raises(InputError, match=r"cut.fa.gz: cannot read 17:41290001-41290010: the file is truncated or "
                                             r"damaged, or its index \(.fai/.gzi\) belongs to another file$"):
            ref.fetch("17", 41290000, 41290010)
    assert capfd.readouterr().err == ""


def test_index_build_of_a_killed_run_is_removed_by_the_next_build(tmp_path, monkeypatch):
    """A run killed while indexing leaves its temporary build folder in the cache; the next build of
    that FASTA's index removes it (the folder names the dead process), a live run's is kept."""
    import subprocess

    from evo_cli.io.atomic import temporary_prefix

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    fa = tmp_path / "a.fa"
    fa.write_text(">1\nACGT\n")
    with Reference(fa):
        pass
    (built,) = index_cache_dir().iterdir()
    built.unlink()  # as if the killed run had not got so far
    stem = index_cache_dir() / built.name.removesuffix(".fai")
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = index_cache_dir() / temporary_prefix(stem).replace(f"-{os.getpid()}-", f"-{dead.pid}-")
    stale.mkdir()
    (stale / "fai").write_text("half")
    live = index_cache_dir() / f"{temporary_prefix(stem)}x"
    live.mkdir()
    with Reference(fa) as ref:
        assert ref.fetch("1", 0, 4) == "ACGT"
    assert not stale.exists() and live.exists()


def _brca1_slice(tmp_path, csi=False):
    vcf = tmp_path / "slice.vcf"
    shutil.copy(BRCA1 / "brca1_sge_first48.region.vcf", vcf)
    gz = pysam.tabix_index(str(vcf), preset="vcf", force=True, keep_original=True, csi=csi)
    return vcf, gz


@pytest.mark.parametrize("csi", [False, True], ids=["tbi", "csi"])
def test_regions_streaming_and_indexed_agree(csi, tmp_path):
    vcf, gz = _brca1_slice(tmp_path, csi)
    assert not VcfReader(vcf).indexed and VcfReader(gz).indexed
    contig = "GRCh37_chr17_41100001_41300000"
    regions = [parse_region(f"{contig}:97724-97725"), Region(contig, 97727, 97729), parse_region(f"{contig}:97725-97726")]
    wanted = {97724, 97725, 97726, 97728, 97729}  # the last region is 0-based [97727, 97729)
    expected = [(r.pos, r.alts) for r in VcfReader(vcf) if r.pos in wanted]
    assert len(expected) == 15
    for path in (vcf, gz):
        reader = VcfReader(path, regions)
        assert [(r.pos, r.alts) for r in reader] == expected
        assert [tuple(line.split("\t")[1:2]) for line in reader.text()[1]] == [(str(p),) for p, _ in expected]
    assert list(VcfReader(gz, [Region("other")])) == []
    # chr aliasing between a region and the VCF's contig names
    chr17 = EDGE / "derived" / "brca1_sge_first24.chr17.vcf"
    assert len(list(VcfReader(chr17, [parse_region("17:41197722-41197722")]))) == 3


def test_invalid_vcf_is_one_clear_error(tmp_path, capfd):
    # htslib's reason is in the message, not printed above it
    with pytest.raises(InputError, match=r"not a valid VCF/BCF header \(Empty sample name: trailing spaces/tabs"):
        VcfReader(EDGE / "cyvcf2" / "test-invalid-header.vcf")
    assert capfd.readouterr().err == ""
    # htslib says nothing about a file it does not take for a VCF: the message said "htslib's message above"
    (tmp_path / "x.vcf").write_text("hello\n")
    (tmp_path / "headerless.vcf").write_text("#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n1\t5\t.\tA\tG\t.\t.\t.\n")
    for name in ("x.vcf", "headerless.vcf"):
        with pytest.raises(InputError, match=f"{name}: not a VCF or BCF: a VCF's first line is ##fileformat=VCFv4.x"):
            VcfReader(tmp_path / name)
    assert capfd.readouterr().err == ""


def test_vcf_and_reference_are_read_with_stderr_closed(tmp_path):
    """htslib's messages are collected through file descriptor 2; a run with it closed (`2>&-`, some
    daemons) must still read its inputs and report a bad one."""
    import subprocess
    import sys

    code = ("import os, sys\n"
            "os.close(2)\n"
            "from evo_cli.errors import InputError\n"
            "from evo_cli.io.reference import Reference\n"
            "from evo_cli.io.vcf import VcfReader\n"
            f"print(len(list(VcfReader({str(EDGE / 'bcftools' / 'norm.vcf')!r}))))\n"
            f"print(Reference({str(REGION_FA)!r}).length('GRCh37_chr17_41100001_41300000'))\n"
            "try:\n"
            f"    VcfReader({str(EDGE / 'cyvcf2' / 'test-invalid-header.vcf')!r})\n"
            "except InputError as err:\n"
            "    print(str(err).split(': ', 1)[1])\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "XDG_CACHE_HOME": str(tmp_path)})
    assert proc.returncode == 0 and proc.stdout.splitlines() == [
        "24", "200000", "not a valid VCF/BCF header (htslib gave no reason)"], proc


def test_vcf_with_a_byte_order_mark_is_read(tmp_path):
    """A VCF saved by a Windows editor with a UTF-8 BOM: htslib does not take it for a VCF (it failed
    with 'not a valid VCF/BCF'), a plain-gzip one was read already; plain and bgzip are read now."""
    text = (EDGE / "bcftools" / "norm.vcf").read_bytes()
    expected = [(r.chrom, r.pos, r.ref, r.alts) for r in VcfReader(EDGE / "bcftools" / "norm.vcf")]
    plain = tmp_path / "bom.vcf"
    plain.write_bytes(b"\xef\xbb\xbf" + text)
    bgz = tmp_path / "bom.vcf.gz"
    pysam.tabix_compress(str(plain), str(bgz))
    for path in (plain, bgz):
        assert [(r.chrom, r.pos, r.ref, r.alts) for r in VcfReader(path)] == expected
        reader = VcfReader(path, [Region("1", 0, 100)])
        assert [(r.chrom, r.pos) for r in reader] == [("1", 60)]
        header, lines = reader.text()
        assert header[0] == "##fileformat=VCFv4.2" and len(list(lines)) == len(list(reader))


def _data_lines(path, strip_evo=True):
    """Data lines as text, with the EVO_ INFO entries taken out."""
    opener = gzip.open if path.read_bytes()[:2] == b"\x1f\x8b" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        lines = [line.rstrip("\n").split("\t") for line in fh if not line.startswith("#")]
    for cols in lines:
        cols[7] = ";".join(kv for kv in cols[7].split(";") if not kv.startswith("EVO_")) or "."
    return lines


@pytest.mark.parametrize("name", ["bcftools/norm.vcf", "htslib/test-vcf-hdr-in.vcf", "pysam/ex1.vcf.gz",
                                  "cyvcf2/no-seq-names.vcf", "pysam/example_vcf43_with_utf8.vcf"])
def test_annotated_vcf_keeps_records(name, tmp_path):
    reader = VcfReader(EDGE / name)
    ann = [(r.chrom, r.pos, {"EVO_DELTA": tuple([0.25] * (len(r.alts) - 1) + [None]), "EVO_REF_LL": -1.5}
            if r.alts else {}) for r in reader]
    out = tmp_path / "out.vcf"
    lines = [("evo_model", "tiny"), ("evo_window", "64")]
    assert write_annotated_vcf(out, reader, FIELDS, lines, ann, compressed=False) is False
    # annotate the output again: values and ##evo_ lines are replaced, not repeated
    write_annotated_vcf(tmp_path / "again.vcf", VcfReader(out), FIELDS, lines, ann, compressed=False)
    for path in (out, tmp_path / "again.vcf"):
        # records are copied as written (htslib would drop a redundant END=, rewrite 'AC=' ...)
        assert _data_lines(path) == _data_lines(EDGE / name)
        with pysam.VariantFile(str(path)) as vf:
            assert vf.header.info["EVO_DELTA"].number == "A"
            for r, (_, _, a) in zip(vf, ann):
                assert r.info.get("EVO_DELTA") == a.get("EVO_DELTA") and r.info.get("EVO_REF_LL") == a.get("EVO_REF_LL")
        text = path.read_text()
        assert text.count("##evo_model=tiny\n") == 1 and text.count("##INFO=<ID=EVO_DELTA,") == 1


def test_bgzip_output_is_indexed_unless_unsorted(tmp_path):
    vcf, _ = _brca1_slice(tmp_path)
    reader = VcfReader(vcf)
    ann = [(r.chrom, r.pos, {"EVO_REF_LL": -1.0}) for r in reader]
    out = tmp_path / "o.vcf.gz"
    assert write_annotated_vcf(out, reader, FIELDS, [], ann, compressed=True)
    with pysam.VariantFile(str(out)) as vf:
        assert len(list(vf.fetch("GRCh37_chr17_41100001_41300000", 97723, 97724))) == 3
    unsorted = tmp_path / "unsorted.vcf"
    lines = vcf.read_text().splitlines(keepends=True)
    body = [line for line in lines if not line.startswith("#")]
    unsorted.write_text("".join([line for line in lines if line.startswith("#")] + body[3:] + body[:3]))
    reader = VcfReader(unsorted)
    ann = [(r.chrom, r.pos, {}) for r in reader]
    assert write_annotated_vcf(tmp_path / "u.vcf.gz", reader, FIELDS, [], ann, compressed=True) is False
    assert (tmp_path / "u.vcf.gz").exists() and not (tmp_path / "u.vcf.gz.tbi").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporaries left


def test_bcf_input(tmp_path):
    bcf = tmp_path / "slice.bcf"
    with pysam.VariantFile(str(BRCA1 / "brca1_sge_first48.region.vcf")) as vf, \
            pysam.VariantFile(str(bcf), "wb", header=vf.header) as out:
        for rec in vf:
            out.write(rec)
    reader = VcfReader(bcf, [parse_region("GRCh37_chr17_41100001_41300000:97722-97723")])
    assert reader.is_bcf and len(list(reader)) == 6
    ann = [(r.chrom, r.pos, {"EVO_REF_LL": -2.0}) for r in reader]
    write_annotated_vcf(tmp_path / "o.vcf", reader, FIELDS, [], ann, compressed=False)
    with pysam.VariantFile(str(tmp_path / "o.vcf")) as vf:
        assert [r.info["EVO_REF_LL"] for r in vf] == [-2.0] * 6


def test_annotations_must_match_the_records_one_to_one(tmp_path):
    reader = VcfReader(EDGE / "bcftools/norm.vcf")
    ann = [(r.chrom, r.pos, {"EVO_REF_LL": -1.5}) for r in reader]
    out = tmp_path / "out.vcf"
    first = f"{ann[0][0]}:{ann[0][1]}"
    last = f"{ann[-1][0]}:{ann[-1][1]}"
    for annotations, message in [(ann + [("chrX", 5, {})], "has no record for the scored record chrX:5"),
                                 (ann[:-1], f"record {last} was not scored"),
                                 ([("chrX", 5, {})] + ann[1:], f"record {first} does not match the scored record chrX:5")]:
        with pytest.raises(InputError, match=message):
            write_annotated_vcf(out, reader, FIELDS, [], annotations, compressed=False)
        assert not out.exists()
    write_annotated_vcf(out, reader, FIELDS, [], ann, compressed=False)
    with pysam.VariantFile(str(out)) as vf:
        assert [(r.chrom, r.pos, r.info["EVO_REF_LL"]) for r in vf] == [(c, p, -1.5) for c, p, _ in ann]


def test_rows_must_match_the_records_one_to_one():
    from evo_cli.variants import Summary, _rows

    reader = VcfReader(EDGE / "bcftools/fixref.3.vcf")
    recs = list(reader)
    results = [[r.chrom, r.pos, ["ok"] * len(r.alts), -1.0, [-2.0] * len(r.alts)] for r in recs]
    rows = list(_rows(reader, iter(results), Summary()))
    assert len(rows) == sum(len(r.alts) for r in recs) and rows[0][5:8] == (-1.0, -2.0, -1.0)
    one_more_alt = [results[0][:2] + [["ok"] * (len(recs[0].alts) + 1), -1.0, [-2.0] * (len(recs[0].alts) + 1)]]
    for bad, message in [(results[:-1], f"record {recs[-1].chrom}:{recs[-1].pos} was not scored"),
                         (results + [["chrZ", 1, ["ok"], -1.0, [-2.0]]], "ends before the scored record chrZ:1"),
                         (one_more_alt + results[1:], "does not match the scored record")]:
        with pytest.raises(InputError, match=message):
            list(_rows(reader, iter(bad), Summary()))


def test_output_formats_by_extension_agree():
    from evo_cli.io.tables import TABLE_EXTENSIONS, table_format
    from evo_cli.variants import output_format

    for ext, fmt in TABLE_EXTENSIONS.items():
        assert output_format(f"out{ext.upper()}") == table_format(f"out{ext}") == fmt
    assert output_format("x.tab") == "tsv"  # score-variants refused .tab that evo score took
    assert [output_format(f"o{e}") for e in (".vcf", ".vcf.gz", ".VCF.BGZ")] == ["vcf", "vcf.gz", "vcf.gz"]
    with pytest.raises(InputError, match="cannot tell the output format"):
        output_format("o.csv")


def test_vcf_text_keeps_undecodable_bytes(tmp_path):
    """VCF text goes through fasta.open_text with surrogateescape: bytes that are not UTF-8 survive."""
    src = (EDGE / "cyvcf2/no-seq-names.vcf").read_bytes()
    vcf = tmp_path / "latin1.vcf"
    vcf.write_bytes(src.replace(b"#CHROM", b"##comment=caf\xe9\n#CHROM", 1))
    reader = VcfReader(vcf)
    header, lines = reader.text()
    out = tmp_path / "o.vcf"
    write_annotated_vcf(out, reader, FIELDS, [], [(r.chrom, r.pos, {}) for r in reader], compressed=False)
    assert b"##comment=caf\xe9\n" in out.read_bytes() and len(list(lines)) == len(list(reader))


def test_plain_gzip_vcf_is_streamed(tmp_path):
    """htslib cannot open plain gzip (it seeks); such a VCF is streamed, with regions filtered."""
    plain = BRCA1 / "brca1_sge_first48.region.vcf"
    gz = tmp_path / "plain.vcf.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    reader = VcfReader(gz)
    assert not reader.indexed and list(reader) == list(VcfReader(plain)) and len(list(reader)) == 48
    assert reader.text()[1] and list(reader.text()[1]) == list(VcfReader(plain).text()[1])
    region = [parse_region("GRCh37_chr17_41100001_41300000:97724-97725")]
    assert list(VcfReader(gz, region)) == list(VcfReader(plain, region)) and len(list(VcfReader(gz, region))) == 6
    ann = [(r.chrom, r.pos, {"EVO_REF_LL": -1.0}) for r in reader]
    write_annotated_vcf(tmp_path / "out.vcf", reader, FIELDS, [], ann, compressed=False)
    assert _data_lines(tmp_path / "out.vcf") == _data_lines(plain)
    (tmp_path / "nohdr.vcf.gz").write_bytes(gzip.compress(b"hello\n"))
    with pytest.raises(InputError, match="nohdr.vcf.gz: not a VCF"):
        VcfReader(tmp_path / "nohdr.vcf.gz")
    (tmp_path / "cut.vcf.gz").write_bytes(gz.read_bytes()[:-100])
    with pytest.raises(InputError, match=r"cut.vcf.gz: cannot read \("):
        list(VcfReader(tmp_path / "cut.vcf.gz"))


def test_text_records_agree_with_htslib():
    """Our parser of text records gives what pysam (htslib) parses, on every edge-case VCF."""
    files = sorted(p for p in DATA.rglob("*.vcf*") if not p.name.endswith((".tbi", ".csi"))
                   and p.name != "test-invalid-header.vcf")
    assert len(files) >= 19
    for path in files:
        with quiet_htslib(), pysam.VariantFile(str(path)) as vf:
            expected = [VcfRecord(r.chrom, r.pos, r.id, r.ref, tuple(r.alts or ())) for r in vf]
        assert list(VcfReader(path)) == expected, path


def test_pos_0_is_read_as_a_telomere(tmp_path):
    """VCF allows POS 0 (a telomere): read like htslib reads it, for the scorer to skip (no base there)."""
    vcf = tmp_path / "tel.vcf"
    vcf.write_text("##fileformat=VCFv4.2\n##contig=<ID=17>\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
                   "17\t0\ttel\tN\t<TEL>\t.\t.\t.\n17\t5\t.\tC\tA\t.\t.\t.\n")
    with quiet_htslib(), pysam.VariantFile(str(vcf)) as vf:
        expected = [VcfRecord(r.chrom, r.pos, r.id, r.ref, tuple(r.alts or ())) for r in vf]
    assert list(VcfReader(vcf)) == expected and expected[0] == VcfRecord("17", 0, "tel", "N", ("<TEL>",))
    assert [r.pos for r in VcfReader(vcf, [Region("17")])] == [5]  # a region is of bases: POS 0 lies in none


@pytest.mark.parametrize("pos, field, message", [
    ("abc", "POS", r"POS 'abc' is not a position"),
    ("-5", "POS", r"POS '-5' is not a position"),
    ("100", "REF", r"REF 'X' is not a sequence of nucleotide codes"),
    ("100", "REF", r"REF '' is not a sequence"),
    ("100", "ALT", r"empty ALT"),
    ("100", "COLS", r"expected tab-separated CHROM, POS, ID, REF and ALT columns, found 3 column\(s\)$"),
    ("100", "SPACES", r"expected tab-separated CHROM, POS, ID, REF and ALT columns, found 1 column\(s\) \(separated "
                      r"by spaces: a VCF separates its columns with tabs\)$"),
])
def test_malformed_record_names_line_and_field(tmp_path, pos, field, message):
    ref, alt = {"REF": ("X" if "X" in message else "", "A"), "ALT": ("C", "")}.get(field, ("C", "A"))
    bad = {"COLS": "17\t100\tx", "SPACES": "17 100 . C A . . ."}.get(field, f"17\t{pos}\t.\t{ref}\t{alt}\t.\t.\t.")
    vcf = tmp_path / "bad.vcf"
    vcf.write_text("##fileformat=VCFv4.2\n##contig=<ID=17>\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
                   f"17\t5\t.\tC\tA\t.\t.\t.\n{bad}\n")
    with pytest.raises(InputError, match=rf"bad.vcf:5: {message}"):
        list(VcfReader(vcf))
    with pytest.raises(InputError, match=rf"bad.vcf:5: {message}"):  # also when filtering regions
        list(VcfReader(vcf, [Region("17")]))


def test_an_index_older_than_its_fasta_is_not_used(tmp_path, monkeypatch):
    """A FASTA replaced after indexing, its old .fai left beside it: htslib read the bases at the old
    offsets (another contig's bases, or a REF "mismatch" blaming the build); the stale index is now left
    alone with a warning and the FASTA indexed again in the cache."""
    import evo_cli.io.reference as reference

    warnings = []
    monkeypatch.setattr(reference.log, "warning", lambda msg, *args: warnings.append(msg % args))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    fa = tmp_path / "ref.fa"
    fa.write_text(">a\nAAAAAAAA\n>b\nCCCCCCCC\n")
    pysam.faidx(str(fa))
    fai = tmp_path / "ref.fa.fai"
    old = fai.read_text()
    fa.write_text(">b\nCCCCCCCC\n>a\nGGGGGGGGTT\n")  # another build: the contigs moved and changed
    os.utime(fai, ns=(10**18, 10**18))
    os.utime(fa, ns=(10**18 + 1, 10**18 + 1))
    with Reference(fa) as ref:
        assert ref.fetch("a", 0, 10) == "GGGGGGGGTT" and ref.fetch("b", 0, 8) == "CCCCCCCC" and ref.length("a") == 10
    assert len(warnings) == 1 and f"{fai} is older than {fa}, so not used" in warnings[0]
    assert fai.read_text() == old and len(list(index_cache_dir().iterdir())) == 1  # never rewritten beside it
    # an index as new as its FASTA is used as it is
    os.utime(fai, ns=(10**18 + 1, 10**18 + 1))
    with Reference(fa) as ref:
        assert ref.length("a") == 8 and len(warnings) == 1


def test_indexed_region_reads_keep_bytes_outside_utf8(tmp_path):
    """A Latin-1 byte in INFO (M\\xfcnchen) is copied through unchanged by every reading path; an indexed
    VCF read by region failed with a bare UnicodeDecodeError."""
    text = (b"##fileformat=VCFv4.2\n##contig=<ID=17>\n##INFO=<ID=CITY,Number=1,Type=String,Description=\"c\">\n"
            b"#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
            b"17\t10\t.\tA\tC\t.\t.\tCITY=M\xfcnchen\n17\t20\t.\tG\tT\t.\t.\tCITY=Z\xc3\xbcrich\n")
    plain = tmp_path / "lat.vcf"
    plain.write_bytes(text)
    gz = tmp_path / "lat.vcf.gz"
    pysam.tabix_compress(str(plain), str(gz))
    pysam.tabix_index(str(gz), preset="vcf")
    lines = {}
    for path in (plain, gz):
        for regions in (None, [Region("17", 0, 15)], [Region("chr17")]):
            reader = VcfReader(path, regions)
            assert [r.pos for r in reader] == ([10] if regions and regions[0].end == 15 else [10, 20])
            lines[path.name, str(regions)] = list(reader.text()[1])
    expected = [line.decode("utf-8", "surrogateescape") for line in text.splitlines()[-2:]]
    assert all(got == expected[: len(got)] for got in lines.values()) and len(set(map(tuple, lines.values()))) == 2
    out = tmp_path / "o.vcf"
    reader = VcfReader(gz, [Region("17")])
    write_annotated_vcf(out, reader, FIELDS, [], [(r.chrom, r.pos, {"EVO_REF_LL": 1.5}) for r in reader],
                        compressed=False)
    assert out.read_bytes().splitlines()[-2:] == [line + b";EVO_REF_LL=1.5" for line in text.splitlines()[-2:]]


def test_a_vcf_index_older_than_its_vcf_is_not_used(tmp_path, monkeypatch):
    """A bgzip VCF rewritten after indexing, its old .tbi beside it: htslib warned, then a region read
    fetched at the old offsets and missed records (here every record of contig 2); the stale index is now
    left alone, with one warning however often the file is opened, and the file is streamed."""
    import evo_cli.io.reference as reference

    warnings = []
    monkeypatch.setattr(reference.log, "warning", lambda msg, *args: warnings.append(msg % args))
    head = "##fileformat=VCFv4.2\n##contig=<ID=1>\n##contig=<ID=2>\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
    plain = tmp_path / "v.vcf"
    gz = tmp_path / "v.vcf.gz"
    plain.write_text(head + "1\t5\ta\tA\tC\t.\t.\t.\n")
    pysam.tabix_compress(str(plain), str(gz))
    pysam.tabix_index(str(gz), preset="vcf")
    plain.write_text(head + "".join(f"1\t{p}\tb{p}\tA\tC\t.\t.\t.\n" for p in range(1, 400))
                     + "2\t7\tc\tG\tT\t.\t.\t.\n")
    pysam.tabix_compress(str(plain), str(gz), force=True)
    tbi = tmp_path / "v.vcf.gz.tbi"
    os.utime(tbi, ns=(10**18, 10**18))
    os.utime(gz, ns=(10**18 + 1, 10**18 + 1))
    for _ in range(2):
        reader = VcfReader(gz, [Region("2")])
        assert not reader.indexed and [(r.chrom, r.pos, r.id) for r in reader] == [("2", 7, "c")]
        assert [line.split("\t")[2] for line in reader.text()[1]] == ["c"]
    assert warnings == [f"warning: {tbi} is older than {gz}, so not used (the VCF changed after indexing); reading "
                        "the whole file instead: refresh it with `tabix -f` or `bcftools index -f`"]
    os.utime(tbi, ns=(10**18 + 1, 10**18 + 1))  # as new as the file: used
    assert VcfReader(gz, [Region("2")]).indexed
