"""Model configuration: one frozen dataclass for Evo 1 and Evo 2 (StripedHyena 1 and 2).

The reference configs (Evo 1 ``evo*_inference.yml`` / HF ``config.json``, Evo 2 vortex ``*.yml``) are
parsed by ``from_evo1`` and ``from_evo2``; our native ``config.json`` by ``from_native``. Each parser
rejects keys it does not know, so a wrong file fails loudly instead of building the wrong model.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from evo_cli.errors import ConfigError

# one letter per block type, used in the printed pattern ("SMLASML")
BLOCK_CODES = {"hyena": "H", "hcs": "S", "hcm": "M", "hcl": "L", "attn": "A"}
# the native config's format: a /2 checkpoint stores its nn.Linear weights transposed (checkpoints/native.py),
# a /1 checkpoint as [out, in]; both are read (and the registry's config files, which hold no weights, say /1)
NATIVE_FORMAT = "evo-cli/striped-hyena/2"
NATIVE_FORMATS = ("evo-cli/striped-hyena/1", NATIVE_FORMAT)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a StripedHyena model; runtime knobs (device, dtype, kernels) live elsewhere.

    ``block_types[i]`` is one of ``hyena`` (Evo 1 modal, complex poles), ``hcs`` / ``hcm`` (Evo 2 short /
    medium explicit filters), ``hcl`` (Evo 2 modal, real poles) or ``attn``.
    """

    family: str
    block_types: tuple[str, ...]
    hidden_size: int
    num_heads: int
    inner_mlp_size: int
    state_size: int
    vocab_size: int = 512
    num_kv_heads: int = 0
    short_filter_length: int = 3
    short_filter_bias: bool = False
    hyena_proj_bias: bool = False
    hyena_out_proj_bias: bool = True
    hcs_filter_length: int = 7
    hcm_filter_length: int = 128
    hcs_filter_groups: int = 0
    hcm_filter_groups: int = 0
    qkv_proj_bias: bool = False
    mha_out_proj_bias: bool = True
    rotary_base: float = 10000.0
    # positions are divided by this factor (linear RoPE interpolation); 1 means none
    rotary_scaling: float = 1.0
    eps: float = 1e-6
    mlp_activation: str = "gelu"
    # Evo 2: the activation is applied in layer 0's MLP only, the others are linear (identity)
    activation_first_layer_only: bool = False
    max_seqlen: int = 8192
    name: str = ""
    head_dim: int = field(init=False)

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        _check_fields(self)
        for name in _FLOATS:
            set_(name, float(getattr(self, name)))
        set_("block_types", tuple(self.block_types))
        if self.family not in ("evo1", "evo2"):
            raise ConfigError(f"unknown model family {self.family!r} (expected evo1 or evo2)")
        for i, t in enumerate(self.block_types):
            if t not in BLOCK_CODES:
                raise ConfigError(f"layer {i}: unknown block type {t!r}")
        if not self.block_types:
            raise ConfigError("config has no layers")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        set_("head_dim", self.hidden_size // self.num_heads)
        if self.head_dim % 2:
            raise ConfigError(f"head dim {self.head_dim} must be even for rotary embeddings")
        if not self.num_kv_heads:
            set_("num_kv_heads", self.num_heads)
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        for kind in ("hcs", "hcm"):
            groups = getattr(self, f"{kind}_filter_groups") or self.hidden_size
            set_(f"{kind}_filter_groups", groups)
            if kind in self.block_types and self.hidden_size % groups:
                raise ConfigError(f"hidden_size {self.hidden_size} is not divisible by {kind}_filter_groups {groups}")
        if self.mlp_activation not in _ACTIVATIONS:
            raise ConfigError(f"unsupported mlp_activation {self.mlp_activation!r} (supported: {', '.join(_ACTIVATIONS)})")

    @property
    def num_layers(self) -> int:
        return len(self.block_types)

    @property
    def pattern(self) -> str:
        """Block pattern as letters, e.g. ``SMLASML`` (S/M/L = Hyena SE/MR/LR, H = Evo 1 Hyena, A = attention)."""
        return "".join(BLOCK_CODES[t] for t in self.block_types)

    def layers_of(self, kind: str) -> list[int]:
        return [i for i, t in enumerate(self.block_types) if t == kind]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("head_dim")
        d["block_types"] = list(self.block_types)
        return {"format": NATIVE_FORMAT, **d}

    @classmethod
    def from_native(cls, d: dict, source: str = "config") -> ModelConfig:
        d = dict(d)
        fmt = d.pop("format", None)
        if fmt not in NATIVE_FORMATS:
            raise ConfigError(f"{source}: not an evo-cli config (format {fmt!r}, expected one of "
                              f"{', '.join(map(repr, NATIVE_FORMATS))}; a newer evo-cli may read it)")
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"{source}: unknown config field {unknown[0]!r}")
        missing = [f.name for f in dataclasses.fields(cls) if f.init and f.default is dataclasses.MISSING and f.name not in d]
        if missing:
            raise ConfigError(f"{source}: missing config field {missing[0]!r}")
        return _build(cls, d, source)

    @classmethod
    def from_evo1(cls, d: dict, source: str = "config") -> ModelConfig:
        """Evo 1: the evo package's inference yml or the HF ``config.json`` (StripedHyenaConfig)."""
        _check_keys(d, _EVO1_KEYS, source)
        d = {k: v for k, v in d.items() if v is not None}  # null: the field's default (or missing)
        _check_raw(d, source)
        _require(d, ("hidden_size", "num_layers", "num_attention_heads", "state_size", "attn_layer_idxs", "hyena_layer_idxs"), source)
        n = d["num_layers"]
        kinds = _layer_kinds(n, {"attn": d["attn_layer_idxs"], "hyena": d["hyena_layer_idxs"]}, source)
        if not d.get("column_split_hyena", True):
            raise ConfigError(f"{source}: column_split_hyena: false is not supported (every Evo 1 checkpoint uses the per-head split)")
        if d.get("hyena_filter_groups", 1) != 1:
            raise ConfigError(f"{source}: hyena_filter_groups {d['hyena_filter_groups']} is not supported (Evo 1 uses 1)")
        if not d.get("tie_embeddings", True):
            raise ConfigError(f"{source}: untied embeddings are not supported")
        scaling = float(d.get("rotary_emb_scaling_factor", 1.0)) if d.get("use_interpolated_rotary_pos_emb", False) else 1.0
        hidden = d["hidden_size"]
        return _build(cls, dict(
            family="evo1",
            block_types=kinds,
            hidden_size=hidden,
            num_heads=d["num_attention_heads"],
            num_kv_heads=d["num_attention_heads"] // d.get("proj_groups", 1),
            inner_mlp_size=_inner_size(d, hidden),
            state_size=d["state_size"],
            vocab_size=d.get("vocab_size", 512),
            short_filter_length=d.get("short_filter_length", 3),
            short_filter_bias=bool(d.get("short_filter_bias", True)),
            hyena_proj_bias=True,
            hyena_out_proj_bias=True,
            qkv_proj_bias=bool(d.get("qkv_proj_bias", True)),
            mha_out_proj_bias=bool(d.get("mha_out_proj_bias", True)),
            rotary_base=float(d.get("rotary_emb_base", 10000)),
            rotary_scaling=scaling,
            eps=float(d.get("eps", 1e-5)),
            mlp_activation=d.get("mlp_activation", "silu"),
            activation_first_layer_only=False,
            max_seqlen=int(d.get("max_seqlen", d.get("max_sequence_len", 8192))),
            name=str(d.get("_name_or_path", "") or ""),
        ), source)

    @classmethod
    def from_evo2(cls, d: dict, source: str = "config") -> ModelConfig:
        """Evo 2: the vortex / evo2 yml schema."""
        _check_keys(d, _EVO2_KEYS, source)
        d = {k: v for k, v in d.items() if v is not None}  # null: the field's default (or missing)
        _check_raw(d, source)
        _require(d, ("hidden_size", "num_layers", "num_attention_heads", "state_size"), source)
        n = d["num_layers"]
        kinds = _layer_kinds(n, {k: d.get(f"{k}_layer_idxs", []) for k in ("hcs", "hcm", "hcl", "attn")}, source)
        if d.get("column_split_hyena", False):
            raise ConfigError(f"{source}: column_split_hyena: true is not supported for Evo 2 (released models interleave)")
        if not d.get("interleave", True):
            raise ConfigError(f"{source}: interleave: false is not supported (every Evo 2 checkpoint interleaves)")
        if d.get("hyena_flip_x1x2", False):
            raise ConfigError(f"{source}: hyena_flip_x1x2: true is not supported")
        if not d.get("tie_embeddings", True):
            raise ConfigError(f"{source}: untied embeddings are not supported")
        if "hcm" in kinds and d.get("hcm_filter_length", 128) < 128:
            # vortex routes a medium filter shorter than 128 taps down the short-filter path (no D term)
            raise ConfigError(f"{source}: hcm_filter_length below 128 is not supported")
        hidden = d["hidden_size"]
        if d.get("column_split", True) is False and "attn" in kinds:
            raise ConfigError(f"{source}: column_split: false is not supported (Wqkv rows are stored per head)")
        proj_groups = d.get("proj_groups", 1)
        if proj_groups != 1 and "attn" in kinds:
            raise ConfigError(f"{source}: proj_groups {proj_groups} is not supported for Evo 2")
        scaling = float(d.get("rotary_emb_scaling_factor", 1.0)) if d.get("use_interpolated_rotary_pos_emb", False) else 1.0
        return _build(cls, dict(
            family="evo2",
            block_types=kinds,
            hidden_size=hidden,
            num_heads=d["num_attention_heads"],
            inner_mlp_size=_inner_size(d, hidden),
            state_size=d["state_size"],
            vocab_size=d.get("vocab_size", 512),
            short_filter_length=d.get("short_filter_length", 3),
            short_filter_bias=bool(d.get("short_filter_bias", False)),
            hyena_proj_bias=False,
            hyena_out_proj_bias=bool(d.get("hyena_out_proj_bias", True)),
            hcs_filter_length=d.get("hcs_filter_length", 7),
            hcm_filter_length=d.get("hcm_filter_length", 128),
            hcs_filter_groups=d.get("hcs_filter_groups", hidden),
            hcm_filter_groups=d.get("hcm_filter_groups", hidden),
            qkv_proj_bias=bool(d.get("qkv_proj_bias", False)),
            mha_out_proj_bias=bool(d.get("mha_out_proj_bias", True)),
            rotary_base=float(d.get("rotary_emb_base", 10000)),
            rotary_scaling=scaling,
            eps=float(d.get("eps", 1e-6)),
            mlp_activation=d.get("mlp_activation", "gelu"),
            activation_first_layer_only=bool(d.get("evo2_style_activations", False)),
            max_seqlen=int(d.get("max_seqlen", 8192)),
            name=str(d.get("model_name", "") or ""),
        ), source)


