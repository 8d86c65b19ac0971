"""Helpers shared by the commands: the recorded command line parses back to the same options."""

from __future__ import annotations

import shlex

import click
from click.testing import CliRunner
import pytest

from evo_cli.cli.embed import embed
from evo_cli.cli.main import cli
from evo_cli.cli.options import command_line
from evo_cli.cli.score import score, score_variants
from evo_cli.io.embeddings import read_metadata

from .conftest import CONFORMANCE
from .test_cli_score_variants import FA, INDELS, evo

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = CONFORMANCE / "evo2" / "tiny_a"


def _params(command: click.Command, args: list[str]) -> dict:
    with command.make_context(command.name, list(args)) as ctx:
        return dict(ctx.params)


def _recorded(command: click.Command, args: list[str], **kw) -> str:
    with command.make_context(command.name, list(args)) as ctx:
        return command_line(ctx, **kw)


@pytest.mark.parametrize("command,args", [
    (score_variants, ["--vcf", "in put.vcf", "--fasta", "ref.fa", "-o", "o.vcf", "--region", "chr1:1-5",
                      "--region", "chr2", "--regions", "r.bed", "--skip-ref-mismatch", "--format", "vcf",
                      "--no-prefix-sharing", "--kernels", "torch", "-m", "m", "-q", "--device", "cpu"]),
    (score_variants, ["--vcf", "a.vcf", "--fasta", "ref.fa", "-o", "-", "-m", "m", "--window", "64"]),
    (score, ["--fasta", "x.fa", "--no-bos", "-m", "m", "--per-position", "p.tsv"]),
    (score, ["--fasta", "x.fa", "--bos", "-m", "m"]),
    (embed, ["--fasta", __file__, "-o", "e.parquet", "--layer", "blocks.1", "--layer", "norm", "-m", "m"]),
])
def test_recorded_command_parses_back_to_the_same_options(command, args):
    recorded = _recorded(command, args)
    words = shlex.split(recorded)
    assert words[:2] == ["evo", command.name]
    assert _params(command, words[2:]) == _params(command, args)
    # real flags only, no Python reprs
    assert "(" not in recorded and "True" not in recorded and "False" not in recorded and "--fmt" not in recorded


def test_recorded_command_spelling():
    recorded = _recorded(score_variants, ["--vcf", "in put.vcf", "--fasta", "r.fa", "-o", "o.vcf", "-m", "m",
                                          "--region", "c:1-2", "--region", "d", "--skip-ref-mismatch", "--resume"],
                         skip=("resume",))
    assert recorded == ("evo score-variants --vcf 'in put.vcf' --fasta r.fa --output o.vcf --strand forward "
                        "--region c:1-2 --region d --reduce mean --batch-size 8 --skip-ref-mismatch --model m --device auto "
                        "--dtype auto")
    assert _recorded(score, ["--fasta", "x.fa", "-m", "m", "--no-bos"]).split()[6:8] == ["--no-bos", "--batch-size"]


def test_score_variants_vcf_header_command_reruns(tmp_path):
    out = tmp_path / "o.vcf"
    args = ["--vcf", str(INDELS), "--fasta", str(FA), "-m", str(TINY), "--window", "64", "-o", str(out),
            "--kernels", "torch", "--strand", "both"]
    code, _, err = evo("score-variants", *args)
    assert code == 0, err
    line = next(x for x in out.read_text().splitlines() if x.startswith("##evo_command="))
    words = shlex.split(line.removeprefix("##evo_command="))
    assert words[:2] == ["evo", "score-variants"] and "--kernels" in words
    recorded, given = _params(score_variants, words[2:]), _params(score_variants, args)
    # every option with its value: the given ones as given, None defaults resolved
    assert {k: v for k, v in recorded.items() if k in ("window", "chunk_size", "fmt")} == {
        "window": 64, "chunk_size": 64, "fmt": "vcf"}
    assert {k: v for k, v in recorded.items() if given[k] is not None} == {k: v for k, v in given.items() if v is not None}
    # rerunning the recorded command writes the same file
    expected = out.read_bytes()
    out.unlink()
    code, _, err = evo(*words[1:])
    assert code == 0, err
    assert out.read_bytes() == expected


def test_embed_metadata_command_has_kernels_and_resolved_layers(tmp_path):
    fa = tmp_path / "in.fa"
    fa.write_text(">a\nACGTTGCA\n")
    out = tmp_path / "e.parquet"
    result = CliRunner().invoke(cli, ["embed", "--fasta", str(fa), "-o", str(out), "-m", str(TINY),
                                                    "--kernels", "torch", "--layer", "blocks.-1"])
    assert result.exit_code == 0, result.output
    words = shlex.split(read_metadata(out)["command"])
    params = _params(embed, words[2:])
    assert params["kernels"] == "torch" and params["layers"] == ("blocks.6",) and params["fasta"] == str(fa)
