"""The commands agree with each other: exit status (2 for a wrong command line, 1 for inputs), the
error line, and the spelling of the options they share. Every case fails before a model loads."""

from __future__ import annotations

import click
import pytest

from evo_cli.cli.commands import COMMANDS
from evo_cli.errors import InputError, OptionError

from .test_cli_score_variants import FA, INDELS, TINY, evo

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODEL = ["-m", str(TINY), "--kernels", "torch"]
REGION = ["--region", "chr17:1-5"]

# (command line with {t} for a temporary folder, the output that must not appear)
USAGE_ERRORS = {
    "score-variants --format contradicts -o": (["score-variants", "--vcf", INDELS, "--fasta", FA, "-o", "{t}/o.tsv",
                                                "--format", "vcf"], "o.tsv"),
    "score --format contradicts -o": (["score", "--fasta", FA, "-o", "{t}/o.tsv", "--format", "parquet"], "o.tsv"),
    "mutagenize --format contradicts -o": (["mutagenize", "--fasta", FA, *REGION, "-o", "{t}/o.tsv", "--format",
                                            "vcf.gz"], "o.tsv"),
    "generate --format contradicts -o": (["generate", "-p", "ACGT", "-o", "{t}/g.fa", "--format", "jsonl"], "g.fa"),
    "score-variants unknown extension": (["score-variants", "--vcf", INDELS, "--fasta", FA, "-o", "{t}/o.xyz"], "o.xyz"),
    "score unknown extension": (["score", "--fasta", FA, "-o", "{t}/o.xyz"], "o.xyz"),
    "mutagenize unknown extension": (["mutagenize", "--fasta", FA, *REGION, "-o", "{t}/o.xyz"], "o.xyz"),
    "generate unknown extension": (["generate", "-p", "ACGT", "-o", "{t}/o.xyz"], "o.xyz"),
    "embed not parquet": (["embed", "--fasta", FA, "-o", "{t}/e.tsv"], "e.tsv"),
    "score --per-position extension": (["score", "--fasta", FA, "-o", "{t}/o.tsv", "--per-position", "{t}/p.xyz"],
                                       "o.tsv"),
    "mutagenize --plot extension": (["mutagenize", "--fasta", FA, *REGION, "-o", "{t}/o.tsv", "--plot", "{t}/p.gif"],
                                    "o.tsv"),
    "mutagenize --bedgraph extension": (["mutagenize", "--fasta", FA, *REGION, "-o", "{t}/o.tsv", "--bedgraph",
                                         "{t}/p.xyz"], "o.tsv"),
    "plot -o extension": (["plot", INDELS, "-o", "{t}/p.gif"], "p.gif"),
    "score-variants parquet on stdout": (["score-variants", "--vcf", INDELS, "--fasta", FA, "-o", "-", "--format",
                                          "parquet"], None),
    "score parquet on stdout": (["score", "--fasta", FA, "--format", "parquet"], None),
    "embed parquet on stdout": (["embed", "--fasta", FA, "-o", "-"], None),
    "mutagenize parquet on stdout": (["mutagenize", "--fasta", FA, *REGION, "-o", "-", "--format", "parquet"], None),
    "mutagenize nothing to mutate": (["mutagenize", "--fasta", FA, "-o", "{t}/o.tsv"], "o.tsv"),
    "generate no prompt": (["generate", "-o", "{t}/g.fa"], "g.fa"),
    "generate --prompt not DNA": (["generate", "-p", "ACGTX", "-o", "{t}/g.fa"], "g.fa"),
    "selftest --expected unknown": (["selftest", "--expected", "evo2_9z"], None),
    "--resume on stdout": (["score", "--fasta", FA, "--resume"], None),
}


def _args(args, tmp_path):
    return [str(a).replace("{t}", str(tmp_path)) for a in args]


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("evo: error: "), err
    return lines[0]


@pytest.mark.parametrize("case", list(USAGE_ERRORS))
def test_a_wrong_command_line_exits_2_with_the_help_hint_in_every_command(case, tmp_path):
    args, output = USAGE_ERRORS[case]
    code, out, err = evo(*_args(args, tmp_path), *MODEL)
    line = _one_error_line(err)
    assert code == 2 and out == ""
    assert line.endswith(f"(see `evo {args[0]} --help`)"), line
    assert output is None or not (tmp_path / output).exists()
    if "parquet on stdout" in case:  # one wording in every command
        assert line.startswith("evo: error: parquet output needs a file name (-o PATH), not stdout (see "), line


