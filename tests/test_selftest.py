"""``evo selftest``: evo2's own forward-pass test (its prompts, loss, tolerance), PASS/FAIL with numbers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import evo_cli
from evo_cli import registry
from evo_cli import selftest as st
from evo_cli.errors import InputError

from .fp8util import write_fp8_checkpoint
from .test_cli_score_variants import evo

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHORT = [("p1", "ACGTTGCAAGGCTTAACGTAGGCATTACGA"), ("p2", "GATTACAGGCATGCANNACGT")]


def test_the_upstream_prompts_are_packaged():
    prompts = st.upstream_prompts()
    assert [n for n, _ in prompts] == ["L1RE2", "ECOLAC", "NC_007596.2Mammuthusprimigeniusmitochondrion",
                                       "NC_012920.1_homosapiens_mitochondrion"]
    assert [len(s) for _, s in prompts] == [6538, 7056, 6160, 7616]
    assert prompts[0][1].startswith("GAATAGGAACAGCTCCGGTCTACAGC")


def test_pass_is_the_mean_loss_within_the_upstream_epsilon():
    want = st.EXPECTED["evo2_1b_base"][0]
    assert st.SelftestResult(["a", "b"], [want - 0.1, want + 0.1009], [0.8, 0.7], want, 79.5).passed
    assert not st.SelftestResult(["a", "b"], [want - 0.1, want + 0.1021], [0.8, 0.7], want, 79.5).passed
    r = st.SelftestResult(["a", "b"], [0.4, 0.6], [0.8, 0.7], want, 79.5)
    assert r.mean_loss == pytest.approx(0.5) and r.mean_accuracy == pytest.approx(75.0)


def test_without_weights_it_says_what_to_download(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out, err = evo("selftest", "--model", "evo2_1b_base")
    assert code == 1 and out == "" and err.count("\n") == 1
    assert "run `evo download evo2_1b_base`" in err and "huggingface.co/arcinstitute/evo2_1b_base" in err


def test_selftest_on_a_tiny_fp8_model(tmp_path, monkeypatch):
    ckpt = write_fp8_checkpoint(tmp_path / "tiny")
    monkeypatch.setattr(st, "upstream_prompts", lambda: SHORT)
    model = evo_cli.load_model(ckpt, device="cpu", fp8="emulate")
    # the tiny model stands for evo2_1b_base, whose architecture the test checks
    published = registry.model_config
    monkeypatch.setattr(registry, "model_config", lambda n: model.config if n == "evo2_1b_base" else published(n))
    losses = []
    for _, seq in SHORT:
        ids = torch.tensor(list(seq.encode()))
        with torch.no_grad():
            losses.append(float(F.cross_entropy(model(ids[None])[0, :-1], ids[1:])))
    mean = sum(losses) / 2
    code, out, err = evo("selftest", "-m", ckpt, "--expected", "evo2_1b_base")
    assert code == 1, err
    last = out.splitlines()[-1]
    assert last.startswith(f"FAIL evo2_1b_base: mean loss {mean:.4f} (expected 0.5020 +- 0.001)")
    assert "fp8 emulate, float32 on cpu" in last and out.splitlines()[0].startswith(f"p1: loss {losses[0]:.4f}")
    monkeypatch.setitem(st.EXPECTED, "evo2_1b_base", (mean + 0.0005, 50.0))
    code, out, _ = evo("selftest", "-m", ckpt, "--expected", "evo2_1b_base")
    assert code == 0 and out.splitlines()[-1].startswith("PASS evo2_1b_base")
    code, out, _ = evo("selftest", "-m", ckpt, "--expected", "evo2_1b_base", "--fp8", "off")
    assert code == 1 and "fp8 off" in out


def test_another_architecture_is_refused_before_the_test():
    """evo2's numbers hold for one architecture: another model ran the whole test and printed FAIL, as if
    this install computed wrong numbers."""
    code, out, err = evo("selftest", "-m", "evo-demo", "--expected", "evo2_1b_base")
    assert code == 1 and out == "" and err.count("\n") == 1, (out, err)
    assert err.startswith("evo: error: evo-demo has 8 layers (SMLASMLS) of width 128, evo2_1b_base 25 (SMLASMLSMLA")
    assert err.rstrip().endswith("of width 1920: evo2's test numbers for evo2_1b_base do not apply to it "
                                 "(check --model and --expected)")
    with pytest.raises(InputError, match=r"evo-demo has 8 layers \(SMLASMLS\) of width 128, evo2_7b 32 "):
        st.run_selftest(evo_cli.load_model("evo-demo", device="cpu"), "evo2_7b", SHORT)


@pytest.mark.parametrize("args, message, status", [
    # neither a path nor a name: said so, not "evo2's test records numbers for ... only"
    (["-m", "evo2-1b"], "evo2-1b: no such checkpoint file or directory, nor a published model name (did you mean ", 1),
    # a model the test has no numbers for: the command line's fault (exit 2), as --expected naming one
    (["-m", "evo-demo"], "evo-demo: evo2's test records numbers for evo2_40b, ", 2),
    # a published model the test has no numbers for (Evo 1, a 262k Evo 2): no hint meant for paths
    (["-m", "evo-1-8k-base"], "evo-1-8k-base: evo2's test records numbers for evo2_40b, ", 2),
    (["-m", "evo2_7b_262k"], "evo2_7b_262k: evo2's test records numbers for evo2_40b, ", 2),
])
def test_model_errors(args, message, status):
    code, out, err = evo("selftest", *args)
    assert code == status and out == "" and err.startswith(f"evo: error: {message}") and err.count("\n") == 1, err
    assert "--expected" not in err