_ACTIVATIONS = ("gelu", "silu", "identity")

# every init field's type and range, checked before anything computes with it (a wrong value would end in
# a ZeroDivisionError, a negative dimension or NaN logits far from the file that caused it)
_INTS = {  # field -> smallest allowed value (0 means "the default" where allowed)
    "hidden_size": 1, "num_heads": 1, "inner_mlp_size": 1, "state_size": 1,
    "vocab_size": 256,  # tokens are UTF-8 bytes
    "num_kv_heads": 0, "short_filter_length": 1, "hcs_filter_length": 1, "hcm_filter_length": 1,
    "hcs_filter_groups": 0, "hcm_filter_groups": 0, "max_seqlen": 1,
}
_FLOATS = ("rotary_base", "rotary_scaling", "eps")  # finite and > 0
_BOOLS = ("short_filter_bias", "hyena_proj_bias", "hyena_out_proj_bias", "qkv_proj_bias", "mha_out_proj_bias",
          "activation_first_layer_only")
_STRS = ("family", "mlp_activation", "name")


# no size of a real model comes near this (a 1 Mb context is 2^20), and tensors built from the sizes,
# even on the meta device, would overflow past it
_MAX_INT = 1 << 24


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _check_value(name: str, v, kind, minimum: int = 1) -> None:
    """Raise ConfigError naming ``name`` unless ``v`` is of ``kind`` (int, float, bool, str or list)."""
    if kind is int and not (_is_int(v) and v >= minimum):
        raise ConfigError(f"{name} {v!r} must be a whole number >= {minimum}")
    if kind is int and v > _MAX_INT:
        raise ConfigError(f"{name} {v!r} is too large (at most {_MAX_INT:,})")
    if kind is float and not (_is_number(v) and v > 0):
        raise ConfigError(f"{name} {v!r} must be a finite number > 0")
    if kind is bool and not isinstance(v, bool):
        raise ConfigError(f"{name} {v!r} must be true or false")
    if kind is str and not isinstance(v, str):
        raise ConfigError(f"{name} {v!r} must be a string")
    if kind is list and not isinstance(v, (list, tuple)):
        raise ConfigError(f"{name} {v!r} must be a list")


