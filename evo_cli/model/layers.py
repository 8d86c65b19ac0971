"""StripedHyena blocks. Module and parameter names follow the published checkpoints, so the same
submodules can be hooked as in the references (``blocks.N``, ``blocks.N.mlp.l3``, ...).

Layout conventions after loading (the checkpoint loaders convert the published layouts):
- hyena ``projections`` rows are ordered ``[x2 | x1 | v]`` (contiguous thirds of D channels);
- every explicit filter (short featurizer, ``filter.h`` of Hyena-SE/MR) has its current-token tap last;
- attention ``Wqkv`` rows are ``[Q (all heads) | K | V]``, head-major inside each.
Activations are ``[B, L, D]`` throughout.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from evo_cli import kernels as K

from .cache import AttentionState, HyenaState
from .config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, backend: str = "auto"):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.backend = backend

    def forward(self, x):
        return K.rms_norm(x, self.scale, self.eps, backend=self.backend)

    def after_add(self, x, residual):
        """(u, self(u)) for u = x + residual: one pass with the CPU kernels (``kernels.add_rms_norm``),
        unless a hook on this module (or a global one) expects it to run."""
        if _hooked(self) or self._forward_pre_hooks or nn.modules.module._global_forward_pre_hooks:
            u = x + residual
            return u, self(u)
        return K.add_rms_norm(x, residual, self.scale, self.eps, backend=self.backend)


class Linear(nn.Linear):
    """``nn.Linear`` through ``kernels.linear``: on a CPU, decoding's matrix-vector products run in the
    numba loop, which streams the weight faster than MKL (benchmarks/README.md)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, backend: str = "auto"):
        super().__init__(in_features, out_features, bias=bias)
        self.backend = backend

    def forward(self, x):
        return K.linear(x, self.weight, self.bias, backend=self.backend)


class MLP(nn.Module):
    """``l3(act(l1 x) * l2 x)``, no biases."""

    def __init__(self, dim: int, inner: int, activation: str, backend: str = "auto"):
        super().__init__()
        self.l1 = Linear(dim, inner, bias=False, backend=backend)
        self.l2 = Linear(dim, inner, bias=False, backend=backend)
        self.l3 = Linear(inner, dim, bias=False, backend=backend)
        # exact (erf) GELU, as the references use
        self.act = {"gelu": nn.GELU(), "silu": nn.SiLU(), "identity": nn.Identity()}[activation]
        self.activation = activation

    def forward(self, x):
        a, b = self.act(self.l1(x)), self.l2(x)
        if _recording(a, b) or _hooked(self.l1, self.act):
            return self.l3(a * b)
        # the gate in place, in the activation's buffer (which nothing else holds): one [..., inner]
        # temporary fewer, the same numbers (benchmarks/README.md, seventh round)
        return self.l3(a.mul_(b))


