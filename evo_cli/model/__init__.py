"""The StripedHyena model: config, layers, inference state, tokenizer."""

from .cache import InferenceState
from .config import ModelConfig
from .model import StripedHyena

__all__ = ["InferenceState", "ModelConfig", "StripedHyena"]