@pytest.mark.parametrize("args", [
    ["score-variants", "--vcf", "{t}/missing.vcf", "--fasta", FA, "-o", "{t}/o.tsv"],
    ["score", "--fasta", "{t}/missing.fa", "-o", "{t}/o.tsv"],
    ["embed", "--fasta", "{t}/missing.fa", "-o", "{t}/o.parquet"],
    ["generate", "--prompts", "{t}/missing.fa", "-o", "{t}/o.fa"],
    ["mutagenize", "--fasta", FA, "--region", "chrZ:1-5", "-o", "{t}/o.tsv"],  # no such contig in the file
    ["score", "--fasta", FA, "-o", "{t}"],  # a directory
    ["embed", "--fasta", FA, "-o", "{t}"],  # a directory, formerly refused by click (2)
])
def test_a_bad_input_or_output_location_exits_1_without_the_hint(args, tmp_path):
    code, out, err = evo(*_args(args, tmp_path), *MODEL)
    line = _one_error_line(err)
    assert code == 1 and out == "" and "--help" not in line
    assert not (tmp_path / "o.tsv").exists()


def test_convert_to_an_existing_file_exits_1_as_the_other_outputs(tmp_path):
    (tmp_path / "f").write_text("x")
    code, _, err = evo("convert", TINY, "-o", tmp_path / "f")
    # was "exists and is not an empty directory", of a file
    assert code == 1 and _one_error_line(err) == (f"evo: error: {tmp_path / 'f'}: is a file; the output is a folder "
                                                  "that must not exist, or be empty")
    code, _, err = evo("convert", TINY, "-o", "")  # was ".: exists and is not an empty directory"
    assert code == 1 and _one_error_line(err) == "evo: error: no output folder given: the path is empty"


def test_option_errors_are_input_errors_for_the_python_api():
    from evo_cli.io.tables import table_format

    assert issubclass(OptionError, InputError)
    with pytest.raises(OptionError, match="--format parquet contradicts -o x.tsv"):
        table_format("x.tsv", "parquet")
    assert table_format("x.tsv", "tsv") == "tsv" and table_format("-", "parquet") == "parquet"


def _options(command: click.Command) -> dict[str, click.Option]:
    return {name: p for p in command.params if isinstance(p, click.Option) for name in p.opts}


def test_shared_options_are_spelled_alike_in_every_command():
    """-o/--output, -m/--model, -q/-v and the run options: the same flags, metavar and help wherever
    they appear."""
    commands = {c.name: _options(c) for c in COMMANDS}
    for name, opts in commands.items():
        assert "-q" in opts and opts["-q"].opts == ["-q", "--quiet"], name
        assert opts["-v"].opts == ["-v", "--verbose"], name
        if "--output" in opts:
            assert opts["--output"].opts == ["-o", "--output"], name
            assert opts["--output"].metavar == ("DIR" if name == "convert" else "PATH"), name
        for flag in ("--fasta", "--vcf", "--per-position", "--bedgraph", "--plot"):  # files: PATH
            if flag in opts:
                assert opts[flag].metavar == "PATH", (name, flag)
        if "--model" in opts:
            assert opts["--model"].opts == ["-m", "--model"] and opts["--model"].metavar == "NAME|PATH", name
            assert opts["--model"].help == commands["score"]["--model"].help, name
        if "--resume" in opts:
            assert opts["--resume"].help.startswith("Continue an interrupted run of the same command"), name
        if "--format" in opts:
            assert opts["--format"].help.startswith("Output format"), name
    model_commands = [n for n, o in commands.items() if "--kernels" in o]
    assert sorted(model_commands) == ["embed", "generate", "mutagenize", "score", "score-variants", "selftest"]
    for name in model_commands:
        for flag in ("--device", "--dtype", "--kernels", "--fp8"):
            assert commands[name][flag].help == commands["score"][flag].help, (name, flag)
    # every command that runs windows or sequences in chunks takes --chunk-size and --batch-size
    for name in ("score-variants", "score", "mutagenize", "embed", "generate"):
        assert "--chunk-size" in commands[name] and "--batch-size" in commands[name], name