def _check_fields(c: ModelConfig) -> None:
    for name, minimum in _INTS.items():
        _check_value(name, getattr(c, name), int, minimum)
    for kind, names in ((float, _FLOATS), (bool, _BOOLS), (str, _STRS)):
        for name in names:
            _check_value(name, getattr(c, name), kind)
    _check_value("block_types", c.block_types, list)


# the reference configs' fields that the parsers compute with, checked first so that errors name the
# file's own field
_RAW_INTS = ("hidden_size", "num_layers", "num_attention_heads", "state_size", "vocab_size", "short_filter_length",
             "hcs_filter_length", "hcm_filter_length", "hcs_filter_groups", "hcm_filter_groups", "hcl_filter_groups",
             "proj_groups", "hyena_filter_groups", "inner_size_multiple_of", "model_parallel_size", "max_seqlen",
             "max_sequence_len")
_RAW_FLOATS = ("eps", "rotary_emb_base", "rotary_emb_scaling_factor")
_RAW_BOOLS = ("short_filter_bias", "qkv_proj_bias", "mha_out_proj_bias", "hyena_out_proj_bias", "tie_embeddings",
              "column_split", "column_split_hyena", "interleave", "hyena_flip_x1x2",
              "use_interpolated_rotary_pos_emb", "evo2_style_activations")
