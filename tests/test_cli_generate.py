"""``evo generate``: conformance greedy tokens through the CLI, output formats, flag and prompt errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from evo_cli.cli.main import cli
from evo_cli.errors import InputError
from evo_cli.io.fasta import read_fasta
from evo_cli.io.generated import read_generations_jsonl
from evo_cli.model.tokenizer import decode

from .conftest import CASES, CONFORMANCE, case_id

TINY = str(CONFORMANCE / "evo2" / "tiny_a")


def _run(args):
    return CliRunner().invoke(cli, ["generate", "--device", "cpu", "--dtype", "float32", *args])


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_greedy_matches_reference(case, tmp_path):
    v = load_file(str(case / "vectors.safetensors"))
    prompts = [decode(row) for row in v["prompt_ids"].tolist()]
    out = tmp_path / "out.jsonl"
    res = _run(["--model", str(case), *[a for p in prompts for a in ("--prompt", p)], "--n-tokens", "32",
                "--top-k", "1", "-o", str(out)])
    assert res.exit_code == 0, res.output
    records = read_generations_jsonl(out)
    assert [r["prompt_id"] for r in records] == ["prompt1", "prompt2"]
    assert torch.equal(torch.tensor([r["token_ids"] for r in records]), v["generated_ids"])
    assert all(r["sequence"] == decode(r["token_ids"]) and r["top_k"] == 1 for r in records)


def test_fasta_and_jsonl_agree(tmp_path):
    args = ["--model", TINY, "-p", "ACGTACGTTG", "-p", "GGCA", "-n", "24", "--num-samples", "2", "--seed", "5",
            "--top-k", "0", "--temperature", "3"]
    res = _run([*args, "-o", str(tmp_path / "g.jsonl")])
    assert res.exit_code == 0, res.output
    res = _run([*args, "-o", str(tmp_path / "g.fa")])
    assert res.exit_code == 0, res.output
    records = read_generations_jsonl(tmp_path / "g.jsonl")
    fasta = read_fasta(tmp_path / "g.fa", uppercase=False, alphabet=None)
    assert [f.id for f in fasta] == ["prompt1_sample0", "prompt1_sample1", "prompt2_sample0", "prompt2_sample1"]
    replaced = 0
    for rec, fa in zip(records, fasta):
        # restated, not through fasta_letters: ASCII letters as sampled, N for any other token
        letter = [chr(t).isascii() and chr(t).isalpha() for t in rec["token_ids"]]
        replaced += letter.count(False)
        assert rec["sequence"] == "".join(map(chr, rec["token_ids"]))
        assert fa.sequence == "".join(c if ok else "N" for c, ok in zip(rec["sequence"], letter))
        assert len(fa.sequence) == 24
        assert f"prompt={rec['prompt_id']} sample={rec['sample']} n_tokens=24 temperature=3.0 top_k=0 top_p=1.0 seed=5 " \
               f"model={TINY}" in fa.description
        assert isinstance(rec["logprob_mean"], float) and rec["logprob_mean"] < 0
    # the random model emits bytes that are not letters: they are counted in one warning
    assert replaced > 0 and f"{replaced} generated token(s) are not letters" in res.output


def test_stdout_and_prompts_fasta(tmp_path):
    (tmp_path / "p.fa").write_text(">chr1_left some description\nacgtacgt\n>second\nTTGACA\n")
    res = _run(["--model", TINY, "--prompts", str(tmp_path / "p.fa"), "-n", "8", "--top-k", "1"])
    assert res.exit_code == 0, res.output
    assert ">chr1_left_sample0 prompt=chr1_left sample=0 n_tokens=8" in res.stdout
    assert ">second_sample0 prompt=second" in res.stdout
    assert "upper-cased lowercase bases in chr1_left" in res.output


@pytest.mark.parametrize("args, message", [
    (["-p", "ACGT", "--temperature", "0"], "--temperature 0 means greedy decoding"),
    (["-p", "ACGT", "--top-p", "0"], "--top-p"),
    # FloatRange lets nan (and inf above an open range) through: they failed after the model loaded, exit 1
    (["-p", "ACGT", "--top-p", "nan"], "'--top-p': nan is not a finite number"),
    (["-p", "ACGT", "--temperature", "nan"], "'--temperature': nan is not a finite number"),
    (["-p", "ACGT", "--temperature", "inf"], "'--temperature': inf is not a finite number"),
    (["-p", "ACGT", "--n-tokens", "0"], "--n-tokens"),
    (["-p", "ACGT", "--num-samples", "0"], "--num-samples"),
    (["-p", "ACGT", "--num-samples", "99999999999999999999"], "--num-samples"),  # it ran the machine out of memory
    (["-p", "ACGT", "--batch-size", "99999999999999999999"], "--batch-size"),
    ([], "give prompts with --prompt"),
])
def test_usage_errors(args, message):
    res = _run(["--model", TINY, *args])
    assert res.exit_code == 2 and message in res.output, res.output


def test_a_missing_or_folder_prompts_file_is_a_bad_file(tmp_path):
    """Exit 1 and the FASTA reader's words, as for `evo score --fasta` (click's own check said exit 2)."""
    for path, message in ((tmp_path / "none.fa", "none.fa: no such file"), (tmp_path, "is a directory")):
        res = _run(["--model", TINY, "--prompts", str(path)])
        assert res.exit_code == 1 and isinstance(res.exception, InputError) and message in str(res.exception)


def test_both_prompt_sources_is_a_usage_error(tmp_path):
    (tmp_path / "p.fa").write_text(">a\nACGT\n")
    res = _run(["--model", TINY, "-p", "ACGT", "--prompts", str(tmp_path / "p.fa")])
    assert res.exit_code == 2 and "one of the two" in res.output


@pytest.mark.parametrize("args, message, code", [
    # a --prompt is an option value: exit 2, as a --region that does not parse
    (["-p", "ACGT", "-p", "ACGRT"], "prompt 'prompt2' has 'R' at position 4", 2),
    (["-p", "ACGT", "-n", "8190"], "past the model's context of 8,192", 1),
])
def test_input_errors(args, message, code, tmp_path):
    res = _run(["--model", TINY, *args, "-o", str(tmp_path / "x.fa")])
    assert res.exit_code == code and message in (res.output if code == 2 else str(res.exception))
    assert code == 2 or isinstance(res.exception, InputError)
    assert not (tmp_path / "x.fa").exists() and "generating" not in res.output  # fails before any progress bar


def test_bad_prompt_is_one_line_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "evo_cli.cli.main", "generate", "--model", TINY, "-p", "AC-GT"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == ("evo: error: Invalid value for '--prompt': prompt 'prompt1' has '-' at position 3: "
                                   "prompts must be DNA (A, C, G, T) (see `evo generate --help`)")
    # from a FASTA file the same prompt is a bad input (exit 1)
    fasta = tmp_path / "p.fa"
    fasta.write_text(">p\nAC-GT\n")
    proc = subprocess.run([sys.executable, "-m", "evo_cli.cli.main", "generate", "--model", TINY, "--prompts", fasta],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.strip() == ("evo: error: prompt 'p' has '-' at position 3: prompts must "
                                                            "be DNA (A, C, G, T)")


def test_bad_output_fails_before_the_model_loads(tmp_path, monkeypatch):
    import evo_cli.cli.generate as gen_cli

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(gen_cli, "load_model_cli", no_load)
    (tmp_path / "file").write_text("")
    # exit 1 for the file system's objections, 2 for the command line's (names, --format)
    cases = [(tmp_path, f"{tmp_path}: is a directory, expected an output file name", 1),
             (tmp_path / "file" / "g.fa", f"{tmp_path / 'file' / 'g.fa'}: cannot create it, {tmp_path / 'file'} is not a directory", 1),
             (tmp_path / "g.txt", f"{tmp_path / 'g.txt'}: cannot tell the output format from the extension", 2),
             # FASTA written under a .jsonl name (or the reverse) was accepted
             ((tmp_path / "g.jsonl", "--format", "fasta"),
              f"--format fasta contradicts -o {tmp_path / 'g.jsonl'} (a jsonl name): drop --format or rename the output", 2),
             ((tmp_path / "g.fa", "--format", "jsonl"),
              f"--format jsonl contradicts -o {tmp_path / 'g.fa'} (a fasta name)", 2)]
    for output, message, code in cases:
        output = output if isinstance(output, tuple) else (output,)
        proc_code, err = _main_err(["generate", "--model", TINY, "-p", "ACGT", "-o", *map(str, output)])
        assert proc_code == code and err.startswith(f"evo: error: {message}") and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
    # an explicit format takes any file name
    from evo_cli.io.generated import output_format

    assert output_format(tmp_path / "g.txt", "jsonl") == "jsonl" and output_format(tmp_path / "new" / "g.FA") == "fasta"
    assert output_format(tmp_path / "g.jsonl", "jsonl") == "jsonl" and output_format("-", "jsonl") == "jsonl"


def _main_err(args):
    import contextlib
    import io

    from evo_cli.cli.main import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            main(args)
            code = 0
        except SystemExit as e:
            code = e.code
    return code, err.getvalue()


def test_resume_takes_the_interrupted_runs_seed_and_gives_its_output(tmp_path):
    """9 rows in 5 batches of 2: stopped in the third batch, resumed with the stored seed."""
    from pathlib import Path

    import evo_cli
    from evo_cli.generation import run_generate

    model = evo_cli.load_model(TINY, device="cpu", dtype="float32")
    prompts = {"a": "ACGTAC", "b": "GGATCC", "c": "TTAGCA"}
    kw = dict(num_samples=3, batch_size=2, settings={"run": 1}, header={"model": "tiny"})
    out, partial = tmp_path / "gen.jsonl", Path(str(tmp_path / "gen.jsonl") + ".evo-partial")
    steps = []

    def stop_in_third_batch(n):  # one call per generated step, 5 per batch
        steps.append(n)
        if len(steps) == 11:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_generate(model, prompts, 5, out, progress=stop_in_third_batch, **kw)
    assert not out.exists() and partial.read_text().count("\n") == 3
    with pytest.raises(InputError, match="add --resume"):
        run_generate(model, prompts, 5, out, **kw)
    with pytest.raises(InputError, match=r"settings differ \(seed: "):
        run_generate(model, prompts, 5, out, resume=True, seed=7, **kw)
    gens, resumed = run_generate(model, prompts, 5, out, resume=True, **kw)
    assert resumed == 4 and not partial.exists() and len(gens) == 9
    seed = gens[0].seed
    resumed_bytes = out.read_bytes()
    out.unlink()
    fresh, _ = run_generate(model, prompts, 5, out, seed=seed, **kw)
    assert out.read_bytes() == resumed_bytes and fresh == gens


def test_cli_resume_needs_a_file():
    res = _run(["-m", TINY, "-p", "ACGT", "--resume"])
    assert res.exit_code == 2 and "--resume needs an output file" in res.output
    # an empty -o is stdout too: it was refused only after the model had loaded, exit 1
    res = _run(["-m", TINY, "-p", "ACGT", "-o", "", "--resume"])
    assert res.exit_code == 2 and "--resume needs an output file" in res.output


def test_empty_output_is_stdout():
    res = _run(["-m", TINY, "-p", "ACGT", "-n", "3", "--top-k", "1", "-o", ""])
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith(">prompt1_sample0 prompt=prompt1 sample=0 n_tokens=3 ")
    assert "x 3 tokens (seed " in res.stderr and res.stderr.rstrip().endswith("to stdout")


def test_generations_per_run_are_bounded():
    """prompts x samples past MAX_GENERATIONS is refused before anything runs (every generation is kept
    until the output is written)."""
    import evo_cli
    from evo_cli.limits import MAX_GENERATIONS

    model = evo_cli.load_model(TINY, device="cpu")
    with pytest.raises(InputError, match=r"2 prompt\(s\) x 500,001 samples: at most 1,000,000 generations per run"):
        evo_cli.generate(model, ["ACGT", "GGCA"], n_tokens=1, num_samples=MAX_GENERATIONS // 2 + 1)


@pytest.mark.parametrize("name", ["g.fa", "g.jsonl", "g.fa.gz"])
def test_resume_of_a_finished_run_keeps_its_seed(tmp_path, name):
    """``--resume`` after the run had finished (no progress file left: a requeued job, a rerun to be
    safe) drew a fresh seed and replaced the output with other sequences; it reruns with the seed the
    output records and writes the same bytes."""
    out = tmp_path / name
    args = ["--model", TINY, "-p", "ACGTAC", "-p", "GGA", "-n", "6", "--top-k", "0", "--temperature", "5",
            "--num-samples", "2", "-o", str(out)]
    assert _run(args).exit_code == 0
    first = out.read_bytes()
    res = _run([*args, "--resume"])
    assert res.exit_code == 0, res.output
    assert out.read_bytes() == first


def test_too_many_generations_fail_before_the_model_loads(monkeypatch):
    """prompts x --num-samples past the limit was refused only after the model had loaded (minutes for
    a large model); the prompts and the count are known from the command line."""
    import evo_cli.cli.generate as gen_cli
    from evo_cli.limits import MAX_GENERATIONS

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(gen_cli, "load_model_cli", no_load)
    code, err = _main_err(["generate", "--model", TINY, "-p", "ACGT", "-p", "GGCA", "--num-samples",
                           str(MAX_GENERATIONS // 2 + 1)])
    assert code == 1 and err == ("evo: error: 2 prompt(s) x 500,001 samples: at most 1,000,000 generations per "
                                 "run (each is kept until the output is written); split the run\n"), err


def test_gz_outputs_are_gzip(tmp_path):
    """``-o gen.fa.gz`` was refused (no known extension) and ``--format fasta -o gen.fa.gz`` wrote plain
    text under a gzip name; a name ending in .gz is written gzip-compressed, the bytes of the plain output
    inside, and its format comes from the name before .gz."""
    import gzip

    args = ["--model", TINY, "-p", "ACGTAC", "-n", "5", "--seed", "3", "--top-k", "0", "--temperature", "5"]
    for plain, packed, extra in (("g.fa", "g.fa.gz", []), ("g.jsonl", "g.jsonl.gz", []),
                                 ("g.fa", "g.gz", ["--format", "fasta"])):
        assert _run([*args, "-o", str(tmp_path / plain)]).exit_code == 0
        res = _run([*args, *extra, "-o", str(tmp_path / packed)])
        assert res.exit_code == 0, res.output
        # the recorded command names its own output
        expected = (tmp_path / plain).read_bytes().replace(str(tmp_path / plain).encode(),
                                                          str(tmp_path / packed).encode())
        assert gzip.decompress((tmp_path / packed).read_bytes()) == expected, packed
    tokens = [r["token_ids"] for r in read_generations_jsonl(tmp_path / "g.jsonl")]
    assert [r["token_ids"] for r in read_generations_jsonl(tmp_path / "g.jsonl.gz")] == tokens
    res = _run([*args, "--format", "fasta", "-o", str(tmp_path / "g.jsonl.gz")])
    assert res.exit_code == 2 and "contradicts" in res.output


def test_progress_lines_on_a_non_terminal(monkeypatch):
    """On a non-terminal stderr (a batch job's log) rich draws the bar only at the end, so a long run
    showed no progress at all; it writes a plain progress line every PROGRESS_LINE_SECONDS."""
    import re

    import evo_cli.cli.options as options

    monkeypatch.setattr(options, "PROGRESS_LINE_SECONDS", 0.0)
    res = _run(["--model", TINY, "-p", "ACGT", "-p", "GGA", "-n", "2", "--top-k", "1", "--batch-size", "1"])
    assert res.exit_code == 0, res.output
    lines = re.findall(r"^evo: generating (\S+) tokens \((\S+)%\)", res.stderr, re.M)
    assert lines == [("1/4", "25.0"), ("2/4", "50.0"), ("3/4", "75.0"), ("4/4", "100.0")], res.stderr


def test_past_a_published_models_context_fails_before_it_loads(monkeypatch):
    """A published or bundled model's context is known by its name: -n past it failed only after the
    download and the load (hours for a 40B model not yet in the cache)."""
    import evo_cli.cli.generate as gen_cli

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(gen_cli, "load_model_cli", no_load)
    for model, context in (("evo-demo", "2,048"), ("evo2_7b_base", "8,192")):
        code, err = _main_err(["generate", "--model", model, "-p", "ACGT", "-n", "9000"])
        assert code == 1 and err == (f"evo: error: prompt 'prompt1' (4 tokens) + 9,000 new tokens = 9,004 positions, "
                                     f"past the model's context of {context}: lower -n/--n-tokens\n"), err
