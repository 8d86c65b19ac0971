"""Community Hugging Face layouts of Evo 2: synthetic checkpoints made by applying each layout's forward
map (vortex -> community, written here from the layouts' converters) to a vortex state dict, loaded
back through the loader and compared with the original model."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import evo_cli
from evo_cli.checkpoints import open_checkpoint
from evo_cli.checkpoints.community import AQUILES, WIP, community_key
from evo_cli.model.init import motif_config, random_model

from .conftest import CONFORMANCE

TINY_A = CONFORMANCE / "evo2" / "tiny_a"
TINY_B = CONFORMANCE / "evo2" / "tiny_b_long"


def vortex_state_dict(model) -> dict[str, torch.Tensor]:
    """Our layout -> the published vortex layout: hyena rows interleaved per channel (x2, x1, v),
    Hyena-MR taps in convolution order, Wqkv rows per head [q|k|v]; plus the tied unembedding."""
    c = model.config
    d, h, hd = c.hidden_size, c.num_heads, c.head_dim
    sd = {}
    for name, t in model.state_dict().items():
        t = t.clone()
        if name.endswith(("projections.weight", "short_filter_weight")):
            # ours: [x2 | x1 | v] thirds; vortex: row 3c + j
            t = t.view(3, d, *t.shape[1:]).transpose(0, 1).reshape(t.shape)
        elif name.endswith("Wqkv.weight"):
            # ours: [Q | K | V], head-major; vortex: row h*3*hd + j*hd + e
            t = t.view(3, h, hd, d).transpose(0, 1).reshape(3 * d, d)
        elif name.endswith("filter.h") and c.block_types[int(name.split(".")[1])] == "hcm":
            t = t.flip(-1)
        sd[name] = t
    sd["unembed.weight"] = sd["embedding_layer.weight"].clone()
    return sd


def to_wip(vsd: dict, kinds) -> dict[str, torch.Tensor]:
    """transformers WIP port (convert_evo2_weights.py): renamed tensors, Wqkv split in three contiguous
    blocks, attention out_proj.bias dropped."""
    out = {"model.embed_tokens.weight": vsd["embedding_layer.weight"], "lm_head.weight": vsd["unembed.weight"],
           "model.norm.weight": vsd["norm.scale"]}
    for i, kind in enumerate(kinds):
        s, t = f"blocks.{i}.", f"model.layers.{i}.block."
        out[t + "input_layernorm.weight"] = vsd[s + "pre_norm.scale"]
        out[t + "post_attention_layernorm.weight"] = vsd[s + "post_norm.scale"]
        for ours, theirs in (("l1", "gate_proj"), ("l2", "up_proj"), ("l3", "down_proj")):
            out[t + f"mlp.{theirs}.weight"] = vsd[s + f"mlp.{ours}.weight"]
        if kind == "attn":
            wqkv = vsd[s + "inner_mha_cls.Wqkv.weight"]
            q, k, v = torch.split(wqkv, wqkv.shape[1])
            out.update({t + "attention.q_proj.weight": q, t + "attention.k_proj.weight": k, t + "attention.v_proj.weight": v})
            out[t + "attention.o_proj.weight"] = vsd[s + "inner_mha_cls.out_proj.weight"]
            out[t + "attention.rotary_emb.inv_freq"] = vsd[s + "inner_mha_cls.rotary_emb.inv_freq"]
            continue
        out[t + "filter.projections.weight"] = vsd[s + "projections.weight"]
        out[t + "filter.short_filter_weight"] = vsd[s + "filter.short_filter_weight"]
        out[t + "filter.out_filter_dense.weight"] = vsd[s + "out_filter_dense.weight"]
        out[t + "filter.out_filter_dense.bias"] = vsd[s + "out_filter_dense.bias"]
        for leaf in ("h", "D", "log_poles", "residues"):
            if s + "filter." + leaf in vsd:
                out[t + "filter." + leaf] = vsd[s + "filter." + leaf]
    return out


def to_aquiles(vsd: dict, kinds, heads: int) -> dict[str, torch.Tensor]:
    """Aquiles-ai Evo2-transformers (convert_evo2_vortex_to_hf.py): renamed tensors, Wqkv rows regrouped
    from per-head [q|k|v] to [Q | K | V] (``_group_qkv_rows``)."""
    out = {"model.embed_tokens.weight": vsd["embedding_layer.weight"], "model.final_norm.weight": vsd["norm.scale"]}
    for i, kind in enumerate(kinds):
        s, t = f"blocks.{i}.", f"model.layers.{i}."
        out[t + "mixer_norm.weight"] = vsd[s + "pre_norm.scale"]
        out[t + "mlp_norm.weight"] = vsd[s + "post_norm.scale"]
        for ours, theirs in (("l1", "gate_proj"), ("l2", "up_proj"), ("l3", "down_proj")):
            out[t + f"mlp.{theirs}.weight"] = vsd[s + f"mlp.{ours}.weight"]
        if kind == "attn":
            w = vsd[s + "inner_mha_cls.Wqkv.weight"]
            hidden = w.shape[1]
            q, k, v = w.t().reshape(hidden, heads, 3, hidden // heads).unbind(dim=2)
            out[t + "mixer.qkv_proj.weight"] = torch.cat([x.reshape(hidden, -1) for x in (q, k, v)], dim=-1).t()
            out[t + "mixer.out_proj.weight"] = vsd[s + "inner_mha_cls.out_proj.weight"]
            out[t + "mixer.out_proj.bias"] = vsd[s + "inner_mha_cls.out_proj.bias"]
            out[t + "mixer.rotary.inv_freq"] = vsd[s + "inner_mha_cls.rotary_emb.inv_freq"]
            continue
        out[t + "mixer.in_proj.weight"] = vsd[s + "projections.weight"]
        out[t + "mixer.short_conv_weight"] = vsd[s + "filter.short_filter_weight"]
        if kind in ("hcs", "hcm"):
            out[t + "mixer.long_filter"] = vsd[s + "filter.h"]
        else:
            out[t + "mixer.log_poles"] = vsd[s + "filter.log_poles"]
            out[t + "mixer.residues"] = vsd[s + "filter.residues"]
        if s + "filter.D" in vsd:
            out[t + "mixer.D"] = vsd[s + "filter.D"]
        out[t + "mixer.out_proj.weight"] = vsd[s + "out_filter_dense.weight"]
        out[t + "mixer.out_proj.bias"] = vsd[s + "out_filter_dense.bias"]
    return out


def _yml(config) -> dict:
    """The vortex yml fields of one of our Evo 2 configs."""
    c = config
    return {"hidden_size": c.hidden_size, "num_filters": c.hidden_size, "num_layers": c.num_layers,
            **{f"{k}_layer_idxs": c.layers_of(k) for k in ("hcs", "hcm", "hcl", "attn")},
            "hcs_filter_groups": c.hcs_filter_groups, "hcm_filter_groups": c.hcm_filter_groups,
            "hcl_filter_groups": c.hidden_size,
            "hcs_filter_length": c.hcs_filter_length, "hcm_filter_length": c.hcm_filter_length, "short_filter_length": 3,
            "short_filter_bias": False, "state_size": c.state_size, "num_attention_heads": c.num_heads, "vocab_size": 512,
            "rotary_emb_base": c.rotary_base, "rotary_emb_scaling_factor": c.rotary_scaling if c.rotary_scaling != 1 else None,
            "use_interpolated_rotary_pos_emb": c.rotary_scaling != 1, "inner_mlp_size": c.inner_mlp_size,
            "column_split": True, "interleave": True, "evo2_style_activations": True, "mha_out_proj_bias": True,
            "hyena_out_proj_bias": True, "qkv_proj_bias": False, "final_norm": True, "mlp_activation": "gelu", "eps": c.eps}


def write_community(directory: Path, source, layout: str) -> Path:
    """A checkpoint directory in ``layout`` made from a conformance case (vortex ``weights.pt`` + yml)
    or a model; tensors split over two safetensors shards with an index, as save_pretrained writes them."""
    if isinstance(source, Path):
        config = open_checkpoint(source).config
        vsd = {k: v for k, v in torch.load(source / "weights.pt", weights_only=False).items() if torch.is_tensor(v)}
    else:
        config, vsd = source.config, vortex_state_dict(source)
    kinds = config.block_types
    if layout == AQUILES:
        tensors = to_aquiles(vsd, kinds, config.num_heads)
        cfg = {**_yml(config), "max_position_embeddings": config.max_seqlen, "tie_word_embeddings": True,
               "model_type": "evo2", "architectures": ["Evo2ForCausalLM"], "torch_dtype": "bfloat16",
               "auto_map": {"AutoConfig": "configuration_evo2.Evo2Config"}, "transformers_version": "5.0.0"}
    else:
        tensors = to_wip(vsd, kinds)
        cfg = {"model_type": "evo2", "vocab_size": 512, "hidden_size": config.hidden_size,
               "num_hidden_layers": config.num_layers, "num_attention_heads": config.num_heads,
               "intermediate_size": config.inner_mlp_size, "rms_norm_eps": config.eps, "rope_theta": config.rotary_base,
               "max_position_embeddings": config.max_seqlen, "tie_word_embeddings": True,
               "layer_types": ["attention" if k == "attn" else "hyena" for k in kinds], "hyena_filters": config.hcs_filter_groups}
    directory.mkdir(parents=True)
    keys = sorted(tensors)
    weight_map = {}
    for i, half in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2 :])):
        name = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({k: tensors[k].contiguous().clone() for k in half}, str(directory / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in half})
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (directory / "config.json").write_text(json.dumps(cfg))
    return directory


def _logits(model, ids):
    with torch.no_grad():
        return model(ids)


@pytest.fixture(scope="module")
def original():
    """A random Evo 2 model with an odd size, 3 heads of 16, grouped filters and rotary interpolation."""
    c = motif_config("evo2", hidden_size=48, num_layers=8, head_dim=16, state_size=4, filter_groups=12,
                     inner_mlp_size=80, max_seqlen=4096, rotary_scaling=4.0, name="random-evo2")
    return random_model(c, seed=3)


@pytest.fixture(scope="module")
def plain(original):
    """The same weights without rotary interpolation, which the WIP layout cannot express."""
    return random_model(dataclasses.replace(original.config, rotary_scaling=1.0), seed=3)


IDS = torch.tensor([list(b"ACGTTGCAACGGTACCATGCAAGTCGATCGGATCCATGCA"), list(b"TTGACCAGTACGATCGGCTAGCTAGGCATGCATGACCTAG")])


def test_aquiles_layout(tmp_path, original):
    d = write_community(tmp_path / "aq", original, AQUILES)
    ckpt = open_checkpoint(d)
    assert ckpt.format == AQUILES
    loaded = evo_cli.load_model(d, device="cpu")
    assert loaded.config.block_types == original.config.block_types and loaded.config.rotary_scaling == 4.0
    assert torch.equal(_logits(loaded, IDS), _logits(original, IDS))


def test_wip_layout_without_out_proj_bias(tmp_path, plain, caplog):
    """The WIP converter drops the attention out_proj.bias: the model loads without it, with a warning."""
    d = write_community(tmp_path / "wip", plain, WIP)
    assert open_checkpoint(d).format == WIP
    with caplog.at_level(logging.WARNING):
        loaded = evo_cli.load_model(d, device="cpu")
    assert any("stores no attention out_proj.bias" in r.getMessage() for r in caplog.records)
    assert not any("ignoring" in r.getMessage() for r in caplog.records)
    c = loaded.config
    assert not c.mha_out_proj_bias and c.block_types == plain.config.block_types and c.max_seqlen == 4096
    assert (c.num_heads, c.hcs_filter_groups, c.hcm_filter_groups, c.state_size, c.inner_mlp_size) == (3, 12, 12, 4, 80)
    # the same model with that bias zeroed gives exactly the loaded logits; with it, they differ
    no_bias = random_model(plain.config, seed=3)
    for i in plain.config.layers_of("attn"):
        no_bias.blocks[i].inner_mha_cls.out_proj.bias.zero_()
    assert torch.equal(_logits(loaded, IDS), _logits(no_bias, IDS))
    assert not torch.allclose(_logits(loaded, IDS), _logits(plain, IDS))


def test_wip_layout_with_out_proj_bias_uses_it(tmp_path, plain):
    d = write_community(tmp_path / "wip", plain, WIP)
    extra = {f"model.layers.{i}.block.attention.o_proj.bias": plain.blocks[i].inner_mha_cls.out_proj.bias.clone()
             for i in plain.config.layers_of("attn")}
    save_file(extra, str(d / "model-extra.safetensors"))
    index = json.loads((d / "model.safetensors.index.json").read_text())
    index["weight_map"].update({k: "model-extra.safetensors" for k in extra})
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    loaded = evo_cli.load_model(d, device="cpu")
    assert loaded.config.mha_out_proj_bias
    assert torch.equal(_logits(loaded, IDS), _logits(plain, IDS))


@pytest.mark.parametrize("case", [TINY_A, TINY_B], ids=["tiny_a", "tiny_b_long"])
def test_aquiles_from_published_vortex_file(tmp_path, case):
    """The conformance vortex files (bf16, TE extra states, rotary interpolation in tiny_b_long) through
    the Aquiles layout reproduce the reference logits."""
    d = write_community(tmp_path / "aq", case, AQUILES)
    vectors = load_file(str(case / "vectors.safetensors"))
    ids = vectors["input_ids"][:, :128]
    loaded = evo_cli.load_model(d, device="cpu", kernels="torch")
    assert torch.equal(_logits(loaded, ids), _logits(evo_cli.load_model(case, device="cpu", kernels="torch"), ids))
    assert (_logits(loaded, ids) - vectors["logits"][:, :128]).abs().max() < 1e-4


def test_key_maps():
    assert community_key(WIP, "blocks.3.inner_mha_cls.Wqkv.weight") == "model.layers.3.block.attention.q_proj.weight"
    assert community_key(WIP, "blocks.0.filter.h") == "model.layers.0.block.filter.h"
    assert community_key(WIP, "norm.scale") == "model.norm.weight"
    assert community_key(AQUILES, "blocks.2.out_filter_dense.bias") == "model.layers.2.mixer.out_proj.bias"
    assert community_key(AQUILES, "blocks.3.inner_mha_cls.out_proj.bias") == "model.layers.3.mixer.out_proj.bias"
    assert community_key(AQUILES, "blocks.1.pre_norm.scale") == "model.layers.1.mixer_norm.weight"
    assert community_key(AQUILES, "norm.scale") == "model.final_norm.weight"


def test_unknown_tensor_is_reported(tmp_path, original, caplog):
    d = write_community(tmp_path / "aq", original, AQUILES)
    save_file({"model.layers.0.mixer.surprise": torch.zeros(2)}, str(d / "model-extra.safetensors"))
    index = json.loads((d / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.layers.0.mixer.surprise"] = "model-extra.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with caplog.at_level(logging.WARNING):
        evo_cli.load_model(d, device="cpu")
    assert any("ignoring 1 tensor(s)" in r.getMessage() and "surprise" in r.getMessage() for r in caplog.records)


def test_aquiles_unknown_config_field_fails(tmp_path, original):
    d = write_community(tmp_path / "aq", original, AQUILES)
    cfg = json.loads((d / "config.json").read_text())
    cfg["hidden_sise"] = 48
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(evo_cli.ConfigError, match="config.json: unknown config field 'hidden_sise'"):
        evo_cli.load_model(d, device="cpu")



@pytest.mark.parametrize("field, value", [("rms_norm_eps", "tiny"), ("max_position_embeddings", "2048"),
                                          ("rope_theta", -1), ("num_attention_heads", 0)])
def test_wip_config_values_are_checked(tmp_path, plain, field, value):
    d = write_community(tmp_path / "wip", plain, WIP)
    cfg = json.loads((d / "config.json").read_text())
    cfg[field] = value
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(evo_cli.ConfigError, match=rf"config.json: {field} {value!r} must be a "):
        evo_cli.load_model(d, device="cpu")
