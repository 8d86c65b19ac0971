"""StripedHyena: one implementation for Evo 1 and Evo 2; the block of each layer comes from the config."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from evo_cli.kernels import BACKENDS

from .cache import InferenceState
from .config import ModelConfig
from .layers import AttentionBlock, HyenaBlock, RMSNorm


def keeps_float32(name: str) -> bool:
    """Parameters kept in float32 whatever the model dtype: Hyena filters (poles, residues, taps,
    D), rotary frequencies and FP8 scales. They are small, and their precision matters at long range
    (the scales: they are the stored float32 values Transformer Engine quantises with)."""
    return ".filter." in name or name.endswith("inv_freq") or ".fp8_scale_" in name


class StripedHyena(nn.Module):
    """``forward(input_ids [B, L] int64) -> logits [B, L, vocab] float32``.

    With an ``InferenceState`` the call continues the sequence the state has seen (positions start
    at ``state.seqlen``) and updates the state in place: the prompt can be fed in one piece or in
    chunks, then one token at a time, and every piece gives the logits the full forward would.
    """

    def __init__(self, config: ModelConfig, kernels: str = "auto"):
        super().__init__()
        self.config = config
        self.kernels = kernels
        # an explicit weight skips nn.Embedding's normal_ init, which on the meta device pulls in
        # torch._dynamo (seconds of start-up); loaders and init.py set the values anyway
        self.embedding_layer = nn.Embedding(config.vocab_size, config.hidden_size,
                                            _weight=torch.empty(config.vocab_size, config.hidden_size))
        self.blocks = nn.ModuleList(
            AttentionBlock(config, i, kernels) if kind == "attn" else HyenaBlock(config, i, kernels)
            for i, kind in enumerate(config.block_types)
        )
        self.norm = RMSNorm(config.hidden_size, config.eps, kernels)
        # blocks split over several devices (placement.py; set by the loader), None on one device
        self.placement = None

    @property
    def device(self) -> torch.device:
        return self.embedding_layer.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embedding_layer.weight.dtype

    def block_device(self, i: int) -> torch.device:
        """Where block ``i`` and its inference state live."""
        return self.device if self.placement is None else self.placement.block_device(i)

    def set_kernels(self, kernels: str) -> StripedHyena:
        """Switch every op between ``auto``, ``triton`` and ``torch`` kernels."""
        if kernels not in BACKENDS:
            raise ValueError(f"unknown kernel backend {kernels!r} (choose from {', '.join(BACKENDS)})")
        self.kernels = kernels
        for m in self.modules():
            if hasattr(m, "backend"):
                m.backend = kernels
        return self

    @property
    def has_fp8_state(self) -> bool:
        """True when the Hyena projections carry FP8 scales (from the checkpoint)."""
        return any(b.projections.has_fp8_state for b in self.blocks if b.kind != "attn")

    @property
    def fp8(self) -> str:
        """How the Hyena projections run: ``off``, ``emulate`` or ``native``."""
        return next((b.projections.fp8 for b in self.blocks if b.kind != "attn"), "off")

    def add_fp8_state(self) -> StripedHyena:
        """Give every Hyena projection its FP8 scale buffers (filled by the checkpoint loader)."""
        for b in self.blocks:
            if b.kind != "attn":
                b.projections.add_fp8_state()
        return self

    def set_fp8(self, mode: str) -> StripedHyena:
        """Run the Hyena projections ``off`` (plain matmul), ``emulate`` (mmaemu) or ``native``
        (torch._scaled_mm); the E4M3 weights are prepared here. See ``evo_cli.runtime.resolve_fp8``."""
        if mode not in ("off", "emulate", "native"):
            raise ValueError(f"unknown FP8 mode {mode!r} (off, emulate or native)")
        for b in self.blocks:
            if b.kind != "attn":
                b.projections.set_fp8(mode)
        return self

    def new_state(self, batch_size: int, max_seqlen: int, last_block: int | None = None) -> InferenceState:
        """Zeroed state for ``batch_size`` sequences of up to ``max_seqlen`` tokens (sizes the KV cache);
        with ``last_block``, only for blocks ``0..last_block`` (see ``forward``)."""
        blocks = self.blocks if last_block is None else self.blocks[: last_block + 1]
        layers = [
            b.new_state(batch_size, self.block_device(i), max_seqlen, self.dtype) if b.kind == "attn"
            else b.new_state(batch_size, self.block_device(i))
            for i, b in enumerate(blocks)
        ]
        return InferenceState(layers, max_seqlen)

    def forward(self, input_ids, state: InferenceState | None = None, *, return_logits: bool = True,
                last_block: int | None = None):
        """input_ids: [B, L] int64 -> logits [B, L, vocab] float32 (None with ``return_logits=False``,
        which still runs the final norm so that hooks on ``norm`` fire).

        last_block: run blocks ``0..last_block`` only and return None (feature extraction, where the
        later blocks are not needed); with a state, the states of the skipped blocks are not updated.
        """
        pos = 0 if state is None else state.seqlen
        if state is not None and pos + input_ids.shape[1] > state.max_seqlen:
            raise ValueError(f"state holds {state.max_seqlen} positions; {pos} used, {input_ids.shape[1]} more asked")
        x = self.embedding_layer(input_ids)
        n = len(self.blocks) if last_block is None else last_block + 1
        for i, block in enumerate(self.blocks[:n]):
            s = None if state is None else state.layers[i]
            # split over devices: the activations follow the blocks
            x = block(x, s, pos) if self.placement is None else self.placement.run_block(i, block, x, s, pos)
        if state is not None:
            state.seqlen = pos + input_ids.shape[1]
        if last_block is not None:
            return None
        x = self.norm(x.to(self.device))  # the final norm and tied unembedding are on the first device
        if not return_logits:
            return None
        # tied unembedding, in float32 so that scores keep full precision under bf16 weights
        return F.linear(x.float(), self.embedding_layer.weight.float())

    def forward_chunked(self, input_ids, chunk_size: int, *, return_logits: bool = True, last_block: int | None = None):
        """Run over ``input_ids`` [B, L] in chunks of ``chunk_size`` tokens with a carried state.

        Yields ``(start, logits)`` per chunk (logits [B, n, vocab] or None), exactly the slices the
        full forward would give, with activation memory bounded by the chunk (plus the KV cache of
        the attention layers, which grows with L). Forward hooks fire once per chunk. ``last_block``
        as in ``forward``.
        """
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        L = input_ids.shape[1]
        state = self.new_state(input_ids.shape[0], L, last_block)
        for start in range(0, L, chunk_size):
            yield start, self(input_ids[:, start : start + chunk_size], state, return_logits=return_logits,
                              last_block=last_block)
