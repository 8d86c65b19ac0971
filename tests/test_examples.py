"""The SLURM scripts the README points to: valid bash, and every evo option and model they name exists."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from evo_cli import registry
from evo_cli.cli.main import cli

SLURM = sorted((Path(__file__).resolve().parent.parent / "examples" / "slurm").glob("*.sbatch"))


def evo_call(text: str) -> tuple[str, list[str]]:
    """The evo subcommand and the options of the torchrun line that runs it (continuations joined)."""
    joined = re.sub(r"\\\n\s*", " ", text)
    line = next(line for line in joined.splitlines() if '"$(which evo)"' in line)
    words = shlex.split(line.split('"$(which evo)"', 1)[1])
    return words[0], [w for w in words[1:] if w.startswith("-")]


def test_there_are_slurm_examples():
    assert {p.name for p in SLURM} == {"one_node_8gpu.sbatch", "multi_node.sbatch"}


@pytest.mark.parametrize("script", SLURM, ids=lambda p: p.name)
def test_slurm_script_parses_and_uses_existing_options(script):
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    command, options = evo_call(text)
    known = {opt for param in cli.commands[command].params for opt in param.opts}
    assert options and set(options) <= known, set(options) - known
    assert "--resume" in options  # torchrun's --max-restarts reruns the command: it must continue, not refuse
    model = re.search(r"^MODEL=(\S+)$", text, re.M).group(1)
    assert model in registry.MODELS or model in registry.BUNDLED
