"""Published Evo checkpoints: where each lives on the Hugging Face Hub, which files it has, and the
config ``evo`` runs it with.

Every model's config ships with the package (``evo_cli/configs/<name>.json``, our native format),
derived from the configs the reference packages use: the evo ymls for Evo 1 (the 8k models have no
rotary interpolation, 131k divides positions by 16; the Hugging Face ``config.json`` of the 8k repo
carries keys copied from the 131k one and is not used) and the evo2 ymls for Evo 2. The packaged
config always wins over files in the hub repo. ``max_seqlen`` is the context a model was trained
for (evo2's ``evo2-7b-8k.yml`` sets 32768, which vortex uses only to size its KV cache).
``tests/test_registry.py`` checks every config against the published parameter count.

This module never imports torch, so ``evo models`` stays fast.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import logging
from dataclasses import dataclass
from importlib import resources

from evo_cli.model.config import ModelConfig

log = logging.getLogger(__name__)

_EVO1_FILES = (
    "config.json",
    "model.safetensors.index.json",
    "model-00001-of-00003.safetensors",
    "model-00002-of-00003.safetensors",
    "model-00003-of-00003.safetensors",
)


@dataclass(frozen=True)
class ModelSpec:
    """One published checkpoint.

    ``files``: what ``evo download`` fetches from ``repo`` at ``revision``; all must be present for
    the model to count as cached. ``weights``: the file ``load_model`` opens (Evo 2 byte-split
    checkpoints: the ``.part0`` file, whose siblings are read in place). ``params``: the published
    parameter count in billions, with the published precision. ``download_bytes``: approximate total
    size of ``files`` (published file listings where known), for the free-space check.
    ``fp8``: the model was trained with FP8 input projections and loses accuracy without them.
    """

    name: str
    family: str
    repo: str
    revision: str
    files: tuple[str, ...]
    weights: str
    context: int
    params: float
    download_bytes: int
    embedding_layer: str
    fp8: bool
    description: str

    @property
    def family_label(self) -> str:
        return {"evo1": "Evo 1", "evo1.5": "Evo 1.5", "evo2": "Evo 2"}[self.family]


def _evo1(name, repo, revision, context, description, family="evo1"):
    # no published recommendation for Evo 1: the middle block's MLP output (16 of 32 blocks), the same
    # choice the embedding module makes for models it does not know
    return ModelSpec(name=name, family=family, repo=repo, revision=revision, files=_EVO1_FILES,
                     weights="model.safetensors.index.json", context=context, params=6.452781056,
                     download_bytes=12_920_000_000, embedding_layer="blocks.16.mlp.l3", fp8=False,
                     description=description)


def _evo2(name, parts, context, params, download_bytes, embedding_layer, fp8, description):
    files = tuple(f"{name}.pt.part{i}" for i in range(parts)) if parts else (f"{name}.pt",)
    return ModelSpec(name=name, family="evo2", repo=f"arcinstitute/{name}", revision="main", files=files,
                     weights=files[0], context=context, params=params, download_bytes=download_bytes,
                     embedding_layer=embedding_layer, fp8=fp8, description=description)


# Evo 1 revision 1.1_fix fixes a wrong permutation of projections in the weights of `main`.
# Evo 2 embedding layers: evo2's README uses blocks.28.mlp.l3 for the 7B models (28 of 32 blocks: the
# short-filter block of the last S-M-L triplet); 1B and 20B take the block at the same relative depth
# (floor(0.875 * layers) = 21, again the short-filter block of their last triplet); for the 40B models
# the maintainers report layer 20 working best on BRCA1 (evo2 issue #129).
# Download sizes: Evo 1 shards 4.98 + 4.93 + 3.0 GB; evo2_7b_base.pt 13 GB; evo2_20b.pt 47.9 GB;
# evo2_40b 82.25 GB in two parts; the others scaled from these by parameter count. evo2_40b_base is
# split in two parts like evo2_40b (its ~81 GB exceed the Hub's 50 GB per-file limit).
_SPECS = [
    _evo1("evo-1-8k-base", "togethercomputer/evo-1-8k-base", "1.1_fix", 8192,
          "Evo 1, 8k context (phase 1 pretraining)"),
    _evo1("evo-1-131k-base", "togethercomputer/evo-1-131k-base", "1.1_fix", 131072,
          "Evo 1, 131k context (phase 2, rotary positions / 16)"),
    _evo1("evo-1.5-8k-base", "evo-design/evo-1.5-8k-base", "main", 8192,
          "Evo 1.5, 8k context", family="evo1.5"),
    _evo2("evo2_1b_base", 0, 8192, 1.11, 2_300_000_000, "blocks.21.mlp.l3", True, "Evo 2 1B, 8k context"),
    _evo2("evo2_7b_base", 0, 8192, 6.48, 13_000_000_000, "blocks.28.mlp.l3", False, "Evo 2 7B, 8k context"),
    _evo2("evo2_7b_262k", 0, 262144, 6.48, 13_000_000_000, "blocks.28.mlp.l3", False, "Evo 2 7B, 262k context"),
    _evo2("evo2_7b", 0, 1048576, 6.58, 13_200_000_000, "blocks.28.mlp.l3", False, "Evo 2 7B, 1M context"),
    _evo2("evo2_20b", 0, 1048576, 19.7, 47_900_000_000, "blocks.21.mlp.l3", True, "Evo 2 20B, 1M context"),
    _evo2("evo2_40b_base", 2, 8192, 40.3, 80_700_000_000, "blocks.20.mlp.l3", True, "Evo 2 40B, 8k context"),
    _evo2("evo2_40b", 2, 1048576, 41.1, 82_260_000_000, "blocks.20.mlp.l3", True, "Evo 2 40B, 1M context"),
]

MODELS: dict[str, ModelSpec] = {s.name: s for s in _SPECS}


@dataclass(frozen=True)
class BundledModel:
    """A small model shipped inside the package (``evo_cli/models/<name>/``, native format): runs
    anywhere with no download. ``card``: its model card, beside the weights."""

    name: str
    description: str
    embedding_layer: str
    params: float  # billions, as ModelSpec.params
    context: int

    @property
    def path(self):
        return resources.files("evo_cli") / "models" / self.name

    @property
    def card(self):
        return self.path / "MODEL_CARD.md"


BUNDLED: dict[str, BundledModel] = {
    m.name: m for m in [
        BundledModel("evo-demo", "Demo: small Evo 2-style model trained by this project on E. coli K-12",
                     "blocks.4.mlp.l3", params=0.001693352, context=2048),
    ]
}


def get_spec(name: str) -> ModelSpec | None:
    """The published model called ``name``, or None."""
    return MODELS.get(name)


def closest_names(name: str, n: int = 1) -> list[str]:
    """Registry names that look like ``name`` (for "did you mean"), best first: names it begins
    (shortest first), then similar ones; case, ``-`` and ``_`` are ignored."""
    norm = {k.lower().replace("-", "_"): k for k in [*MODELS, *BUNDLED]}
    key = name.lower().replace("-", "_")
    prefixed = sorted((k for k in norm if k.startswith(key)), key=len)
    similar = difflib.get_close_matches(key, list(norm), n=n, cutoff=0.5)
    return [norm[k] for k in dict.fromkeys(prefixed + similar)][:n]


def unknown_model_message(name: str) -> str:
    guess = closest_names(name)
    hint = f" (did you mean {guess[0]!r}?)" if guess else ""
    return f"{name}: no such checkpoint file or directory, nor a published model name{hint}; `evo models` lists the names"


@functools.lru_cache(maxsize=None)
def model_config(name: str) -> ModelConfig:
    """The packaged config of a published model (``config.name`` is the registry name)."""
    path = resources.files("evo_cli") / "configs" / f"{name}.json"
    config = ModelConfig.from_native(json.loads(path.read_text()), f"evo_cli/configs/{name}.json")
    return dataclasses.replace(config, name=name)


def known_model(config: ModelConfig) -> ModelSpec | BundledModel | None:
    """The published or bundled model ``config`` belongs to: by name, or for a published checkpoint loaded
    from a path under another name, by its architecture. None for any other model."""
    return BUNDLED.get(config.name) or match_config(config)


def match_config(config: ModelConfig) -> ModelSpec | None:
    """The published model whose architecture ``config`` describes (name and context aside), if any."""
    if config.name in MODELS:
        return MODELS[config.name]
    key = dataclasses.replace(config, name="", max_seqlen=1)
    for spec in MODELS.values():
        if dataclasses.replace(model_config(spec.name), name="", max_seqlen=1) == key:
            return spec
    return None


_warned_fp8: set[str] = set()


def warn_without_fp8(config: ModelConfig, has_state: bool = True) -> None:
    """Once per model and process: say that a model trained with FP8 input projections runs without them
    (``--fp8 off``, or ``has_state`` False: its checkpoint holds no FP8 scales)."""
    spec = match_config(config)
    if spec is None or not spec.fp8 or spec.name in _warned_fp8:
        return
    _warned_fp8.add(spec.name)
    log.warning(
        "%s was trained with FP8 input projections (Transformer Engine on Hopper GPUs) and runs here with "
        "plain matmuls (%s): expect lower accuracy than the reference (without FP8, 1B/40B next-token "
        "accuracy drops to 20-30%%, evo2 #132; average NLL 1B 1.076 -> 1.243, 40B 0.922 -> 1.700). "
        "--fp8 auto runs Hopper's FP8 arithmetic (native on sm_89/sm_90 GPUs, emulated elsewhere).", spec.name,
        "--fp8 off" if has_state else "the checkpoint holds no FP8 scales",
    )
