"""``evo`` itself: Ctrl-C, a closed stdout pipe, -v anywhere, and start-up without torch."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import evo_cli.checkpoints
from evo_cli.cli.commands import COMMANDS
from evo_cli.cli.main import main

from .test_cli_score_variants import evo

DATA_FASTA = Path(__file__).resolve().parent.parent / "examples" / "data" / "ecoli_genes.fa"


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evo_cli.checkpoints, "describe_checkpoint", interrupt)
    code, out, err = evo("info", "-m", "evo2_7b")
    assert code == 130 and out == "" and err.strip() == "evo: interrupted"


def test_ctrl_c_during_the_command_line_import_is_one_line(monkeypatch, capsys):
    """The console script imports click and every command before anything could catch Ctrl-C: a Ctrl-C
    then printed a KeyboardInterrupt traceback. The entry point imports them inside its handler."""
    from evo_cli.cli import launch

    # the installed script's entry point (tomllib would need Python 3.11)
    pyproject = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    assert '\n[project.scripts]\nevo = "evo_cli.cli.launch:main"\n' in pyproject

    class Interrupting:  # an import finder that is "interrupted" while it imports evo_cli.cli.main
        def find_spec(self, name, path=None, target=None):
            if name == "evo_cli.cli.main":
                raise KeyboardInterrupt
            return None

    monkeypatch.delitem(sys.modules, "evo_cli.cli.main")
    monkeypatch.setattr(sys, "meta_path", [Interrupting(), *sys.meta_path])
    with pytest.raises(SystemExit) as exit_:
        launch.main()
    assert exit_.value.code == 130 and capsys.readouterr().err == "evo: interrupted\n"


def test_a_failure_caused_by_ctrl_c_is_reported_as_the_interruption(monkeypatch):
    """Ctrl-C inside a third-party import can leave a half-initialised module whose next use raises
    something else (seen: a RecursionError in numpy's module __getattr__ after a Ctrl-C while numba
    loaded scipy); that ended "evo: error: RecursionError: ..." with exit 1, not as an interruption."""
    import signal

    def interrupted_import(*args, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # the handler raises at once
            raise AssertionError("SIGINT was not delivered")
        except KeyboardInterrupt:
            raise RecursionError("maximum recursion depth exceeded") from None

    monkeypatch.setattr(evo_cli.checkpoints, "describe_checkpoint", interrupted_import)
    code, out, err = evo("info", "-m", "evo2_7b")
    assert code == 130 and out == "" and err == "evo: interrupted\n"
    # the same failure without a Ctrl-C is still reported as an error
    def recursion(*args, **kwargs):
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(evo_cli.checkpoints, "describe_checkpoint", recursion)
    code, out, err = evo("info", "-m", "evo2_7b")
    assert code == 1 and err.startswith("evo: error: RecursionError: maximum recursion depth exceeded")


@pytest.mark.parametrize("flags,traceback", [([], False), (["-v"], True), (["-vvv"], True), (["-qv"], True),
                                             (["-q"], False)])
def test_verbose_flags_anywhere_show_the_traceback(monkeypatch, flags, traceback):
    def bug(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(evo_cli.checkpoints, "describe_checkpoint", bug)
    for args in ([*flags, "info", "-m", "x"], ["info", "-m", "x", *flags]):
        if traceback:
            with pytest.raises(RuntimeError, match="a bug"):
                main(args)
        else:
            code, _, err = evo(*args)
            assert code == 1 and err == "evo: error: RuntimeError: a bug (run with -v for the traceback)\n"


def test_an_end_of_file_inside_a_command_is_an_error_not_ctrl_d(monkeypatch):
    """evo never prompts, so an EOFError is a failure (a library reading a cut file), not the user's
    Ctrl-D: click turned it into "evo: interrupted", exit 130."""
    def cut(*args, **kwargs):
        raise EOFError("Compressed file ended before the end-of-stream marker was reached")

    monkeypatch.setattr(evo_cli.checkpoints, "describe_checkpoint", cut)
    code, out, err = evo("info", "-m", "evo2_7b")
    assert code == 1 and out == "" and err == ("evo: error: EOFError: Compressed file ended before the end-of-stream "
                                               "marker was reached (run with -v for the traceback)\n")


@pytest.mark.parametrize("error,shown", [
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
                  "tried to allocate 41571947520 bytes. Error code 12"), " (an allocation of 38.7 GiB failed)"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
                  "tried to allocate 12582912 bytes. Error code 12"), " (an allocation of 12.0 MiB failed)"),
    (MemoryError(), ""),
])
def test_out_of_memory_is_one_line_saying_what_to_change(monkeypatch, error, shown):
    """A failed allocation (a record too long for its attention cache, a batch too large) says so and
    what to change, not the allocator's message."""
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(evo_cli.checkpoints, "describe_checkpoint", fail)
    code, _, err = evo("info", "-m", "x")
    assert code == 1 and err == (f"evo: error: out of memory{shown}: use shorter sequences or windows, a smaller "
                                 "--batch-size, or a device with more memory\n")


