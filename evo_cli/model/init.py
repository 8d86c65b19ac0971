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


@torch.no_grad()
def init_weights_(model: StripedHyena, seed: int = 0) -> StripedHyena:
    """Initialise every parameter in place, deterministically for a given seed.

    Linear layers get std 1/sqrt(fan_in) (residual outputs scaled by 1/sqrt(2 * layers)); modal
    filters get stable poles with residues that keep the filter's gain near one."""
    c = model.config
    g = torch.Generator().manual_seed(seed)

    def normal(shape, std):
        return torch.randn(shape, generator=g) * std

    out_scale = 1 / math.sqrt(2 * c.num_layers)
    for name, p in model.named_parameters():
        shape = p.shape
        leaf = name.rsplit(".", 1)[-1]
        if name.endswith("scale"):
            v = torch.ones(shape)
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
            decay = torch.exp(-torch.arange(k, dtype=torch.float32).flip(0) / max(1.0, k / 8))
            v = normal(shape, 1.0) * decay / math.sqrt(k / 8 if k > 8 else k)
        elif leaf == "D":
            v = normal(shape, 0.5)
        elif leaf == "log_poles":
            v = -torch.exp(torch.empty(shape).uniform_(math.log(1e-3), math.log(0.5), generator=g))
        elif leaf == "residues" and p.dim() == 2:
            lp = dict(model.named_parameters())[name.replace("residues", "log_poles")][..., 0]
            v = normal(shape, 1.0) * (1 - torch.exp(lp)) / math.sqrt(shape[-1])
        elif leaf == "poles":
            mag = torch.empty(shape[:-1]).uniform_(0.5, 0.999, generator=g)
            ang = torch.empty(shape[:-1]).uniform_(-math.pi, math.pi, generator=g)
            v = torch.stack([mag * ang.cos(), mag * ang.sin()], dim=-1)
        elif leaf == "residues":
            poles = dict(model.named_parameters())[name.replace("residues", "poles")]
            mag = poles.norm(dim=-1, keepdim=True).cpu()
            v = normal(shape, 1.0) * 0.5 * (1 - mag) / math.sqrt(shape[1])
        else:
            raise ValueError(f"no initialisation rule for {name}")
        p.copy_(v.to(p.dtype))
    for name, b in model.named_buffers():
        if name.endswith("inv_freq"):
            b.copy_(rotary_inv_freq(c.head_dim, c.rotary_base))
    return model


def random_model(config: ModelConfig, seed: int = 0, device="cpu", dtype=torch.float32, kernels: str = "auto") -> StripedHyena:
    """A randomly initialised model on ``device`` in ``dtype`` (Hyena filters float32), in eval mode."""
    model = init_weights_(StripedHyena(config, kernels=kernels), seed)
    for name, p in model.named_parameters():
        p.data = p.data.to(device=device, dtype=torch.float32 if keeps_float32(name) else dtype)
    for name, b in model.named_buffers():
        b.data = b.data.to(device=device)
    model.requires_grad_(False)
    return model.eval()