def _recording(*tensors) -> bool:
    """Whether autograd records an op on these tensors (then nothing may change in place)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _hooked(*modules) -> bool:
    """Whether a forward hook (the modules' own or a global one) may hold these modules' outputs."""
    g = nn.modules.module
    return bool(g._global_forward_hooks or any(m._forward_hooks for m in modules))


def _mlp(config: ModelConfig, layer: int, backend: str) -> MLP:
    act = config.mlp_activation
    if config.activation_first_layer_only and layer > 0:
        act = "identity"
    return MLP(config.hidden_size, config.inner_mlp_size, act, backend)


class HyenaFilter(nn.Module):
    """Parameters of one Hyena operator: the featurizer's short filter plus the inner filter.

    kind ``hcs``/``hcm``: ``h`` [G, 1, K] grouped explicit taps (current token last), ``D`` for hcm.
    kind ``hcl``: ``log_poles`` [D, S, 1], ``residues`` [D, S], ``D`` (real modal form, Evo 2).
    kind ``hyena``: ``poles``, ``residues`` [D, S, 1, 2] as (real, imag), ``D`` (complex modal, Evo 1).
    """

    def __init__(self, config: ModelConfig, kind: str):
        super().__init__()
        d, s = config.hidden_size, config.state_size
        self.kind = kind
        self.short_filter_weight = nn.Parameter(torch.zeros(3 * d, 1, config.short_filter_length))
        self.short_filter_bias = nn.Parameter(torch.zeros(3 * d)) if config.short_filter_bias else None
        if kind == "hcs":
            self.h = nn.Parameter(torch.zeros(config.hcs_filter_groups, 1, config.hcs_filter_length))
        elif kind == "hcm":
            self.h = nn.Parameter(torch.zeros(config.hcm_filter_groups, 1, config.hcm_filter_length))
        elif kind == "hcl":
            self.log_poles = nn.Parameter(torch.zeros(d, s, 1))
            self.residues = nn.Parameter(torch.zeros(d, s))
        else:
            self.poles = nn.Parameter(torch.zeros(d, s, 1, 2))
            self.residues = nn.Parameter(torch.zeros(d, s, 1, 2))
        if kind != "hcs":
            self.D = nn.Parameter(torch.zeros(d))
        self._complex_modal = None  # (parameter identity, (log_poles, residues)): see modal()

    def modal(self):
        """(log_poles, residues): [D, S], real (Evo 2) or complex (Evo 1).

        Evo 1's complex form is built once and reused while the parameters stay the same tensors at
        the same version: a decoding step would otherwise rebuild it in every layer for every token.
        Not cached while gradients flow into the poles (training)."""
        if self.kind == "hcl":
            return self.log_poles[..., 0], self.residues
        training = torch.is_grad_enabled() and (self.poles.requires_grad or self.residues.requires_grad)
        key = tuple((t.data_ptr(), _version(t), t.device) for t in (self.poles, self.residues))
        if not training and self._complex_modal is not None and self._complex_modal[0] == key:
            return self._complex_modal[1]
        p = torch.complex(self.poles[..., 0, 0].float(), self.poles[..., 0, 1].float())
        r = torch.complex(self.residues[..., 0, 0].float(), self.residues[..., 0, 1].float())
        out = torch.log(p), r
        self._complex_modal = None if training else (key, out)
        return out

    def inner_state_shape(self, config: ModelConfig) -> tuple[tuple[int, ...], torch.dtype]:
        """Shape (without batch) and dtype of the inner filter's decoding state."""
        d = config.hidden_size
        if self.kind in ("hcs", "hcm"):
            return (self.h.shape[-1] - 1, d), torch.float32
        return (d, config.state_size), torch.complex64 if self.kind == "hyena" else torch.float32


class Projection(Linear):
    """The Hyena input projection [B, L, D] -> [B, L, 3D], with the FP8 GEMM Evo 2 1B/20B/40B were trained with.

    A checkpoint with Transformer Engine state gives the module two float32 buffers, ``fp8_scale_input``
    and ``fp8_scale_weight`` (the stored forward scales; saved by ``evo convert``). ``set_fp8(mode)``
    then prepares the E4M3 weight once (``weight_fp8`` [3D, D], not saved) and every call quantises its
    input with the stored scale: no amax history, so a result never depends on what ran before it.
    ``fp8`` is ``off`` (plain matmul), ``emulate`` or ``native`` (see ``kernels.fp8_linear``)."""

    def __init__(self, in_features: int, out_features: int, bias: bool, backend: str = "auto"):
        super().__init__(in_features, out_features, bias=bias, backend=backend)
        self.fp8 = "off"
        self.weight_fp8 = None

    @property
    def has_fp8_state(self) -> bool:
        return hasattr(self, "fp8_scale_input")

    def add_fp8_state(self) -> None:
        """Register the (not yet loaded) FP8 scale buffers, so that a checkpoint's scales load into them."""
        for name in ("fp8_scale_input", "fp8_scale_weight"):
            self.register_buffer(name, torch.ones((), dtype=torch.float32))

    def set_fp8(self, mode: str) -> None:
        """``off``, ``emulate`` or ``native``; the quantised weight is built here, once."""
        if mode != "off" and not self.has_fp8_state:
            raise ValueError("this projection has no FP8 scales")
        self.fp8 = mode
        # row-major whatever the weight's strides (a CPU model stores it column-major for decoding,
        # StripedHyena._cpu_gemv_layout): its transpose must be the column-major operand FP8 GEMMs
        # take (cuBLASLt)
        self.weight_fp8 = None if mode == "off" else K.quantize_e4m3(self.weight, self.fp8_scale_weight).contiguous()

    def _apply(self, fn, recurse=True):
        # .to() / .cuda() after loading: rebuild the E4M3 weight on the new device (a cast of it would be wrong)
        super()._apply(fn, recurse)
        if self.fp8 != "off":
            self.set_fp8(self.fp8)
        return self

    def forward(self, x):
        if self.fp8 == "off":
            return super().forward(x)
        return K.fp8_linear(x, self.weight_fp8, self.fp8_scale_input, self.fp8_scale_weight, self.bias, mode=self.fp8)


class HyenaBlock(nn.Module):
    """Gated convolution block (Evo 1 Hyena; Evo 2 Hyena-SE, -MR, -LR) with its MLP."""

    def __init__(self, config: ModelConfig, layer: int, backend: str = "auto"):
        super().__init__()
        d = config.hidden_size
        self.config = config
        self.kind = config.block_types[layer]
        self.backend = backend
        self.pre_norm = RMSNorm(d, config.eps, backend)
        self.post_norm = RMSNorm(d, config.eps, backend)
        self.projections = Projection(d, 3 * d, bias=config.hyena_proj_bias, backend=backend)
        self.filter = HyenaFilter(config, self.kind)
        self.out_filter_dense = Linear(d, d, bias=config.hyena_out_proj_bias, backend=backend)
        self.mlp = _mlp(config, layer, backend)

    def new_state(self, batch: int, device) -> HyenaState:
        """Zeroed state: fir [batch, K-1, 3D] float32 and the inner filter's state (see ``HyenaState``)."""
        k = self.config.short_filter_length
        fir = torch.zeros(batch, k - 1, 3 * self.config.hidden_size, device=device, dtype=torch.float32)
        shape, dtype = self.filter.inner_state_shape(self.config)
        return HyenaState(fir=fir, inner=torch.zeros(batch, *shape, device=device, dtype=dtype))

    def inner_filter(self) -> dict:
        """The inner filter's arguments: ``h`` and ``D`` (hcs, hcm) or ``log_poles``, ``residues`` and ``D``."""
        f = self.filter
        if self.kind in ("hcs", "hcm"):
            return {"h": f.h[:, 0], "D": f.D if self.kind == "hcm" else None}
        log_poles, residues = f.modal()
        return {"log_poles": log_poles, "residues": residues, "D": f.D}

    def mix(self, x, state: HyenaState | None = None):
        """The gated convolution alone: [B, L, D] -> [B, L, D] (before the output projection)."""
        f = self.filter
        z = self.projections(self.pre_norm(x))
        inner = self.inner_filter()
        if state is not None and z.shape[1] == 1:
            # decoding: one fused step updates both histories / the modal state and gates the token
            return K.hyena_step(z, f.short_filter_weight[:, 0], f.short_filter_bias, state.fir, state.inner, **inner,
                                backend=self.backend)
        fir, inner_state = (state.fir, state.inner) if state is not None else (None, None)
        x2, x1v = K.hyena_featurize(z, f.short_filter_weight[:, 0], f.short_filter_bias, fir, backend=self.backend)
        if "h" in inner:
            return K.hyena_fir(x1v, x2, inner["h"], inner["D"], inner_state, backend=self.backend)
        return K.hyena_modal(x1v, x2, inner["log_poles"], inner["residues"], inner["D"], inner_state,
                             backend=self.backend)

    def forward(self, x, state: HyenaState | None = None, pos: int = 0):
        """x: [B, L, D] -> [B, L, D]; ``state`` is read and advanced by L tokens. ``pos`` is unused (the
        blocks share one signature; Hyena state carries its own position)."""
        if state is not None and x.shape[1] == 1 and self._one_call_step(x):
            return K.hyena_block_step(x, state.fir, state.inner, backend=self.backend, **self.step_weights())
        u, h = self.post_norm.after_add(self.out_filter_dense(self.mix(x, state)), x)
        return u + self.mlp(h)

    def _one_call_step(self, x) -> bool:
        """Whether a one-token step runs as one call (``kernels.hyena_block_step``; numba on CPU): not
        with FP8 projections, nor while a forward hook on the block or one of its modules (or a global
        one) expects the modules to run."""
        if K.resolve_backend(self.backend, x.device) != "numba" or self.projections.fp8 != "off":
            return False
        g = nn.modules.module
        if g._global_forward_hooks or g._global_forward_pre_hooks:
            return False
        mlp = self.mlp
        # the modules a step runs, spelled out: walking self.modules() costs more than the check
        mods = (self, self.pre_norm, self.projections, self.filter, self.out_filter_dense, self.post_norm, mlp,
                mlp.l1, mlp.l2, mlp.l3, mlp.act)
        return not any(m._forward_hooks or m._forward_pre_hooks for m in mods)

    def step_weights(self) -> dict:
        """The keyword arguments of ``kernels.hyena_block_step``: this block's parameters."""
        f, mlp = self.filter, self.mlp
        return dict(eps=self.pre_norm.eps, pre_scale=self.pre_norm.scale, proj_w=self.projections.weight,
                    proj_b=self.projections.bias, short_w=f.short_filter_weight[:, 0], short_b=f.short_filter_bias,
                    **self.inner_filter(), out_w=self.out_filter_dense.weight, out_b=self.out_filter_dense.bias,
                    post_scale=self.post_norm.scale, l1=mlp.l1.weight, l2=mlp.l2.weight, l3=mlp.l3.weight,
                    activation=mlp.activation)


class RotaryEmbedding(nn.Module):
    """GPT-NeoX rotary embedding over the whole head (halves, not interleaved).

    ``inv_freq`` is the checkpoint's buffer (Evo 2 stores values that differ slightly from the
    formula); positions are divided by ``scaling`` (linear position interpolation).
    """

    # positions up to this many take their angles from a table built once per attention block
    # (``angles``): cos and sin of 16,384 positions are 8 MiB at head dim 128; past it a step computes
    # its own few angles
    table_positions = 1 << 14

    def __init__(self, head_dim: int, base: float, scaling: float, backend: str = "auto"):
        super().__init__()
        self.register_buffer("inv_freq", rotary_inv_freq(head_dim, base))
        self.scaling = scaling
        self.backend = backend
        self._table = None  # (key, cos, sin): see angles()

    def forward(self, q, k, pos: int):
        """q: [B, L, H, hd], k: [B, L, Hkv, hd] -> rotated (q, k) for absolute positions pos..pos+L-1."""
        cos, sin = self.angles(pos, q.shape[1], q.device)
        cos, sin = cos[None, :, None], sin[None, :, None]
        return K.rotate_halves(q, cos, sin, backend=self.backend), K.rotate_halves(k, cos, sin, backend=self.backend)

    def angles(self, pos: int, L: int, device):
        """cos, sin [L, hd / 2] float32 of positions pos..pos+L-1.

        Positions below ``table_positions`` are sliced from a table of every position up to the
        furthest asked for (grown by doubling; rebuilt when the device or the frequencies change): a
        decoding step would otherwise compute its angles in every attention block for every token.
        Each angle is the same float32 product either way, so the numbers are identical."""
        end = pos + L
        if end > self.table_positions:
            return self._angles(pos, end, device)
        key = (device, self.inv_freq.data_ptr(), _version(self.inv_freq), self.scaling)
        if self._table is None or self._table[0] != key or self._table[1].shape[0] < end:
            have = self._table[1].shape[0] if self._table is not None and self._table[0] == key else 0
            with torch.inference_mode(False):  # a table made under inference mode could not enter autograd later
                self._table = (key, *self._angles(0, min(self.table_positions, max(end, 2 * have, 256)), device))
        return self._table[1][pos:end], self._table[2][pos:end]

    def _angles(self, start: int, end: int, device):
        t = torch.arange(start, end, device=device, dtype=torch.float32) / self.scaling
        ang = torch.outer(t, self.inv_freq.float())
        return ang.cos(), ang.sin()


def _version(t: torch.Tensor) -> int:
    """The tensor's in-place version, for caches of values derived from it; 0 for an inference tensor
    (a model built under inference mode), which keeps no version counter."""
    return 0 if t.is_inference() else t._version


def rotary_inv_freq(head_dim: int, base: float):
    """[hd / 2] float32: ``1 / base^(2j / hd)``, computed as flash-attn does.

    Always computed on the CPU: under a meta-device context the op would pull in torch._dynamo."""
    return 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device="cpu") / head_dim))