def test_closed_stdout_exits_quietly():
    """The reader is gone before evo writes: no traceback, no 'Exception ignored', exit 141."""
    proc = subprocess.Popen([sys.executable, "-m", "evo_cli.cli.main", "models"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait() == 141 and err == ""



def _imports_torch(code: str) -> bool:
    proc = subprocess.run([sys.executable, "-c", f"{code}\nimport sys\nprint('torch' in sys.modules)"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()[-1] == "True"


def test_files_and_cli_start_up_do_not_import_torch():
    assert not _imports_torch("import evo_cli, evo_cli.io.fasta, evo_cli.io.vcf, evo_cli.io.tables, "
                              "evo_cli.io.embeddings, evo_cli.io.generated, evo_cli.cli.main")
    assert not _imports_torch("from evo_cli.cli.main import main\n"
                              "try:\n    main(['--help'])\nexcept SystemExit:\n    pass")
    # the public API still imports what it needs on first use
    assert _imports_torch("from evo_cli import load_model")


def test_registry_and_evo_models_do_not_import_torch():
    assert not _imports_torch("import evo_cli.registry")
    assert not _imports_torch("from evo_cli.cli.main import main\n"
                              "try:\n    main(['models'])\nexcept SystemExit:\n    pass")


def test_kernel_backends_are_spelled_out_alike():
    from evo_cli import kernels
    from evo_cli.cli.options import KERNEL_BACKENDS

    assert KERNEL_BACKENDS == kernels.BACKENDS


def test_a_backend_the_device_cannot_run_is_one_line(monkeypatch, tmp_path):
    """--kernels triton on a CPU (outside the interpreter the tests use) is refused at load in one line,
    not as an internal RuntimeError from the first op."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    code, _, err = evo("score", "-m", "evo-demo", "--fasta", str(DATA_FASTA), "--kernels", "triton", "-o", "-")
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("evo: error: --kernels triton on CPU needs TRITON_INTERPRET=1") or \
        err.startswith("evo: error: --kernels triton needs the triton package")  # where triton is not installed


def test_ranks_after_the_first_name_themselves(monkeypatch):
    """Under torchrun every rank meets a bad input: the lines after rank 0's say whose they are."""
    def fail(*args, **kwargs):
        raise evo_cli.errors.InputError("bad input")

    monkeypatch.setattr(evo_cli.checkpoints, "describe_checkpoint", fail)
    for rank, name in (("0", "evo"), ("1", "evo (rank 1)")):
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("WORLD_SIZE", "2")
        code, _, err = evo("info", "-m", "x")
        assert code == 1 and err == f"{name}: error: bad input\n"


def test_evo_help_lists_every_command_with_an_untruncated_summary(monkeypatch):
    """`evo --help` at 80 columns gives each command a whole sentence, not click's cut "..." text."""
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = evo("--help")
    lines = out.split("Commands:\n")[1].splitlines()
    names = [line.split()[0] for line in lines if line.strip()]
    assert code == 0 and sorted(names) == sorted(c.name for c in COMMANDS)
    assert all(len(line) <= 80 and not line.endswith("...") for line in lines)


def test_numba_backend_without_numba_is_one_line_naming_the_extra(monkeypatch):
    from evo_cli import kernels

    monkeypatch.setattr(kernels, "numba_available", lambda: False)
    code, _, err = evo("score", "-m", "evo-demo", "--fasta", str(DATA_FASTA), "--kernels", "numba", "-o", "-")
    assert code == 1 and err == 'evo: error: --kernels numba needs the numba package: pip install "evo-cli[cpu]"\n'


# a run of `evo score` that receives SIGTERM while its output is half written (its temporary beside it)
_TERM_WHILE_WRITING = """
import os, signal, sys
from pathlib import Path
import evo_cli.io.atomic as atomic
from evo_cli.cli.main import main
out = Path(sys.argv[1])
umask = atomic._umask
def term_once_the_output_is_written(*args):
    if any(out.parent.glob(f".{out.name}.evo-tmp-*")):
        os.kill(os.getpid(), signal.SIGTERM)
    return umask()
atomic._umask = term_once_the_output_is_written
main(sys.argv[2:])
"""


def test_sigterm_stops_like_ctrl_c_and_resumes(tmp_path):
    """SIGTERM (kill, a scheduler's time limit) mid-write: one line, exit 143, the progress file named and
    kept, no temporary left beside the output; --resume then writes the uninterrupted run's bytes."""
    from .conftest import CONFORMANCE

    fasta, out = tmp_path / "in.fa", tmp_path / "scores.tsv"
    fasta.write_text(">a\nACGTACGTAGCTAGCTAGCATCGATCGA\n>b\nGGGCTAGCTAGCATCAGCATCAGCAT\n")
    args = ["score", "--fasta", str(fasta), "-m", str(CONFORMANCE / "evo2" / "tiny_a"), "--batch-size", "1",
            "-o", str(out)]
    code, _, err = evo(*args)
    assert code == 0, err
    expected = out.read_bytes()
    out.unlink()
    proc = subprocess.run([sys.executable, "-c", _TERM_WHILE_WRITING, str(out), "-q", *args], capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 143, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "evo: terminated"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.fa", "scores.tsv.evo-partial"]
    code, _, err = evo(*args, "--resume")
    assert code == 0, err
    assert out.read_bytes() == expected and sorted(p.name for p in tmp_path.iterdir()) == ["in.fa", "scores.tsv"]