_RAW_LISTS = ("attn_layer_idxs", "hyena_layer_idxs", "hcs_layer_idxs", "hcm_layer_idxs", "hcl_layer_idxs")


def check_values(d: dict, kinds: dict[str, type], source: str) -> None:
    """Raise ConfigError naming ``source`` and the field unless every key of ``kinds`` present in ``d`` holds
    its kind: ``int`` (whole, >= 1), ``float`` (finite, > 0), ``bool``, ``str`` or ``list``."""
    try:
        for key, kind in kinds.items():
            if key in d:
                _check_value(key, d[key], kind)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def _check_raw(d: dict, source: str) -> None:
    kinds = {**{k: int for k in _RAW_INTS}, **{k: float for k in _RAW_FLOATS}, **{k: bool for k in _RAW_BOOLS},
             **{k: list for k in _RAW_LISTS}, "mlp_activation": str}
    check_values(d, kinds, source)
    try:
        if d.get("inner_mlp_size") is not None:  # null or 0: computed from hidden_size
            _check_value("inner_mlp_size", d["inner_mlp_size"], int, 0)
        for key in ("model_name", "_name_or_path"):
            if d.get(key) is not None:
                _check_value(key, d[key], str)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def _build(cls, kwargs: dict, source: str) -> ModelConfig:
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    except TypeError as err:
        raise ConfigError(f"{source}: {err}") from None


