"""Random StripedHyena models: configs in the published motifs and a stable initialisation.

Used by tests, benchmarks and as the starting point of training."""

from __future__ import annotations

import math

import torch

from .config import ModelConfig
from .layers import rotary_inv_freq
from .model import StripedHyena, keeps_float32

EVO2_MOTIF = ("hcs", "hcm", "hcl", "attn", "hcs", "hcm", "hcl")


def motif_config(
    family: str = "evo2",
    hidden_size: int = 512,
    num_layers: int = 14,
    head_dim: int = 128,
    state_size: int | None = None,
    filter_groups: int | None = None,
    inner_mlp_size: int | None = None,
    max_seqlen: int = 1 << 20,
    name: str = "random",
    **overrides,
) -> ModelConfig:
    """A config in the published layer pattern: Evo 2's ``S M L A S M L`` repeated, or Evo 1's
    hyena stack with attention at every 8th layer (positions 8, 16, 24 of 32 in the 7B)."""
    if family == "evo2":
        kinds = tuple(EVO2_MOTIF[i % len(EVO2_MOTIF)] for i in range(num_layers))
        kw = dict(state_size=state_size or 16, hcs_filter_groups=filter_groups or max(1, hidden_size // 16),
                  hcm_filter_groups=filter_groups or max(1, hidden_size // 16), activation_first_layer_only=True,
                  mlp_activation="gelu")
    else:
        kinds = tuple("attn" if i % 8 == 0 and i > 0 else "hyena" for i in range(num_layers))
        if "attn" not in kinds and num_layers > 2:
            kinds = tuple("attn" if i == num_layers // 2 else k for i, k in enumerate(kinds))
        kw = dict(state_size=state_size or 8, short_filter_bias=True, hyena_proj_bias=True, qkv_proj_bias=True,
                  mlp_activation="gelu")
    inner = inner_mlp_size or 16 * math.ceil(int(8 * hidden_size / 3) / 16)
    kw.update(overrides)
    return ModelConfig(family=family, block_types=kinds, hidden_size=hidden_size, num_heads=hidden_size // head_dim,
                       inner_mlp_size=inner, max_seqlen=max_seqlen, name=name, **kw)


def _initial_values(model: StripedHyena, seed: int, device="cpu"):
    """Yield ``(name, float32 tensor on device)`` for every parameter, in ``named_parameters`` order.

    Linear layers get std 1/sqrt(fan_in) (residual outputs scaled by 1/sqrt(2 * layers)); modal
    filters get stable poles with residues that keep the filter's gain near one. The draws come from
    one generator on ``device``: the same seed gives the same model on the same kind of device."""
    c = model.config
    device = torch.device(device)
    g = torch.Generator(device=device).manual_seed(seed)
    poles = {}  # log_poles / poles already drawn, which the residues depend on

    def normal(shape, std):
        return torch.randn(shape, generator=g, device=device) * std

    def uniform(shape, lo, hi):
        return torch.empty(shape, device=device).uniform_(lo, hi, generator=g)

    out_scale = 1 / math.sqrt(2 * c.num_layers)
    for name, p in model.named_parameters():
        shape = p.shape
        leaf = name.rsplit(".", 1)[-1]
        if name.endswith("scale"):
            v = torch.ones(shape, device=device)
        elif name == "embedding_layer.weight":
            v = normal(shape, 1.0)
        elif leaf == "bias":
            v = normal(shape, 0.02)
        elif leaf == "weight" and p.dim() == 2:
            std = 1 / math.sqrt(shape[1])
            if any(s in name for s in ("out_filter_dense", "out_proj", "mlp.l3")):
                std *= out_scale
            v = normal(shape, std)
        elif leaf == "short_filter_weight":
            v = normal(shape, 0.3)
            v[..., -1] += 1.0
        elif leaf == "short_filter_bias":
            v = normal(shape, 0.02)
        elif leaf == "h":
            k = shape[-1]
            decay = torch.exp(-torch.arange(k, dtype=torch.float32, device=device).flip(0) / max(1.0, k / 8))
            v = normal(shape, 1.0) * decay / math.sqrt(k / 8 if k > 8 else k)
        elif leaf == "D":
            v = normal(shape, 0.5)
        elif leaf == "log_poles":
            v = poles[name] = -torch.exp(uniform(shape, math.log(1e-3), math.log(0.5)))
        elif leaf == "residues" and p.dim() == 2:
            lp = poles[name.replace("residues", "log_poles")][..., 0]
            v = normal(shape, 1.0) * (1 - torch.exp(lp)) / math.sqrt(shape[-1])
        elif leaf == "poles":
            mag, ang = uniform(shape[:-1], 0.5, 0.999), uniform(shape[:-1], -math.pi, math.pi)
            v = poles[name] = torch.stack([mag * ang.cos(), mag * ang.sin()], dim=-1)
        elif leaf == "residues":
            mag = poles[name.replace("residues", "poles")].norm(dim=-1, keepdim=True)
            v = normal(shape, 1.0) * 0.5 * (1 - mag) / math.sqrt(shape[1])
        else:
            raise ValueError(f"no initialisation rule for {name}")
        yield name, v


@torch.no_grad()
def init_weights_(model: StripedHyena, seed: int = 0) -> StripedHyena:
    """Initialise every parameter of a CPU model in place, deterministically for a given seed."""
    for name, v in _initial_values(model, seed):
        model.get_parameter(name).copy_(v)
    for name, b in model.named_buffers():
        if name.endswith("inv_freq"):
            b.copy_(rotary_inv_freq(model.config.head_dim, model.config.rotary_base))
    return model


def random_model(config: ModelConfig, seed: int = 0, device="cpu", dtype=torch.float32, kernels: str = "auto") -> StripedHyena:
    """A randomly initialised model on ``device`` in ``dtype`` (Hyena filters float32), in eval mode.

    Built on the meta device and drawn on ``device`` one tensor at a time, so a 7B-shaped model on a
    GPU costs neither a float32 copy in host memory nor a CPU-side draw of every weight."""
    with torch.device("meta"):
        model = StripedHyena(config, kernels=kernels)
    tensors = {name: v.to(torch.float32 if keeps_float32(name) else dtype)
               for name, v in _initial_values(model, seed, device)}
    for name, _ in model.named_buffers():
        if name.endswith("inv_freq"):
            tensors[name] = rotary_inv_freq(config.head_dim, config.rotary_base).to(device)
    model.load_state_dict(tensors, strict=True, assign=True)
    model.requires_grad_(False)
    return model.eval()
