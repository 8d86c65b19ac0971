"""The StripedHyena model: config, layers, inference state, tokenizer.

Lazy, so that ``evo_cli.model.config`` (plain dataclasses) can be imported without torch."""

import importlib

_WHERE = {"InferenceState": ".cache", "ModelConfig": ".config", "StripedHyena": ".model"}

__all__ = ["InferenceState", "ModelConfig", "StripedHyena"]


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
