"""One-token decoding steps on a CPU as one numba call per block, bound once to fixed arrays.

A decoding step through the modules is about 60 PyTorch calls per block, and on a CPU each costs
microseconds whatever its size: for a 512-wide model, a quarter of a step beside reading the
weights (benchmarks/README.md). ``CpuDecoder`` binds each block's kernel (``kernels/block/cpu.py``)
to its weights, its state and two fixed buffers when decoding starts, so that a step is the
embedding lookup, one call per block and the head. This is the CPU counterpart of the CUDA graph
in ``graph.py``: the same numbers as ``model(tokens, state)`` (float32 rounding), fixed shapes.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from evo_cli import kernels as K

from .cache import InferenceState


class CpuDecoder:
    """``step(tokens [B, 1] int64) -> logits [B, 1, vocab] float32`` continuing ``state`` (updated in
    place, ``state.seqlen`` advanced). Build it with ``CpuDecoder.build``. It holds views of the
    weights and the state taken then: valid while neither is replaced (``model.to()``, a new
    ``new_state`` under another backend, a new parameter), as during one ``generate`` batch."""

    def __init__(self, model, state: InferenceState, steps: list, x, pos, logits, head):
        self.model, self.state = model, state
        self.steps, self.x, self.pos, self.logits, self.head = steps, x, pos, logits, head

    @classmethod
    def build(cls, model, state: InferenceState) -> CpuDecoder | None:
        """A decoder for ``state``, or None where the modules must run instead: no numba, a backend other
        than numba, a split model, weights other than float32 on the CPU, FP8 projections, a forward
        hook anywhere (it expects its module to run), a state without every block, or more
        sequences than the matrix-vector kernels take, weights larger than they take (MKL is faster)."""
        binders = K.bind_decoding_steps()
        if (binders is None or model.device.type != "cpu" or K.resolve_backend(model.kernels, model.device) != "numba"
                or model.placement is not None or model.dtype != torch.float32 or model.fp8 != "off"
                or model._hooked() or nn.modules.module._global_forward_hooks
                or nn.modules.module._global_forward_pre_hooks or len(state.layers) != len(model.blocks)):
            return None
        B, c = state.batch_size, model.config
        x = torch.empty(B, c.hidden_size)
        pos = torch.zeros(1, dtype=torch.long)
        logits = torch.empty(B, c.vocab_size)
        steps = []
        with torch.no_grad():
            for block, st in zip(model.blocks, state.layers):
                if block.kind == "attn":
                    mha = block.inner_mha_cls
                    step = binders.bind_attention_block(
                        x, x, st.k, st.v, pos, eps=block.pre_norm.eps, pre_scale=block.pre_norm.scale,
                        wqkv=mha.Wqkv.weight, bqkv=mha.Wqkv.bias, inv_freq=mha.rotary_emb.inv_freq,
                        scaling=mha.rotary_emb.scaling, num_heads=mha.num_heads, out_w=mha.out_proj.weight,
                        out_b=mha.out_proj.bias, post_scale=block.post_norm.scale, l1=block.mlp.l1.weight,
                        l2=block.mlp.l2.weight, l3=block.mlp.l3.weight, activation=block.mlp.activation)
                else:
                    step = binders.bind_hyena_block(x, x, st.fir, st.inner, **block.step_weights())
                if step is None:
                    return None
                steps.append(step)
            head = binders.bind_head(x, logits, eps=model.norm.eps, scale=model.norm.scale,
                                     weight=model.embedding_layer.weight)
        if head is None:
            return None
        return cls(model, state, steps, x, pos, logits, head)

    def step(self, tokens) -> torch.Tensor:
        s = self.state
        if s.seqlen >= s.max_seqlen:
            raise ValueError(f"state holds {s.max_seqlen} positions; all are used")
        if tokens.shape != (self.x.shape[0], 1):
            raise ValueError(f"tokens must be [{self.x.shape[0]}, 1] (the state's batch), not {list(tokens.shape)}")
        torch.index_select(self.model.embedding_layer.weight.detach(), 0, tokens[:, 0], out=self.x)
        self.pos[0] = s.seqlen
        for step in self.steps:
            step()
        self.head()
        s.seqlen += 1
        return self.logits.clone()[:, None]
