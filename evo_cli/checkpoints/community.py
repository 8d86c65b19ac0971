"""Community Hugging Face layouts of Evo 2 weights (``model.layers.{i}...`` keys), loaded through
explicit key maps to our layout. Both hold the vortex tensors renamed; the maps below undo the renaming
and apply the same row orders as the vortex loader (``formats.py``), so the model computed is Evo 2's,
not the port's own variant of it.

``transformers-wip`` (the Evo2 port on a huggingface/transformers contributor branch,
``convert_evo2_weights.py``; ``model.layers.{i}.block.*``):
- names: ``block.input_layernorm`` / ``post_attention_layernorm`` = pre / post norm, ``block.mlp.
  {gate,up,down}_proj`` = ``mlp.l1/l2/l3``, ``block.filter.*`` = the vortex hyena tensors unchanged
  (``projections``, ``short_filter_weight``, ``h``, ``D``, ``log_poles``, ``residues``,
  ``out_filter_dense``), ``block.attention.{q,k,v}_proj`` = ``torch.split(Wqkv, hidden)`` of the
  vortex ``Wqkv``: three contiguous row blocks of the per-head ``[q|k|v]`` layout, not the queries,
  keys and values (the port's own attention reads them as such; we concatenate them back);
  ``o_proj`` = ``out_proj.weight``; ``model.norm`` = final norm; ``model.embed_tokens``.
- the converter drops every attention ``out_proj.bias`` ("our implementation doesn't use bias").
  Such a checkpoint is loaded as what it is, a model without that bias (``mha_out_proj_bias``
  false), with a warning that its outputs differ from the published model's; an ``o_proj.bias``
  that is present is used.
- its config.json (``Evo2Config``) cannot describe Hyena-SE/MR/LR, filter lengths or rotary
  interpolation, so the architecture is read from the tensors: ``h`` with 128 or more taps is
  Hyena-MR (vortex's rule), fewer Hyena-SE, ``log_poles`` Hyena-LR, ``q_proj`` attention; heads
  from ``inv_freq`` (head_dim / 2 entries). Assumed: no rotary interpolation (the port has none and
  its converter targets evo2_1b_base only), ``rms_norm_eps`` and ``max_position_embeddings`` from
  config.json when present; layer 0's MLP uses GELU as in Evo 2 (the port uses SiLU).

``aquiles`` (Aquiles-ai "Evo2-transformers", ``convert_evo2_vortex_to_hf.py``;
``model.layers.{i}.{mixer_norm,mixer,mlp_norm,mlp}.*``):
- names: ``mixer_norm`` / ``mlp_norm`` = pre / post norm, ``mlp.{gate,up,down}_proj``,
  ``model.final_norm``, ``model.embed_tokens``; attention ``mixer.qkv_proj``, ``mixer.out_proj``
  (with bias), ``mixer.rotary.inv_freq`` (the vortex buffer, copied); hyena ``mixer.in_proj`` =
  ``projections``, ``mixer.short_conv_weight`` = ``short_filter_weight``, ``mixer.long_filter`` =
  ``filter.h`` (same tap order), ``mixer.{log_poles,residues,D}``, ``mixer.out_proj`` =
  ``out_filter_dense``.
- ``qkv_proj`` rows were regrouped from vortex's per-head ``[q|k|v]`` to ``[Q | K | V]``, which is
  our order already: the inverse of that regrouping composed with our vortex permutation is the
  identity, so the rows load as stored.
- config.json mirrors the vortex yml fields (plus ``max_position_embeddings``,
  ``tie_word_embeddings`` and Hugging Face bookkeeping) and is parsed as one.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from evo_cli.errors import CheckpointError, ConfigError
from evo_cli.model.config import ModelConfig, check_values

from .sources import TensorSource

log = logging.getLogger(__name__)

WIP, AQUILES = "transformers-wip", "aquiles"

_WIP_KEY = re.compile(r"^model\.layers\.\d+\.block\.")
_AQUILES_KEY = re.compile(r"^model\.layers\.\d+\.(mixer|mixer_norm|mlp_norm)\.")


def detect_layout(keys) -> str | None:
    """``transformers-wip``, ``aquiles`` or None, from the tensor names."""
    if any(_WIP_KEY.match(k) for k in keys):
        return WIP
    if any(_AQUILES_KEY.match(k) for k in keys):
        return AQUILES
    return None


_SHARED = {
    "embedding_layer.weight": "model.embed_tokens.weight",
    "mlp.l1.weight": "mlp.gate_proj.weight",
    "mlp.l2.weight": "mlp.up_proj.weight",
    "mlp.l3.weight": "mlp.down_proj.weight",
}

# our name inside block i -> name inside model.layers.{i}
_WIP_NAMES = {
    "pre_norm.scale": "block.input_layernorm.weight",
    "post_norm.scale": "block.post_attention_layernorm.weight",
    **{k: "block." + v for k, v in _SHARED.items() if k.startswith("mlp.")},
    "inner_mha_cls.Wqkv.weight": "block.attention.q_proj.weight",
    "inner_mha_cls.out_proj.weight": "block.attention.o_proj.weight",
    "inner_mha_cls.out_proj.bias": "block.attention.o_proj.bias",
    "inner_mha_cls.rotary_emb.inv_freq": "block.attention.rotary_emb.inv_freq",
    "projections.weight": "block.filter.projections.weight",
    "filter.short_filter_weight": "block.filter.short_filter_weight",
    "filter.short_filter_bias": "block.filter.short_filter_bias",
    "filter.h": "block.filter.h",
    "filter.D": "block.filter.D",
    "filter.log_poles": "block.filter.log_poles",
    "filter.residues": "block.filter.residues",
    "out_filter_dense.weight": "block.filter.out_filter_dense.weight",
    "out_filter_dense.bias": "block.filter.out_filter_dense.bias",
}

_AQUILES_NAMES = {
    "pre_norm.scale": "mixer_norm.weight",
    "post_norm.scale": "mlp_norm.weight",
    **{k: v for k, v in _SHARED.items() if k.startswith("mlp.")},
    "inner_mha_cls.Wqkv.weight": "mixer.qkv_proj.weight",
    "inner_mha_cls.out_proj.weight": "mixer.out_proj.weight",
    "inner_mha_cls.out_proj.bias": "mixer.out_proj.bias",
    "inner_mha_cls.rotary_emb.inv_freq": "mixer.rotary.inv_freq",
    "projections.weight": "mixer.in_proj.weight",
    "filter.short_filter_weight": "mixer.short_conv_weight",
    "filter.short_filter_bias": "mixer.short_conv_bias",
    "filter.h": "mixer.long_filter",
    "filter.D": "mixer.D",
    "filter.log_poles": "mixer.log_poles",
    "filter.residues": "mixer.residues",
    "out_filter_dense.weight": "mixer.out_proj.weight",
    "out_filter_dense.bias": "mixer.out_proj.bias",
}

_TOP = {
    WIP: {"embedding_layer.weight": "model.embed_tokens.weight", "norm.scale": "model.norm.weight"},
    AQUILES: {"embedding_layer.weight": "model.embed_tokens.weight", "norm.scale": "model.final_norm.weight"},
}
_BLOCK = {WIP: _WIP_NAMES, AQUILES: _AQUILES_NAMES}


def community_key(layout: str, name: str) -> str:
    """The tensor name in ``layout`` holding (the vortex form of) our parameter ``name``."""
    if name in _TOP[layout]:
        return _TOP[layout][name]
    m = re.match(r"blocks\.(\d+)\.(.+)$", name)
    if m is None or m.group(2) not in _BLOCK[layout]:
        raise CheckpointError(f"no {layout} tensor for parameter {name!r}")
    return f"model.layers.{m.group(1)}.{_BLOCK[layout][m.group(2)]}"


def community_resolver(layout: str, config: ModelConfig, source: TensorSource, vortex_resolve):
    """Our key -> (key in ``source``, transform): the community name, then the vortex transform of the
    same tensor (``vortex_resolve``), except where the layout changed the rows itself."""

    def resolve(name: str):
        key = community_key(layout, name)
        _, transform = vortex_resolve(name)
        if name.endswith("inner_mha_cls.Wqkv.weight"):
            if layout == AQUILES:
                return key, lambda t: t
            k_key, v_key = key.replace(".q_proj.", ".k_proj."), key.replace(".q_proj.", ".v_proj.")
            for other in (k_key, v_key):
                if other not in source:
                    raise CheckpointError(f"{source.description}: missing tensor {other!r} (needed for {name})")
            return key, lambda q: transform(torch.cat([q, source.get(k_key), source.get(v_key)]))
        return key, transform

    return resolve


_WIP_CONSUMED = re.compile(r"\.block\.attention\.[kv]_proj\.weight$")


def community_ignorable(layout: str, is_extra):
    """Tensors a layout carries that the model does not need (tied lm_head, the k/v halves read with q)."""
    if layout == WIP:
        return lambda k: is_extra(k) or k == "lm_head.weight" or bool(_WIP_CONSUMED.search(k))
    return lambda k: is_extra(k) or k == "lm_head.weight"


# Hugging Face PretrainedConfig bookkeeping that Aquiles' config.json may carry beside the vortex fields
_HF_KEYS = frozenset({
    "_name_or_path", "architectures", "auto_map", "model_type", "torch_dtype", "dtype", "transformers_version",
    "use_cache", "bos_token_id", "eos_token_id", "pad_token_id", "return_dict", "output_hidden_states",
    "output_attentions", "is_decoder", "add_cross_attention", "tokenizer_class", "chunk_size_feed_forward",
    "id2label", "label2id", "problem_type", "torchscript", "pruned_heads", "tf_legacy_loss", "use_bfloat16",
    "initializer_range", "is_encoder_decoder",
})


def aquiles_config(d: dict | None, where: Path) -> ModelConfig:
    if d is None:
        raise CheckpointError(f"{where}: no config.json beside the weights (needed for the {AQUILES} layout)")
    d = {k: v for k, v in d.items() if k not in _HF_KEYS}
    if "max_position_embeddings" in d:
        d["max_seqlen"] = d.pop("max_position_embeddings")
    if "tie_word_embeddings" in d:
        d["tie_embeddings"] = d.pop("tie_word_embeddings")
    return ModelConfig.from_evo2(d, str(where))


def wip_config(source: TensorSource, d: dict | None, where: Path) -> ModelConfig:
    """Architecture from the tensor shapes (see the module docstring for what is assumed)."""
    d = d or {}
    check_values({k: v for k, v in d.items() if v is not None},  # null: the default below
                 {"num_attention_heads": int, "rope_theta": float, "rms_norm_eps": float,
                  "max_position_embeddings": int}, str(where))
    keys = source.keys()
    layers = sorted({int(m.group(1)) for k in keys if (m := re.match(r"model\.layers\.(\d+)\.block\.", k))})
    if layers != list(range(len(layers))):
        raise CheckpointError(f"{source.description}: layer numbers are not contiguous from 0")

    def has(i: int, suffix: str) -> bool:
        return f"model.layers.{i}.block.{suffix}" in source

    def shape(i: int, suffix: str) -> tuple[int, ...]:
        key = f"model.layers.{i}.block.{suffix}"
        if key not in source:
            raise CheckpointError(f"{source.description}: missing tensor {key!r}")
        return tuple(source.get(key).shape)

    kinds, lengths, groups, state_size, head_dim = [], {}, {}, None, None
    for i in layers:
        if has(i, "attention.q_proj.weight"):
            kinds.append("attn")
            head_dim = 2 * shape(i, "attention.rotary_emb.inv_freq")[0]
            if not head_dim:
                raise CheckpointError(f"{source.description}: layer {i} has an empty attention.rotary_emb.inv_freq")
        elif has(i, "filter.log_poles"):
            kinds.append("hcl")
            state_size = shape(i, "filter.log_poles")[1]
        elif has(i, "filter.h"):
            h = shape(i, "filter.h")
            kind = "hcm" if h[-1] >= 128 else "hcs"
            kinds.append(kind)
            lengths[kind], groups[kind] = h[-1], h[0]
        else:
            raise CheckpointError(f"{source.description}: layer {i} has neither attention nor Hyena filter tensors")
    if "model.embed_tokens.weight" not in source:
        raise CheckpointError(f"{source.description}: missing tensor 'model.embed_tokens.weight'")
    vocab, hidden = source.get("model.embed_tokens.weight").shape
    attn = [i for i, k in enumerate(kinds) if k == "attn"]
    if head_dim is None:
        head_dim = hidden // d.get("num_attention_heads", 1)
    out_bias = all(f"model.layers.{i}.block.attention.o_proj.bias" in source for i in attn)
    if attn and not out_bias:
        log.warning("%s: the %s layout stores no attention out_proj.bias (its converter drops it); loading the "
                    "model without it, so outputs differ from the published Evo 2 model", where.parent, WIP)
    first_hyena = next((i for i, k in enumerate(kinds) if k != "attn"), None)
    short = shape(first_hyena, "filter.short_filter_weight")[-1] if first_hyena is not None else 3
    try:
        return ModelConfig(
            family="evo2", block_types=tuple(kinds), hidden_size=hidden, num_heads=hidden // head_dim,
            inner_mlp_size=shape(0, "mlp.gate_proj.weight")[0], state_size=state_size or 16, vocab_size=vocab,
            short_filter_length=short,
            short_filter_bias=first_hyena is not None and has(first_hyena, "filter.short_filter_bias"),
            hyena_out_proj_bias=first_hyena is None or has(first_hyena, "filter.out_filter_dense.bias"),
            hcs_filter_length=lengths.get("hcs", 7), hcm_filter_length=lengths.get("hcm", 128),
            hcs_filter_groups=groups.get("hcs", 0), hcm_filter_groups=groups.get("hcm", 0),
            mha_out_proj_bias=out_bias, rotary_base=float(d.get("rope_theta") or 10000.0),
            eps=float(d.get("rms_norm_eps") or 1e-6), mlp_activation="gelu", activation_first_layer_only=True,
            max_seqlen=int(d.get("max_position_embeddings") or 8192),
        )
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