def _check_keys(d: dict, known: frozenset, source: str) -> None:
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: expected a mapping of config fields, got {type(d).__name__}")
    unknown = sorted(k for k in d if k not in known)
    if unknown:
        raise ConfigError(f"{source}: unknown config field {unknown[0]!r}")


def _require(d: dict, keys, source: str) -> None:
    for k in keys:
        if d.get(k) is None:
            raise ConfigError(f"{source}: missing config field {k!r}")


def _layer_kinds(n: int, idxs: dict[str, list[int]], source: str) -> tuple[str, ...]:
    kinds: list[str | None] = [None] * n
    for kind, layers in idxs.items():
        for i in layers or []:
            if not isinstance(i, int) or not 0 <= i < n:
                raise ConfigError(f"{source}: {kind}_layer_idxs has {i!r}, outside 0..{n - 1}")
            if kinds[i] is not None:
                raise ConfigError(f"{source}: layer {i} is listed as both {kinds[i]} and {kind}")
            kinds[i] = kind
    missing = [i for i, k in enumerate(kinds) if k is None]
    if missing:
        raise ConfigError(f"{source}: layer {missing[0]} has no block type (not in any *_layer_idxs)")
    return tuple(kinds)


def _inner_size(d: dict, hidden: int) -> int:
    if d.get("inner_mlp_size"):
        return int(d["inner_mlp_size"])
    # the reference rounds 8/3 * hidden up to a multiple of (multiple_of * model_parallel_size)
    multiple = d.get("inner_size_multiple_of", 64) * d.get("model_parallel_size", 1)
    return multiple * math.ceil(int(2 * hidden * 4 / 3) / multiple)


# keys the reference code reads, plus the inert ones the published files carry
_COMMON_KEYS = {
    "vocab_size", "hidden_size", "num_filters", "num_layers", "attn_layer_idxs", "short_filter_length",
    "num_attention_heads", "short_filter_bias", "mlp_init_method", "mlp_output_init_method", "eps",
    "state_size", "inner_size_multiple_of", "inner_mlp_size", "smeared_gqa", "make_vocab_size_divisible_by",
    "log_intermediate_values", "proj_groups", "hyena_filter_groups", "model_parallel_size",
    "pipe_parallel_size", "tie_embeddings", "mha_out_proj_bias", "qkv_proj_bias", "final_norm",
    "use_flash_attn", "use_flash_rmsnorm", "use_flash_depthwise", "use_flashfft", "column_split",
    "column_split_hyena", "inference_mode", "tokenizer_type", "prefill_style", "mlp_activation",
    "use_interpolated_rotary_pos_emb", "rotary_emb_scaling_factor", "rotary_emb_base", "max_seqlen",
    "max_batch_size", "attn_block_dtype", "mlp_dtype", "hyena_block_dtype", "long_fir_threshold",
    "compile", "padding_idx", "params_dtype", "print_activations",
}
_EVO1_KEYS = frozenset(_COMMON_KEYS | {
    "hyena_layer_idxs", "max_sequence_len", "split_k0", "rng_fork", "pile_parallel_size", "low_mem_mode",
    "depthwise_dtype", "use_flash_attention_2",
    # Hugging Face PretrainedConfig bookkeeping in config.json
    "_commit_hash", "_name_or_path", "architectures", "auto_map", "model_type", "torch_dtype", "dtype",
    "transformers_version", "use_cache", "bos_token_id", "eos_token_id", "pad_token_id",
    "tie_word_embeddings", "return_dict", "output_hidden_states", "output_attentions",
})
_EVO2_KEYS = frozenset(_COMMON_KEYS | {
    "model_name", "hcl_layer_idxs", "hcm_layer_idxs", "hcs_layer_idxs", "hcm_filter_length",
    "hcl_filter_groups", "hcm_filter_groups", "hcs_filter_groups", "hcs_filter_length", "interleave",
    "evo2_style_activations", "hyena_out_proj_bias", "hyena_flip_x1x2", "use_fp8_input_projections",
    "use_laughing_hyena", "use_hcs_kernel", "use_hcm_kernel", "use_hcl_kernel",
})
