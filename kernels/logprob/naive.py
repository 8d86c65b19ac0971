"""Log-probabilities of given tokens under a language model's logits."""

from __future__ import annotations

import torch


def token_logprobs_ref(logits, tokens):
    """logits: [..., V]; tokens: [...] int64 -> [...] float32: ``log_softmax(logits)[tokens]``."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens[..., None])[..., 0]