class MHA(nn.Module):
    """Causal multi-head attention with rotary embeddings; scale 1/sqrt(head_dim)."""

    def __init__(self, config: ModelConfig, backend: str = "auto"):
        super().__init__()
        c = config
        self.num_heads, self.num_kv_heads, self.head_dim = c.num_heads, c.num_kv_heads, c.head_dim
        qkv_out = (c.num_heads + 2 * c.num_kv_heads) * c.head_dim
        self.Wqkv = Linear(c.hidden_size, qkv_out, bias=c.qkv_proj_bias, backend=backend)
        self.out_proj = Linear(c.hidden_size, c.hidden_size, bias=c.mha_out_proj_bias, backend=backend)
        self.rotary_emb = RotaryEmbedding(c.head_dim, c.rotary_base, c.rotary_scaling, backend)
        self.backend = backend

    def forward(self, x, state: AttentionState | None = None, pos: int = 0):
        """x: [B, L, D] at positions pos..pos+L-1 -> [B, L, D]. With ``state``, k and v are written to the
        cache at those positions and the queries attend over cache[:pos + L]."""
        B, L, _ = x.shape
        h, hkv, hd = self.num_heads, self.num_kv_heads, self.head_dim
        q, k, v = self.Wqkv(x).split([h * hd, hkv * hd, hkv * hd], dim=-1)
        q, k = self.rotary_emb(q.view(B, L, h, hd), k.view(B, L, hkv, hd), pos)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.view(B, L, hkv, hd).transpose(1, 2)
        if state is not None:
            end = pos + L
            if end > state.k.shape[2]:
                raise ValueError(f"KV cache holds {state.k.shape[2]} positions, asked for {end}")
            state.k[:, :, pos:end] = k
            state.v[:, :, pos:end] = v
            k, v = state.k[:, :, :end], state.v[:, :, :end]
        if hkv != h:
            k, v = k.repeat_interleave(h // hkv, dim=1), v.repeat_interleave(h // hkv, dim=1)
        o = K.causal_attention(q, k, v, offset=pos if state is not None else 0, backend=self.backend)
        return self.out_proj(o.transpose(1, 2).reshape(B, L, h * hd))


class AttentionBlock(nn.Module):
    def __init__(self, config: ModelConfig, layer: int, backend: str = "auto"):
        super().__init__()
        self.config = config
        self.kind = "attn"
        self.pre_norm = RMSNorm(config.hidden_size, config.eps, backend)
        self.post_norm = RMSNorm(config.hidden_size, config.eps, backend)
        self.inner_mha_cls = MHA(config, backend)
        self.mlp = _mlp(config, layer, backend)

    def new_state(self, batch: int, device, max_seqlen: int, dtype) -> AttentionState:
        """Zeroed KV cache: k and v [batch, Hkv, max_seqlen, hd] in ``dtype``."""
        c = self.config
        shape = (batch, c.num_kv_heads, max_seqlen, c.head_dim)
        return AttentionState(k=torch.zeros(shape, device=device, dtype=dtype), v=torch.zeros(shape, device=device, dtype=dtype))

    def forward(self, x, state: AttentionState | None = None, pos: int = 0):
        """x: [B, L, D] at positions pos..pos+L-1 -> [B, L, D]."""
        u, h = self.post_norm.after_add(self.inner_mha_cls(self.pre_norm(x), state, pos), x)
        return u + self.mlp(h)
