"""Inference state for recurrent decoding and chunked prefill.

One ``InferenceState`` is allocated per generation (or long sequence) and updated in place: FIR tails
of the featurizer and of Hyena-SE/MR filters, the modal state of Hyena-LR (real) / Evo 1 Hyena
(complex), and a preallocated KV cache for attention. Running the model over a sequence in pieces
with the same state gives the same outputs as one pass over the whole sequence.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class HyenaState:
    fir: torch.Tensor  # [B, K-1, 3D] float32: last inputs of the featurizer's short filter (K = its length)
    # hcs/hcm: [B, Ki-1, D] float32, the inner FIR's history (Ki = 7 or 128); hcl: [B, D, S] float32
    # modal state; Evo 1: [B, D, S] complex64
    inner: torch.Tensor


@dataclass
class AttentionState:
    k: torch.Tensor  # [B, Hkv, T, hd] in the model dtype, T = capacity
    v: torch.Tensor


def _map(obj, fn):
    return type(obj)(**{f.name: fn(getattr(obj, f.name)) for f in fields(obj)})


class InferenceState:
    """Per-layer states plus ``seqlen``, the number of tokens consumed so far."""

    def __init__(self, layers: list, max_seqlen: int, seqlen: int = 0):
        self.layers = layers
        self.max_seqlen = max_seqlen
        self.seqlen = seqlen

    @property
    def batch_size(self) -> int:
        return self.layers[0].fir.shape[0] if isinstance(self.layers[0], HyenaState) else self.layers[0].k.shape[0]

    def clone(self) -> InferenceState:
        return InferenceState([_map(s, torch.clone) for s in self.layers], self.max_seqlen, self.seqlen)

    def index_select(self, rows) -> InferenceState:
        """A new state holding batch rows ``rows`` (a LongTensor or list; repeats allowed)."""
        idx = torch.as_tensor(rows, dtype=torch.long)
        return InferenceState(
            [_map(s, lambda t: t.index_select(0, idx.to(t.device))) for s in self.layers], self.max_seqlen, self.seqlen
        )