def test_generate_takes_chunk_size_as_the_other_commands_and_records_its_first_name():
    from evo_cli.cli.generate import generate
    from evo_cli.cli.options import command_line

    with generate.make_context("generate", ["-p", "ACGT", "--chunk-size", "64", "-m", "m"]) as ctx:
        assert ctx.params["prefill_chunk"] == 64
        assert "--prefill-chunk 64" in command_line(ctx)  # outputs keep their bytes


def test_a_table_named_tsv_gz_is_gzip_in_every_command_that_writes_tables(tmp_path):
    """.vcf.gz and .bedGraph.gz outputs were compressed by their name, while a .tsv.gz table was refused:
    now the same rows, gzip-compressed, with a header that names the output and has no time."""
    import gzip

    from evo_cli.io.fasta import format_fasta

    fasta = tmp_path / "in.fa"
    fasta.write_text(format_fasta("s1", "ACGTACGGTA") + format_fasta("s2", "TTGACA"))
    runs = {
        "score": (["score", "--fasta", fasta], "--per-position"),
        "mutagenize": (["mutagenize", "--fasta", fasta, "--record", "s2", "--window", 8], None),
        "score-variants": (["score-variants", "--vcf", INDELS, "--fasta", FA, "--window", 16], None),
    }
    for name, (args, extra) in runs.items():
        plain, packed = tmp_path / f"{name}.tsv", tmp_path / f"{name}.tsv.gz"
        for out in (plain, packed):
            more = [extra, str(out).replace(".tsv", ".pos.tsv")] if extra else []
            code, _, err = evo(*args, *MODEL, "-q", "-o", out, *more)
            assert code == 0, err
        data = packed.read_bytes()
        assert data[:2] == b"\x1f\x8b" and data[4:8] == b"\0\0\0\0"  # gzip, mtime 0
        assert data[10:10 + len(plain.name) + 1] == plain.name.encode() + b"\0"  # the output's name, less .gz
        assert gzip.decompress(data) == plain.read_bytes() and plain.read_bytes().count(b"\n") >= 3
        if extra:
            pos = tmp_path / f"{name}.pos.tsv"
            assert gzip.decompress((tmp_path / f"{name}.pos.tsv.gz").read_bytes()) == pos.read_bytes()
    # and evo plot reads them
    code, _, err = evo("plot", tmp_path / "mutagenize.tsv.gz", "-o", tmp_path / "m.svg", "-q")
    assert code == 0 and (tmp_path / "m.svg").stat().st_size > 0, err


def test_data_goes_to_stdout_without_o_except_parquet_only_embed(tmp_path):
    """DESIGN's contract, "data goes to -o (or stdout)": score-variants and mutagenize required -o while
    score and generate wrote to stdout without it; now they write what ``-o -`` writes. embed writes only
    Parquet, which needs a file: its missing -o says what to pass. --resume without -o needs a file."""
    from .test_cli_score_variants import SNVS

    fa = tmp_path / "in.fa"
    fa.write_text(">seqN\nACGTTGCAAC\n")
    runs = {"score-variants": ["--vcf", SNVS, "--fasta", FA, "--window", 16, "--format", "tsv"],
            "mutagenize": ["--fasta", fa, "--record", "seqN", "--window", 8]}
    for name, args in runs.items():
        code, out, err = evo(name, *args, *MODEL, "-q")
        assert code == 0, err
        code, piped, err = evo(name, *args, *MODEL, "-q", "-o", "-")
        assert code == 0 and out == piped and out.count("\n") > 10 and "\tdelta" in out.splitlines()[0], err
        code, _, err = evo(name, *args, *MODEL, "--resume")
        assert code == 2 and "--resume needs an output file (-o PATH), not stdout" in err, err
    code, _, err = evo("embed", "--fasta", fa, *MODEL)
    assert code == 2 and err.count("\n") == 1 and "pass -o PATH.parquet (embeddings are written as Parquet" in err
