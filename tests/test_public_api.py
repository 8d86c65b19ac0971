"""The exported names, and that ``evo_cli.kernels`` is ours (not Hugging Face's ``kernels``)."""

from pathlib import Path

import evo_cli
from evo_cli import kernels


def test_kernels_is_this_repository():
    assert Path(kernels.__file__).resolve().parent == Path(__file__).resolve().parent.parent / "kernels"


def test_public_names():
    expected = {"CheckpointError", "ConfigError", "EvoError", "Generation", "InferenceState", "InputError",
                "ModelConfig", "StripedHyena", "__version__", "convert_checkpoint", "download_model", "embed",
                "generate", "iter_embeddings", "load_model", "score_sequences", "score_variants"}
    assert expected <= set(evo_cli.__all__)
    for name in evo_cli.__all__:
        assert hasattr(evo_cli, name), name
    for name in kernels.__all__:
        assert hasattr(kernels, name), name
