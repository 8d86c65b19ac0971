"""``evo info`` and the CLI's error discipline."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from evo_cli.cli.main import cli

from .conftest import CASES, CONFORMANCE, case_id


def test_info_reports_config():
    res = CliRunner().invoke(cli, ["info", "--model", str(CONFORMANCE / "evo2" / "tiny_b_long"), "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert d["pattern"] == "SMLASMLA" and d["hidden size"] == 64 and d["stored dtype"] == "bfloat16"
    assert d["format"] == "vortex" and d["parameters"] == 445_744


def test_bad_checkpoint_is_one_line_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "evo_cli.cli.main", "info", "--model", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "empty directory" in proc.stderr


def test_a_device_list_is_a_usage_error():
    """--device cuda:0,cuda:1 (a split model, for the model commands) passed the parser and failed as
    "unknown device 'cpu,cpu'" with exit status 1."""
    res = CliRunner().invoke(cli, ["info", "--model", str(CONFORMANCE / "evo2" / "tiny_a"), "--device", "cpu,cpu"])
    assert res.exit_code == 2, res.output
    assert "Invalid value for '--device': 'cpu,cpu': give one device" in " ".join(res.output.split())
    res = CliRunner().invoke(cli, ["info", "--model", str(CONFORMANCE / "evo2" / "tiny_a"), "--device", "cpu", "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["runtime dtype"].startswith("float32 on cpu")


@pytest.mark.parametrize("model", [*CASES, "evo-demo"], ids=lambda m: m if isinstance(m, str) else case_id(m))
def test_info_counts_what_the_loaded_model_holds(model):
    """The parameter count, layers and block pattern that `evo info` reads from the config (weights
    unread) are those of the model load_model builds from the weights."""
    import evo_cli

    res = CliRunner().invoke(cli, ["info", "--model", str(model), "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    net = evo_cli.load_model(model, device="cpu")
    assert d["parameters"] == sum(p.numel() for p in net.parameters())
    assert d["layers"] == len(net.blocks) and d["pattern"] == "".join(_letter(b) for b in net.blocks)
    assert d["hidden size"] == net.embedding_layer.weight.shape[1] and d["vocab"] == net.embedding_layer.weight.shape[0]


def _letter(block) -> str:
    """The pattern letter of a built block, from the tensors it holds: A attention; Evo 1 H (complex
    poles); Evo 2 L (modal), S (7-tap explicit filter, no D skip), M (128-tap explicit filter, D skip)."""
    f = getattr(block, "filter", None)
    if f is None:
        return "A"
    if hasattr(f, "poles"):
        return "H"
    if hasattr(f, "log_poles"):
        return "L"
    return "M" if hasattr(f, "D") else "S"
