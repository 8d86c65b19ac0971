"""The registry of published models and their packaged configs, checked against published facts."""

from __future__ import annotations

import dataclasses
import logging
from importlib import resources

import pytest
import torch

from evo_cli import registry
from evo_cli.model.init import motif_config
from evo_cli.model.model import StripedHyena

NAMES = ["evo-1-8k-base", "evo-1-131k-base", "evo-1.5-8k-base", "evo2_1b_base", "evo2_7b_base", "evo2_7b_262k",
         "evo2_7b", "evo2_20b", "evo2_40b_base", "evo2_40b"]


def test_ten_models_each_with_a_packaged_config():
    assert list(registry.MODELS) == NAMES
    packaged = sorted(p.name for p in (resources.files("evo_cli") / "configs").iterdir() if p.name.endswith(".json"))
    assert packaged == sorted(f"{n}.json" for n in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_config_matches_published_parameter_count(name):
    """Parameters of the model built from the packaged config on the meta device, rounded as published
    (Evo 1: 6,452,781,056 exactly; Evo 2: 1.11 / 6.48 / 6.48 / 6.58 / 19.7 / 40.3 / 41.1 B)."""
    spec = registry.MODELS[name]
    config = registry.model_config(name)
    with torch.device("meta"):
        n = sum(p.numel() for p in StripedHyena(config).parameters())
    decimals = len(repr(spec.params).split(".")[1])
    assert f"{n / 1e9:.{decimals}f}" == repr(spec.params)
    assert config.name == name and config.max_seqlen == spec.context
    assert config.family == ("evo2" if spec.family == "evo2" else "evo1")


def test_evo1_configs():
    c8, c131, c15 = (registry.model_config(n) for n in NAMES[:3])
    assert c8.pattern == "HHHHHHHHAHHHHHHHAHHHHHHHAHHHHHHH" and c8.state_size == 8 and c8.inner_mlp_size == 10928
    assert c8.qkv_proj_bias and c8.short_filter_bias and c8.hyena_proj_bias
    # the evo ymls: no rotary interpolation at 8k, positions / 16 at 131k
    assert (c8.rotary_scaling, c131.rotary_scaling, c15.rotary_scaling) == (1.0, 16.0, 1.0)
    assert dataclasses.replace(c131, rotary_scaling=1.0, max_seqlen=8192, name="x") == dataclasses.replace(c8, name="x")


@pytest.mark.parametrize("name, groups, inner, base, scaling", [
    ("evo2_1b_base", 128, 5120, 1e4, 1), ("evo2_7b_base", 256, 11008, 1e4, 1), ("evo2_7b_262k", 256, 11008, 1e4, 32),
    ("evo2_7b", 256, 11264, 1e4, 128), ("evo2_20b", 512, 22528, 1e6, 128), ("evo2_40b_base", 512, 21888, 1e6, 1),
    ("evo2_40b", 512, 22528, 1e6, 128),
])
def test_evo2_configs(name, groups, inner, base, scaling):
    c = registry.model_config(name)
    assert (c.hcs_filter_groups, c.hcm_filter_groups, c.inner_mlp_size) == (groups, groups, inner)
    assert (c.rotary_base, c.rotary_scaling, c.state_size, c.head_dim) == (base, scaling, 16, 128)
    assert (c.hcs_filter_length, c.hcm_filter_length, c.short_filter_length) == (7, 128, 3)
    assert not c.qkv_proj_bias and c.mha_out_proj_bias and c.hyena_out_proj_bias and c.activation_first_layer_only


def test_evo2_layer_patterns():
    assert registry.model_config("evo2_7b").pattern == "SMLA" + "SMLSMLA" * 4
    assert registry.model_config("evo2_1b_base").pattern == "SMLA" + "SMLSMLA" * 3
    assert registry.model_config("evo2_20b").pattern == "SMLA" + "SMLSMLA" * 2 + "SMLSML"
    c = registry.model_config("evo2_40b")
    assert c.layers_of("attn") == [3, 10, 17, 24, 31, 35, 42, 49]
    assert c.layers_of("hcs") == [0, 4, 7, 11, 14, 18, 21, 25, 28, 32, 36, 39, 43, 46]
    assert c.layers_of("hcm") == [i + 1 for i in c.layers_of("hcs")] and c.layers_of("hcl") == [i + 2 for i in c.layers_of("hcs")]


def test_hub_files_and_revisions():
    m = registry.MODELS
    assert [m[n].revision for n in NAMES[:3]] == ["1.1_fix", "1.1_fix", "main"]
    assert m["evo-1.5-8k-base"].repo == "evo-design/evo-1.5-8k-base"
    assert "model-00003-of-00003.safetensors" in m["evo-1-8k-base"].files
    assert m["evo2_7b"].files == ("evo2_7b.pt",) and m["evo2_7b"].repo == "arcinstitute/evo2_7b"
    assert m["evo2_40b"].files == ("evo2_40b.pt.part0", "evo2_40b.pt.part1") and m["evo2_40b"].weights.endswith(".part0")
    assert [n for n in NAMES if m[n].fp8] == ["evo2_1b_base", "evo2_20b", "evo2_40b_base", "evo2_40b"]


def test_default_embedding_layers():
    for name in NAMES:
        layer = registry.known_model(registry.model_config(name)).embedding_layer
        block = int(layer.split(".")[1])
        assert layer == f"blocks.{block}.mlp.l3" and block < registry.model_config(name).num_layers
    layers = {registry.known_model(registry.model_config(n)).embedding_layer for n in ("evo2_7b", "evo2_7b_base", "evo2_7b_262k")}
    assert layers == {"blocks.28.mlp.l3"}
    assert registry.known_model(registry.model_config("evo2_40b")).embedding_layer == "blocks.20.mlp.l3"


def test_known_model_by_architecture():
    # a published checkpoint loaded from a path carries another name (its directory or yml's)
    renamed = dataclasses.replace(registry.model_config("evo2_40b"), name="/data/ckpt/evo2_40b.pt", max_seqlen=8192)
    assert registry.known_model(renamed).name == "evo2_40b"
    assert registry.known_model(motif_config("evo2", hidden_size=32, num_layers=7, head_dim=8, name="my-model")) is None


@pytest.mark.parametrize("typo, name", [("evo2-7b", "evo2_7b"), ("EVO2_40B", "evo2_40b"), ("evo-1-131k", "evo-1-131k-base"),
                                        ("evo2_1b", "evo2_1b_base")])
def test_closest_names(typo, name):
    assert registry.closest_names(typo) == [name]
    assert f"did you mean {name!r}" in registry.unknown_model_message(typo)


def test_architecture_matches_a_published_model():
    c = dataclasses.replace(registry.model_config("evo2_1b_base"), name="evo2-1b-8k", max_seqlen=32768)
    assert registry.match_config(c).name == "evo2_1b_base"
    assert registry.match_config(dataclasses.replace(c, inner_mlp_size=5136)) is None


def test_fp8_warning_once_per_model(monkeypatch, caplog):
    monkeypatch.setattr(registry, "_warned_fp8", set())
    with caplog.at_level(logging.WARNING):
        for name in ("evo2_20b", "evo2_20b", "evo2_7b", "evo2_1b_base"):
            registry.warn_without_fp8(registry.model_config(name))
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 and messages[0].startswith("evo2_20b was trained with FP8") and "evo2_1b_base" in messages[1]
