"""evo: run the Evo family of DNA language models (Evo 1, Evo 2) on a runtime of its own.

The public names are imported on first use (module ``__getattr__``), so that ``import evo_cli.io.fasta``
or ``evo --help`` does not pay for importing torch."""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

from ._version import __version__
from .errors import CheckpointError, ConfigError, EvoError, InputError

# public name -> the module that defines it
_LAZY = {
    "load_model": ".checkpoints",
    "convert_checkpoint": ".checkpoints.convert",
    "embed": ".embedding",
    "iter_embeddings": ".embedding",
    "Generation": ".generation",
    "generate": ".generation",
    "download_model": ".hub",
    "InferenceState": ".model",
    "ModelConfig": ".model",
    "StripedHyena": ".model",
    "mutagenize": ".mutagenesis",
    "score_sequences": ".scoring",
    "score_variants": ".variants",
}

if TYPE_CHECKING:
    from .checkpoints import load_model
    from .checkpoints.convert import convert_checkpoint
    from .embedding import embed, iter_embeddings
    from .generation import Generation, generate
    from .hub import download_model
    from .model import InferenceState, ModelConfig, StripedHyena
    from .mutagenesis import mutagenize
    from .scoring import score_sequences
    from .variants import score_variants

__all__ = [
    "CheckpointError",
    "ConfigError",
    "EvoError",
    "Generation",
    "InferenceState",
    "InputError",
    "ModelConfig",
    "StripedHyena",
    "__version__",
    "convert_checkpoint",
    "download_model",
    "embed",
    "generate",
    "iter_embeddings",
    "load_model",
    "mutagenize",
    "score_sequences",
    "score_variants",
]


def _submodule(package: str, name: str):
    """The submodule ``package.name``, imported now, for a package's ``__getattr__``: the README names
    functions as ``evo_cli.scoring.iter_sequence_scores``, which a bare ``import evo_cli`` should
    reach; AttributeError if there is no such submodule."""
    if not name.startswith("_") and importlib.util.find_spec(f"{package}.{name}") is not None:
        return importlib.import_module(f"{package}.{name}")
    raise AttributeError(f"module {package!r} has no attribute {name!r}")


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        return _submodule(__name__, name)
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
