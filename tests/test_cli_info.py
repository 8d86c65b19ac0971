"""``evo info`` and the CLI's error discipline."""

import json
import subprocess
import sys

from click.testing import CliRunner

from evo_cli.cli.main import cli

from .conftest import CONFORMANCE


def test_info_reports_config():
    res = CliRunner().invoke(cli, ["info", "--model", str(CONFORMANCE / "evo2" / "tiny_b_long"), "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert d["pattern"] == "SMLASMLA" and d["hidden size"] == 64 and d["stored dtype"] == "bfloat16"
    assert d["format"] == "vortex" and d["parameters"] == "445,744"


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
