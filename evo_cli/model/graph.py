"""One-token decoding steps with fixed shapes, replayed from a CUDA graph on GPUs.

A batch-1 decoding step on a GPU is about a dozen small kernel launches per layer issued from
Python, so its speed is bound by Python and launch latency, not by reading the weights. Capturing
the step once in a CUDA graph and replaying it per token removes both. A graph needs every shape and
address fixed, so the step here differs from ``StripedHyena.forward`` in two places only:

- the position is a 0-dim tensor on the device (``pos``), not a Python int: rotary angles are
  computed from it, and the new key and value are written with ``index_copy_`` at it;
- attention runs over the whole preallocated KV cache with a mask of the positions after ``pos``
  (the masked terms are exact zeros after the softmax), not over ``cache[:pos + 1]``.

The Hyena blocks' one-token path already updates fixed-size states in place. ``StaticDecoder`` runs
this step eagerly on the CPU (where a graph does not exist; tests compare it to the normal step) and
on CUDA captures it, falling back to the normal step where capture fails.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from evo_cli import kernels as K

from .cache import InferenceState

log = logging.getLogger(__name__)


class StaticDecoder:
    """``step(tokens [B, 1] int64) -> logits [B, 1, vocab] float32`` continuing ``state`` (updated in
    place, ``state.seqlen`` advanced), with the numbers of ``model(tokens, state)``.

    graph: capture the step in a CUDA graph (default: when the model is on CUDA). The returned
    logits are then a static buffer, overwritten by the next step: copy what must be kept."""

    def __init__(self, model, state: InferenceState, graph: bool | None = None):
        if len(state.layers) != len(model.blocks):
            raise ValueError("a static decoding step needs the state of every block")
        if getattr(model, "placement", None) is not None:
            raise ValueError("a static decoding step runs a model on one device")
        self.model, self.state = model, state
        dev = model.device
        self.tokens = torch.zeros(state.batch_size, 1, dtype=torch.long, device=dev)
        self.pos = torch.zeros((), dtype=torch.long, device=dev)
        self.positions = torch.arange(state.max_seqlen, device=dev)  # key positions of the whole cache
        self.graph = None
        self.logits = None
        if graph if graph is not None else dev.type == "cuda":
            self._capture()

    def step(self, tokens) -> torch.Tensor:
        s = self.state
        if s.seqlen >= s.max_seqlen:
            raise ValueError(f"state holds {s.max_seqlen} positions; all are used")
        if self.graph is None and self.logits is not None:  # capture failed: the normal step
            return self.model(tokens, s)
        self.tokens.copy_(tokens)
        self.pos.fill_(s.seqlen)
        if self.graph is not None:
            with torch.cuda.device(self.tokens.device):  # a graph replays on its own device's stream
                self.graph.replay()
            out = self.logits
        else:
            out = self._step()
        s.seqlen += 1
        return out

    @torch.inference_mode()
    def _step(self) -> torch.Tensor:
        m = self.model
        x = m.embedding_layer(self.tokens)
        for block, st in zip(m.blocks, self.state.layers):
            x = self._attention_block(block, x, st) if block.kind == "attn" else block(x, st)
        return m._head(x, True, True)

    def _attention_block(self, block, x, st):
        u = self._attention(block.inner_mha_cls, block.pre_norm(x), st) + x
        return u + block.mlp(block.post_norm(u))

    def _attention(self, mha, x, st):
        """``MHA.forward`` for one token at position ``self.pos``, over the whole cache, masked."""
        B = x.shape[0]
        h, hkv, hd = mha.num_heads, mha.num_kv_heads, mha.head_dim
        q, k, v = mha.Wqkv(x).split([h * hd, hkv * hd, hkv * hd], dim=-1)
        rot = mha.rotary_emb
        ang = (self.pos.float() / rot.scaling) * rot.inv_freq.float()
        cos, sin = ang.cos()[None, None, None, :], ang.sin()[None, None, None, :]
        q, k = K.rotate_halves(q.view(B, 1, h, hd), cos, sin), K.rotate_halves(k.view(B, 1, hkv, hd), cos, sin)
        at = self.pos.view(1)
        st.k.index_copy_(2, at, k.transpose(1, 2))
        st.v.index_copy_(2, at, v.view(B, 1, hkv, hd).transpose(1, 2))
        mask = (self.positions <= self.pos)[None, None, None, :]
        o = F.scaled_dot_product_attention(q.transpose(1, 2), st.k, st.v, attn_mask=mask, enable_gqa=hkv != h)
        return mha.out_proj(o.transpose(1, 2).reshape(B, 1, h * hd))

    def _capture(self) -> None:
        """Warm up (autotuning, allocator) on a copy of the state, restore it, capture one step.

        Streams and the capture belong to the current CUDA device, so it is made the model's: on
        another one (``--device cuda:1``) the step's kernels would run outside the capture, and the
        graph would replay nothing."""
        try:
            backup = self.state.clone()  # a second KV cache: may not fit, then decode without a graph
        except torch.cuda.OutOfMemoryError:
            log.warning("decoding without a CUDA graph (no memory for the capture's copy of the state)")
            self.graph, self.logits = None, torch.empty(0)
            return
        dev = self.tokens.device
        caller = torch.cuda.current_stream(dev)
        try:
            with torch.cuda.device(dev):
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    for _ in range(2):
                        self._step()
                torch.cuda.current_stream().wait_stream(side)
                _copy_state(self.state, backup)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    self.logits = self._step()
            self.graph = graph
        except Exception as e:  # noqa: BLE001 - any capture failure falls back to the normal step
            log.warning("decoding without a CUDA graph (capture failed: %s)", e)
            # torch.cuda.graph leaves its capture stream current when ending the capture raises, and a
            # failed warm-up may leave kernels running on the side stream: back to the caller's stream,
            # with every kernel done, before the state is restored under them
            torch.cuda.set_stream(caller)
            torch.cuda.synchronize(dev)
            _copy_state(self.state, backup)
            self.graph, self.logits = None, torch.empty(0)


def _copy_state(dst: InferenceState, src: InferenceState) -> None:
    for a, b in zip(dst.layers, src.layers):
        for name in vars(a):
            getattr(a, name).copy_(getattr(b, name))
