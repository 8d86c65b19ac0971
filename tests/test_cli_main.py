"""``evo`` itself: Ctrl-C, a closed stdout pipe, -v anywhere, and start-up without torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

import evo_cli.checkpoints
from evo_cli.cli.main import main

from .test_cli_score_variants import evo


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evo_cli.checkpoints, "describe_checkpoint", interrupt)
    code, out, err = evo("info", "-m", "evo2_7b")
    assert code == 130 and out == "" and err.strip() == "evo: interrupted"


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


def test_closed_stdout_exits_quietly():
    """The reader is gone before evo writes: no traceback, no 'Exception ignored', exit 141."""
    proc = subprocess.Popen([sys.executable, "-m", "evo_cli.cli.main", "models"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait() == 141 and err == ""

