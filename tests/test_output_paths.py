"""Every output of every command that cannot be a file (its parent is a file) ends in one line naming it
before the model loads: a run never computes for minutes and then fails to write."""

from __future__ import annotations

from pathlib import Path

import pytest

from .test_cli_score_variants import evo

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "data"
FA = EXAMPLES / "ecoli_first20kb.fa"
VCF = EXAMPLES / "thrA_snvs.vcf"
GENES = EXAMPLES / "ecoli_genes.fa"
REGION = ["--region", "NC_000913.3:321-322"]


@pytest.mark.parametrize("argv, bad", [
    (["score-variants", "--vcf", VCF, "--fasta", FA, "-o", "{bad}"], "{bad}"),
    (["score", "--fasta", GENES, "-o", "{bad}"], "{bad}"),
    (["score", "--fasta", GENES, "-o", "{ok}", "--per-position", "{bad}"], "{bad}"),
    (["score", "--fasta", GENES, "-o", "{ok}", "--bedgraph", "{bad}.bedGraph"], "{bad}.bedGraph"),
    (["mutagenize", "--fasta", FA, *REGION, "-o", "{ok}", "--bedgraph", "{bad}.bw"], "{bad}.bw"),
    (["mutagenize", "--fasta", FA, *REGION, "-o", "{ok}", "--plot", "{bad}.png"], "{bad}.png"),
])
def test_unwritable_output_fails_before_the_model_loads(tmp_path, argv, bad):
    (tmp_path / "file").write_text("")
    names = {"bad": str(tmp_path / "file" / "out.tsv"), "ok": str(tmp_path / "ok.tsv")}
    # a model that does not exist: the output is checked first
    code, _, err = evo(*[str(a).format(**names) for a in argv], "-m", tmp_path / "no_model")
    assert code == 1
    assert err.strip() == f"evo: error: {bad.format(**names)}: cannot create it, {tmp_path / 'file'} is not a directory"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_device_or_pipe_without_an_extension_gets_the_stdout_format(tmp_path):
    """``-o /dev/stdout`` or a FIFO needed --format, though stdout has a format for every command: it now
    gets that format (TSV, VCF, FASTA); a name with an extension still decides, and a regular file
    without one is still an error."""
    import os

    from evo_cli import mutagenesis, variants
    from evo_cli.errors import InputError
    from evo_cli.io import generated, tables

    fifo = tmp_path / "out"
    os.mkfifo(fifo)
    named = tmp_path / "out.parquet"
    os.mkfifo(named)
    assert tables.table_format(fifo) == "tsv" and tables.table_format(named) == "parquet"
    assert variants.output_format(fifo) == "vcf" and variants.output_format(named) == "parquet"
    assert mutagenesis.output_format(fifo) == "tsv" and mutagenesis.output_format(named) == "parquet"
    assert generated.output_format(fifo, "auto") == "fasta"
    plain = tmp_path / "plain"
    for check in (lambda: tables.table_format(plain), lambda: variants.output_format(plain),
                  lambda: mutagenesis.output_format(plain), lambda: generated.output_format(plain, "auto")):
        with pytest.raises(InputError, match="cannot tell the"):
            check()


def test_a_gzipped_track_names_the_output_and_is_the_same_bytes_every_run(tmp_path):
    """The gzip header of a .bedGraph.gz carried its temporary's name (`gunzip -N` restored that) and the
    time of writing, so a rerun or a resumed run wrote other bytes."""
    import gzip

    from evo_cli.io.tracks import track_writer

    out = tmp_path / "t.bedGraph.gz"
    written = []
    for _ in range(2):
        with track_writer(out, {"c": 3}, name="x") as write:
            write([("c", 0, -1.5), ("c", 1, float("nan")), ("c", 2, -0.25)])
        written.append(out.read_bytes())
    data = written[0]
    assert written[1] == data and data[4:8] == b"\0\0\0\0"  # MTIME 0: no time of writing
    assert data[3] & 0x08 and data[10:data.index(b"\0", 10)] == b"t.bedGraph"  # FNAME: the output's name
    assert gzip.decompress(data).decode() == 'track type=bedGraph name="x"\nc\t0\t1\t-1.5\nc\t2\t3\t-0.25\n'
