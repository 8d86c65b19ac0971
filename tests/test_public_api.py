"""The exported names, and that ``evo_cli.kernels`` is ours (not Hugging Face's ``kernels``)."""

from pathlib import Path

import numpy as np
import pytest

import evo_cli
from evo_cli import kernels


def test_kernels_is_this_repository():
    assert Path(kernels.__file__).resolve().parent == Path(__file__).resolve().parent.parent / "kernels"


def test_every_package_is_in_the_wheel():
    """pyproject lists packages by name (kernels/ installs as evo_cli.kernels): an editable install finds
    a package missing from the list, a wheel leaves it out. Every folder of Python files is one."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    root = Path(__file__).resolve().parent.parent
    setuptools = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed, package_data = set(setuptools["packages"]), setuptools["package-data"]
    found = {".".join(p.parent.relative_to(root).parts) for p in root.glob("evo_cli/**/*.py")}
    found |= {".".join(("evo_cli",) + p.parent.relative_to(root).parts) for p in root.glob("kernels/**/*.py")}
    # the folders of data only (configs, the demo model) are listed for their package data
    assert listed - found == set(package_data) - found and found <= listed
    for package, patterns in package_data.items():
        parts = package.split(".")
        folder = root.joinpath("kernels", *parts[2:]) if parts[:2] == ["evo_cli", "kernels"] else root.joinpath(*parts)
        for pattern in patterns:
            assert any(folder.glob(pattern)), (package, pattern)
    # every C++ kernel source is package data of its folder (kernels/_native.py compiles it on first use)
    for source in root.glob("kernels/*/*.cpp"):
        assert "*.cpp" in package_data.get(f"evo_cli.kernels.{source.parent.name}", []), source
    assert "vec.h" in package_data["evo_cli.kernels"]  # the header they include


def test_public_names():
    expected = {"CheckpointError", "ConfigError", "EvoError", "Generation", "InferenceState", "InputError",
                "ModelConfig", "StripedHyena", "__version__", "convert_checkpoint", "download_model", "embed",
                "generate", "iter_embeddings", "load_model", "mutagenize", "score_sequences",
                "score_variants"}
    assert expected <= set(evo_cli.__all__)
    for name in evo_cli.__all__:
        assert hasattr(evo_cli, name), name
    for name in kernels.__all__:
        assert hasattr(kernels, name), name


def test_set_kernels_switches_every_op():
    import pytest
    import torch

    from evo_cli.model.init import motif_config, random_model

    model = random_model(motif_config("evo2", hidden_size=32, num_layers=4, head_dim=8, name="m"), kernels="torch")
    ids = torch.randint(0, 512, (1, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(ids)
        got = model.set_kernels("triton")(ids)  # the fused kernels (under the interpreter on a CPU)
    backends = {m.backend for m in model.modules() if hasattr(m, "backend")}
    assert model.kernels == "triton" and backends == {"triton"}
    assert torch.allclose(got, want, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="unknown kernel backend 'cuda'"):
        model.set_kernels("cuda")


def test_a_kernel_backend_from_the_environment_says_so(monkeypatch):
    """EVO_KERNELS's value, when it is wrong or cannot run, is named as coming from the environment (as
    EVO_FP8's is); the same value given as an argument is not."""
    import torch

    from evo_cli import runtime
    from evo_cli.errors import InputError

    monkeypatch.setenv("EVO_KERNELS", "bogus")
    with pytest.raises(InputError, match=r"'bogus' \(from EVO_KERNELS\)"):
        runtime.resolve_kernels(None)
    monkeypatch.setenv("EVO_KERNELS", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(InputError, match=r"needs TRITON_INTERPRET=1 .*\(from EVO_KERNELS\)"):
        runtime.resolve_kernels(None, [torch.device("cpu")])
    with pytest.raises(InputError, match=r"unknown kernel backend 'bogus' \(use"):
        runtime.resolve_kernels("bogus")
    assert runtime.resolve_kernels("torch") == "torch"


# --- API misuse: one InputError saying what is wrong, before a kernel sees the arguments ---

@pytest.fixture(scope="module")
def tiny():
    import torch

    from evo_cli.model.init import motif_config, random_model

    torch.manual_seed(0)
    evo2 = random_model(motif_config("evo2", hidden_size=16, num_layers=4, head_dim=8, state_size=4, name="api2"), seed=0)
    evo1 = random_model(motif_config("evo1", hidden_size=16, num_layers=4, head_dim=8, state_size=4, name="api1"), seed=0)
    return evo2.set_kernels("torch"), evo1.set_kernels("torch")


@pytest.mark.parametrize("make, match", [
    (lambda t: t.float(), "integer token ids .*not float32"),
    (lambda t: t.bool(), "integer token ids .*not bool"),
    (lambda t: t - 100, r"token id -35 at \[0, 0\], outside the vocabulary 0..511"),
    (lambda t: t + 600, r"token id 684 at \[0, 3\], outside the vocabulary 0..511"),
    (lambda t: t[0], r"2-D \[batch, length\], not of shape \[8\] \(add a batch dimension"),
    (lambda t: t[None], r"2-D \[batch, length\], not of shape \[1, 1, 8\]"),
    (lambda t: t.tolist(), "must be a torch.Tensor .*not a list"),
    (lambda t: t.to("meta"), r"input_ids are on meta, the model \(its embedding\) on cpu: move them"),
])
def test_bad_input_ids_are_one_input_error(tiny, make, match):
    """Before: a RuntimeError / IndexError from nn.Embedding (on a GPU a device-side assert), or an
    IndexError on ``input_ids.shape[1]``; the same from forward_chunked, forward_layerwise, forward_long."""
    import torch

    model, _ = tiny
    bad = make(torch.tensor([list(b"ACGTACGT")]))
    calls = [lambda: model(bad), lambda: next(model.forward_chunked(bad, 3)),
             lambda: next(model.forward_layerwise(bad, 3)), lambda: next(model.forward_long(bad, 3))]
    for call in calls:
        with pytest.raises(evo_cli.InputError, match=match):
            call()


def test_integer_ids_of_any_width_give_the_int64_logits(tiny):
    import torch

    model, _ = tiny
    ids = torch.tensor([list(b"ACGTACGT")])
    want = model(ids)
    for dtype in (torch.int32, torch.int16, torch.uint8):
        assert torch.equal(model(ids.to(dtype)), want)
    assert model(ids[:, :0]).shape == (1, 0, 512)  # an empty sequence has empty logits (scoring relies on it)


def test_a_state_that_does_not_fit_is_one_input_error(tiny):
    """Before: a broadcast RuntimeError deep in a kernel (another batch size, an Evo 1 state in an Evo 2
    model with as many blocks), or a float32 KV cache silently fed to a bfloat16 model."""
    import torch

    evo2, evo1 = tiny
    ids = torch.tensor([list(b"ACGTACGT")])
    with pytest.raises(evo_cli.InputError, match=r"state holds 2 sequence\(s\); input_ids has 1 row\(s\)"):
        evo2(ids, evo2.new_state(batch_size=2, max_seqlen=16))
    with pytest.raises(evo_cli.InputError, match=r"state does not fit this model: block 0 state is hyena .*complex64"):
        evo2(ids, evo1.new_state(batch_size=1, max_seqlen=16))
    with pytest.raises(evo_cli.InputError, match="state must be an InferenceState"):
        evo2(ids, {"seqlen": 0})
    state = evo2.new_state(1, 16)
    try:
        evo2.to(torch.bfloat16)
        with pytest.raises(evo_cli.InputError, match=r"attention .*float32.*this model's is attention .*bfloat16"):
            evo2(ids, state)
        assert evo2(ids, evo2.new_state(1, 16)).shape == (1, 8, 512)
    finally:
        evo2.to(torch.float32)
    from evo_cli.model.cache import InferenceState

    moved = evo2.new_state(1, 16)
    moved = InferenceState([type(s)(**{k: t.to("meta") for k, t in vars(s).items()}) for s in moved.layers], 16)
    with pytest.raises(evo_cli.InputError, match=r"state of block 0 is on meta, the block on cpu \(a state made before"):
        evo2(ids, moved)
    full = evo2(ids)
    state = evo2.new_state(1, 8)
    torch.testing.assert_close(torch.cat([evo2(ids[:, :5], state), evo2(ids[:, 5:], state)], 1), full,
                               rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="state holds 8 positions; 8 used, 1 more asked"):
        evo2(ids[:, :1], state)


@pytest.mark.parametrize("args, match", [
    ((-1, 8), "batch_size must be a whole number of at least 0, not -1"),
    ((1.5, 8), "batch_size must be a whole number of at least 0, not 1.5"),
    ((1, -2), "max_seqlen must be a whole number of at least 0, not -2"),
    ((True, 8), "batch_size must be a whole number of at least 0, not True"),
])
def test_new_state_checks_its_sizes(tiny, args, match):
    """Before: torch.zeros' TypeError / 'Dimension size must be non-negative' from inside a block."""
    with pytest.raises(evo_cli.InputError, match=match):
        tiny[0].new_state(*args)


def test_chunk_size_must_be_a_whole_number(tiny):
    import torch

    ids = torch.tensor([list(b"ACGTACGT")])
    with pytest.raises(evo_cli.InputError, match="chunk_size must be a whole number of at least 1, not 2.5"):
        next(tiny[0].forward_chunked(ids, 2.5))
    with pytest.raises(ValueError, match="chunk_size must be at least 1"):
        next(tiny[0].forward_layerwise(ids, 0))


def test_kernels_the_device_cannot_run_are_one_input_error(tiny, monkeypatch):
    """A model switched to (or moved under) kernels its device cannot run: before, a RuntimeError from
    inside the first kernel call."""
    import torch

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    model, _ = tiny
    try:
        model.set_kernels("triton")
        with pytest.raises(evo_cli.InputError, match="needs TRITON_INTERPRET=1 .*the model is on cpu"):
            model(torch.tensor([list(b"ACGT")]))
    finally:
        model.set_kernels("torch")


@pytest.mark.parametrize("dtype", ["float64", "int64", "complex64"])
def test_load_model_refuses_dtypes_it_cannot_run(dtype):
    """Before: any torch dtype was taken (a float64 model ran silently; an integer one failed inside)."""
    import torch

    from evo_cli.runtime import resolve_dtype

    with pytest.raises(evo_cli.InputError, match=f"unsupported dtype torch.{dtype} \\(use auto, float32 or bfloat16\\)"):
        resolve_dtype(getattr(torch, dtype), torch.device("cpu"))
    assert resolve_dtype(torch.bfloat16, torch.device("cpu")) is torch.bfloat16


def test_the_readme_python_api_example_runs_as_written():
    """The README's "Python API" block, in a fresh interpreter on a conformance checkpoint, and does
    what its comments say."""
    import re
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    block = re.search(r"## Python API\n\n```python\n(.*?)```", readme, re.S).group(1)
    assert block.count('"path/to/checkpoint"') == 1
    assert "n_tokens=100" in block
    code = block.replace('"path/to/checkpoint"', repr(str(root / "tests/data/conformance/evo2/tiny_a")))
    code = code.replace("n_tokens=100", "n_tokens=8")  # the rest as written; 100 tokens only cost time
    code += """
assert logits.shape == (1, 8, 512) and logits.dtype == torch.float32
assert model.config.pattern and len(gens) == 4 and [(g.prompt_id, g.sample) for g in gens][:2] == [("prompt1", 0), ("prompt1", 1)]
assert all(len(g.token_ids) == 8 for g in gens)
state = model.new_state(batch_size=1, max_seqlen=64)
pieces = torch.cat([model(ids[:, :5], state), model(ids[:, 5:], state)], 1)
assert (pieces - logits).abs().max().item() < 1e-4, (pieces - logits).abs().max().item()
print("ok")
"""
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, env=env, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


@pytest.mark.parametrize("kwargs, match", [
    ({"model": None}, r"the model must be a published name or a path \(str or os.PathLike\), not None"),
    ({"model": 7}, r"the model must be a published name or a path .*not 7"),
    ({"config": "x"}, "config must be a ModelConfig .*not a str"),
    ({"state_tokens": -1}, "state_tokens must be a whole number of at least 0, not -1"),
])
def test_load_model_argument_errors(kwargs, match):
    """Before: a TypeError from pathlib, an AttributeError from the key map, or a silent negative."""
    from tests.conftest import CONFORMANCE

    args = {"model": CONFORMANCE / "evo2" / "tiny_a", "device": "cpu", **kwargs}
    with pytest.raises(evo_cli.InputError, match=match):
        evo_cli.load_model(**args)


@pytest.mark.parametrize("call, match", [
    (lambda m: evo_cli.embed(m, ["ACGT"], chunk_size=None),
     "chunk size must be a whole number of at least 1, not None"),
    (lambda m: evo_cli.embed(m, ["ACGT"], batch_size=2.0), r"batch size must be from 1 to 1,048,576, not 2\.0"),
    (lambda m: evo_cli.score_sequences(m, ["ACGT"], batch_size=2.0),
     r"batch size must be from 1 to 1,048,576, not 2\.0"),
    (lambda m: evo_cli.embed(m, ["ACGT", b"ACGT"]), r"sequence 1 must be a str, not bytes \(decode it"),
    (lambda m: evo_cli.embed(m, [None]), "sequence 0 must be a str, not NoneType"),
    (lambda m: evo_cli.score_sequences(m, ["ACGT", b"ACGT"]), r"sequence 1 must be a str, not bytes \(decode it"),
    (lambda m: list(evo_cli.scoring.iter_sequence_scores(m, [3])), "sequence 0 must be a str, not int"),
    (lambda m: evo_cli.generate(m, [b"ACGT"], n_tokens=2), r"prompt 'prompt1' must be a str, not bytes \(decode it"),
    # a ValueError before, where every other bad argument of the API is an InputError (score_windows' too)
    (lambda m: evo_cli.score_sequences(m, ["ACGT"], reduce="max"), "reduce must be one of mean, sum, not 'max'"),
])
def test_sequence_and_size_arguments_of_the_wrong_type_are_one_input_error(tiny, call, match):
    """Before: a TypeError ('<' between NoneType and int, a float as a range step) or an AttributeError
    ('bytes' object has no attribute 'encode'; None read as an empty sequence)."""
    import evo_cli.scoring  # noqa: F401  (the lazy attribute)

    with pytest.raises(evo_cli.InputError, match=match):
        call(tiny[0])


def test_the_readme_embedding_examples_run_as_written(tiny, tmp_path, monkeypatch):
    """The README's Embeddings Python blocks on files ``run_embed`` wrote with a tiny model (its layer
    names for the 7B's; the polars and duckdb lines left out: neither is a dependency) give what
    their comments say."""
    import re

    import torch

    from evo_cli.embedding import run_embed
    from evo_cli.io.fasta import FastaRecord

    model = tiny[0]
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("## Embeddings"):readme.index("## Generating DNA")]
    reading, api = re.findall(r"```python\n(.*?)```", section, re.S)
    monkeypatch.chdir(tmp_path)
    records = [FastaRecord("chr1", "", "ACGTTGCA" * 5), FastaRecord("g2", "", "GGCAT")]
    run_embed(model, records, "emb.parquet", ["blocks.1.mlp.l3", "norm"], metadata={"command": "evo embed ..."})
    run_embed(model, records, "pos.parquet", ["blocks.1.mlp.l3"], pool="none")
    code = "\n".join(line for line in reading.splitlines() if "pl." not in line and "duckdb." not in line)
    code = code.replace(", polars as pl, duckdb", "").replace("blocks.28.mlp.l3", "blocks.1.mlp.l3")
    ns = {}
    exec(code, ns)
    assert ns["X"].shape == (2, 16) and ns["X"].dtype == np.float32
    assert ns["H"].shape == (40, 16) and ns["H"].dtype == np.float32
    want = evo_cli.embed(model, records[0].sequence, "blocks.1.mlp.l3", pool="none")["blocks.1.mlp.l3"][0]
    assert np.allclose(ns["H"], want.numpy(), atol=1e-6)
    ns = {"evo_cli": evo_cli, "model": model}
    exec(api.replace("blocks.28.mlp.l3", "blocks.1.mlp.l3"), ns)
    assert ns["emb"]["blocks.1.mlp.l3"].shape == (2, 16) and ns["emb"]["blocks.1.mlp.l3"].dtype == torch.float32


def test_submodules_named_in_the_readme_need_no_import_of_their_own():
    """``evo_cli.io.embeddings.read_embeddings`` (or ``evo_cli.scoring.iter_sequence_scores``) after a
    bare ``import evo_cli``: an AttributeError before, unless some other call had imported them. (Checked
    on modules that do not import torch, so that the fresh interpreter starts fast.)"""
    import subprocess
    import sys

    code = """
import evo_cli
assert callable(evo_cli.io.embeddings.read_embeddings) and callable(evo_cli.limits.check_batch_size)
for missing in ("nothing", "_private"):
    try:
        getattr(evo_cli, missing)
    except AttributeError as err:
        assert "has no attribute" in str(err), err
    else:
        raise AssertionError(missing)
try:
    evo_cli.io.nothing
except AttributeError:
    pass
else:
    raise AssertionError("io.nothing")
assert "torch" not in sys.modules
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", "import sys\n" + code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
