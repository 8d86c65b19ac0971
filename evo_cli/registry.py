"""Published Evo checkpoints. (The full registry with hub repos, files and configs is issue #7;
this module already answers which layer to embed by default.)"""

from __future__ import annotations

# evo2 README recommends an intermediate MLP output; blocks.28.mlp.l3 for the 7B models
DEFAULT_EMBEDDING_LAYERS = {
    "evo2_7b": "blocks.28.mlp.l3",
    "evo2_7b_base": "blocks.28.mlp.l3",
    "evo2_7b_262k": "blocks.28.mlp.l3",
}


def default_embedding_layer(name: str) -> str | None:
    """The recommended embedding layer of a published model, or None for an unknown name."""
    return DEFAULT_EMBEDDING_LAYERS.get(name)
