"""evo: run the Evo family of DNA language models (Evo 1, Evo 2) on a runtime of its own."""

from ._version import __version__
from .checkpoints import load_model
from .checkpoints.convert import convert_checkpoint
from .embedding import embed, iter_embeddings
from .errors import CheckpointError, ConfigError, EvoError, InputError
from .generation import Generation, generate
from .hub import download_model
from .model import InferenceState, ModelConfig, StripedHyena
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
    "score_sequences",
    "score_variants",
]
