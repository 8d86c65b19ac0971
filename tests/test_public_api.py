"""The exported names, and that ``evo_cli.kernels`` is ours (not Hugging Face's ``kernels``)."""

from pathlib import Path

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
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(root).parts) for p in root.glob("evo_cli/**/*.py")}
    found |= {".".join(("evo_cli",) + p.parent.relative_to(root).parts) for p in root.glob("kernels/**/*.py")}
    assert found == listed


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
