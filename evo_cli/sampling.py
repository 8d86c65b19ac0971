"""Next-token sampling: pure functions of a batch of logits.

Semantics (the evo / evo2 ``sample`` order, made robust):
- ``top_k == 1`` is greedy: the argmax, temperature ignored;
- otherwise keep the ``top_k`` largest logits (``top_k == 0``: the whole vocabulary), divide them by
  the temperature, keep the smallest set of most likely tokens whose probability reaches ``top_p``
  (nucleus; ``top_p == 1`` keeps all), renormalise and draw one token.
The draw is inverse-CDF sampling with a uniform number supplied per row, so that the caller owns
the random stream (one per sequence: see ``generation.py``) and a row's token never depends on the
other rows of the batch.

NaN logits count as impossible tokens (the references turn NaN into logit 0, which makes a broken
token likely); ``+inf`` logits win over every finite one.
"""

from __future__ import annotations

import math
import numbers

import torch

from evo_cli.errors import InputError


def check_sampling(temperature: float, top_k: int, top_p: float) -> None:
    """Raise ``InputError`` for settings that do not define a distribution (numpy scalars count as the
    numbers they hold)."""
    if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 0:
        raise InputError(f"top_k must be an integer >= 0 (0 = the whole vocabulary, 1 = greedy), got {top_k!r}")
    for name, value in (("temperature", temperature), ("top_p", top_p)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise InputError(f"{name} must be a number, got {value!r}")
    if not (0 < top_p <= 1):
        raise InputError(f"top_p must be in (0, 1], got {top_p}")
    if top_k != 1 and not (0 < temperature < math.inf):
        raise InputError(f"temperature must be a positive number, got {temperature} "
                         "(temperature 0 means greedy decoding: use top_k = 1)")


def clean_logits(logits: torch.Tensor) -> torch.Tensor:
    """[B, V] -> float32 [B, V]: NaN -> -inf; in a row holding +inf, the +inf entries -> 0 and the rest -> -inf."""
    x = logits.float().nan_to_num(nan=-math.inf, posinf=math.inf, neginf=-math.inf)
    posinf = x == math.inf
    if_inf = torch.zeros_like(x).masked_fill(~posinf, -math.inf)
    return torch.where(posinf.any(-1, keepdim=True), if_inf, x)


def sample_tokens(logits: torch.Tensor, uniforms: torch.Tensor | None, temperature: float = 1.0, top_k: int = 4,
                  top_p: float = 1.0) -> torch.Tensor:
    """logits: [B, V]; uniforms: [B] in [0, 1) (unused, may be None, when greedy) -> tokens [B] int64."""
    x = clean_logits(logits)
    if top_k == 1:
        return x.argmax(-1)
    k = x.shape[-1] if top_k <= 0 else min(top_k, x.shape[-1])
    # sorted descending, so every filtered-out or underflowed token lies in the tail
    values, index = torch.topk(x, k, dim=-1)
    probs = torch.softmax(values / temperature, dim=-1)
    if top_p < 1:
        mass_before = probs.cumsum(-1) - probs
        probs = probs.masked_fill(mass_before >= top_p, 0.0)
    cdf = probs.cumsum(-1)
    target = uniforms.to(cdf)[:, None] * cdf[:, -1:]
    # the first token whose cdf exceeds the target has a positive probability; the clamp catches a
    # target that rounds up to the total (and a row without any finite logit, which gets its first token)
    pick = torch.searchsorted(cdf, target, right=True)
    pick = torch.minimum(pick, (probs > 0).sum(-1, keepdim=True) - 1).clamp(min=0)
    return index.gather(-1, pick)[:, 0]


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token) under the raw logits (no temperature or filtering): [B, V], [B] -> [B] float32."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens[:, None])[:, 0]
