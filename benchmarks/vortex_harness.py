"""vortex (PyPI ``vtx`` 1.1.0, the reference Evo 2 engine) on the CPU, for side-by-side timings.

    pip install --no-deps vtx==1.1.0 einops tqdm     # into the benchmark's environment only

vortex targets CUDA: importing ``vortex.ops`` loads the flash-attention extension and its rotary
embedding is a Triton kernel. Here ``vortex.ops`` is imported as a bare package (its submodules
load, its ``__init__`` with the flash-attention imports does not, so vortex's attention takes its
own PyTorch path), ``apply_rotary`` is replaced by the same rotation in PyTorch and, without a GPU,
``torch.cuda.device(...)`` (entered around every block) by a no-op context. Nothing else of
vortex is changed. ``vortex_model(ours)`` builds the vortex model of one of our models with the
same weights (``tests.test_hf_layouts.vortex_state_dict``: our layout back to the published one).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import tempfile
import types

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def _import_vortex():
    spec = importlib.util.find_spec("vortex")
    if spec is None:
        raise SystemExit('vortex is not installed: pip install --no-deps vtx==1.1.0 einops tqdm')
    if "vortex.ops" not in sys.modules:
        ops = types.ModuleType("vortex.ops")
        ops.__path__ = [os.path.join(os.path.dirname(spec.origin), "ops")]
        sys.modules["vortex.ops"] = ops
    if not torch.cuda.is_available():
        # vortex enters torch.cuda.device(...) around block construction and forward; a no-op on CPU
        torch.cuda.device = lambda device: contextlib.nullcontext()
    cwd = os.getcwd()
    os.chdir(tempfile.gettempdir())  # vortex.logging opens activations_debug.log in the working directory
    try:
        import vortex.model.model as vm
        import vortex.model.rotary as vr
    finally:
        os.chdir(cwd)

    vr.apply_rotary = _apply_rotary
    return vm


def _apply_rotary(x, cos, sin, seqlen_offsets=0, cu_seqlens=None, max_seqlen=None, interleaved=False,
                  inplace=False, conjugate=False):
    """vortex's Triton ``apply_rotary`` in PyTorch (non-interleaved halves, one offset for the batch).
    x: [B, L, H, hd]; cos, sin: [Lro, rd / 2]."""
    if interleaved or cu_seqlens is not None or not isinstance(seqlen_offsets, int):
        raise NotImplementedError("harness: only the non-interleaved, fixed-offset rotary is stubbed")
    L, rd = x.shape[1], cos.shape[-1] * 2
    c = cos[seqlen_offsets : seqlen_offsets + L][None, :, None, :].float()
    s = sin[seqlen_offsets : seqlen_offsets + L][None, :, None, :].float()
    s = -s if conjugate else s
    x0, x1 = x[..., : rd // 2].float(), x[..., rd // 2 : rd].float()
    rot = torch.cat([x0 * c - x1 * s, x0 * s + x1 * c], -1).to(x.dtype)
    out = x if inplace else x.clone()
    out[..., :rd] = rot
    return out


def vortex_config(c, max_seqlen: int):
    """The vortex config dict of our ``ModelConfig`` (Evo 2)."""
    from vortex.model.utils import dotdict

    idx = {k: [i for i, t in enumerate(c.block_types) if t == k] for k in ("hcl", "hcm", "hcs", "attn")}
    return dotdict(dict(
        model_name="evo-bench", vocab_size=c.vocab_size, hidden_size=c.hidden_size, num_filters=c.hidden_size,
        hcl_layer_idxs=idx["hcl"], hcm_layer_idxs=idx["hcm"], hcs_layer_idxs=idx["hcs"], attn_layer_idxs=idx["attn"],
        hcm_filter_length=c.hcm_filter_length, hcl_filter_groups=c.hidden_size, hcm_filter_groups=c.hcm_filter_groups,
        hcs_filter_groups=c.hcs_filter_groups, hcs_filter_length=c.hcs_filter_length, num_layers=len(c.block_types),
        short_filter_length=c.short_filter_length, num_attention_heads=c.num_heads, short_filter_bias=c.short_filter_bias,
        eps=c.eps, state_size=c.state_size, rotary_emb_base=c.rotary_base, rotary_emb_scaling_factor=c.rotary_scaling,
        use_interpolated_rotary_pos_emb=False, make_vocab_size_divisible_by=8, inner_size_multiple_of=16,
        inner_mlp_size=c.inner_mlp_size, proj_groups=1, hyena_filter_groups=1, column_split_hyena=False,
        column_split=True, interleave=True, evo2_style_activations=True, model_parallel_size=1, pipe_parallel_size=1,
        tie_embeddings=True, mha_out_proj_bias=c.mha_out_proj_bias, hyena_out_proj_bias=c.hyena_out_proj_bias,
        qkv_proj_bias=c.qkv_proj_bias, use_fp8_input_projections=False, max_seqlen=max_seqlen, max_batch_size=1,
        final_norm=True, use_flash_attn=False, use_flash_rmsnorm=False, use_flash_depthwise=False, use_flashfft=False,
        use_laughing_hyena=False, inference_mode=True, prefill_style="fft", mlp_activation="gelu",
        print_activations=False, params_dtype=torch.float32, seqlen=max_seqlen, hyena_block_dtype=torch.float32,
        attn_block_dtype=torch.float32, mlp_dtype=torch.float32, depthwise_dtype=torch.float32))


def vortex_model(ours, max_seqlen: int = 8192):
    """vortex's StripedHyena with the weights of ``ours`` (float32, CPU, eval)."""
    vm = _import_vortex()
    sys.path.insert(0, os.path.join(HERE, ".."))
    from tests.test_hf_layouts import vortex_state_dict

    model = vm.StripedHyena(vortex_config(ours.config, max_seqlen))
    sd = vortex_state_dict(ours)
    sd.pop("unembed.weight")  # tied: vortex's unembedding is the embedding itself
    model.custom_load_state_dict(sd, strict=False)  # vortex's own loader (permutes Wqkv as for a checkpoint)
    return model.float().eval()
