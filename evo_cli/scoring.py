"""Sequence log-likelihoods under the model.

Scoring follows each family's reference: Evo 1 (evo ``score_sequences``) prepends the EOS token 0
as BOS and scores every base; Evo 2 (evo2 ``score_sequences``) has no BOS and scores bases 2..L
(the first base has no context). Log-probabilities are taken in float32 from float32 logits.
"""

from __future__ import annotations

import torch

from evo_cli.model.tokenizer import EOS_ID, PAD_ID, encode


def default_prepend_bos(model) -> bool:
    """The reference default: BOS for Evo 1, none for Evo 2."""
    return model.config.family == "evo1"


@torch.inference_mode()
def token_logprobs(model, token_ids: list[list[int]], prepend_bos: bool = False, batch_size: int = 8) -> list[torch.Tensor]:
    """log p(x_t | x_<t) for every scored position of each sequence.

    token_ids: sequences of token ids. Returns one float32 CPU tensor per sequence, of length
    ``len(ids)`` with ``prepend_bos`` and ``len(ids) - 1`` without. Sequences are batched by
    length and right-padded; padding cannot reach real positions of a causal model.
    """
    rows = [([EOS_ID] if prepend_bos else []) + list(ids) for ids in token_ids]
    out: list[torch.Tensor | None] = [None] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(rows[i]) for i in chunk)
        batch = torch.full((len(chunk), width), PAD_ID, dtype=torch.long)
        for j, i in enumerate(chunk):
            batch[j, : len(rows[i])] = torch.tensor(rows[i], dtype=torch.long)
        batch = batch.to(model.device)
        logits = model(batch)
        lp = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, batch[:, 1:, None])[..., 0].cpu()
        for j, i in enumerate(chunk):
            out[i] = lp[j, : len(rows[i]) - 1].clone()
    return out


def score_sequences(
    model,
    sequences: list[str],
    reduce: str = "mean",
    prepend_bos: bool | None = None,
    batch_size: int = 8,
) -> list[float]:
    """Mean (or sum) log-likelihood per sequence; ``prepend_bos`` defaults to the family's reference."""
    if reduce not in ("mean", "sum"):
        raise ValueError(f"reduce must be 'mean' or 'sum', not {reduce!r}")
    bos = default_prepend_bos(model) if prepend_bos is None else prepend_bos
    lps = token_logprobs(model, [encode(s) for s in sequences], bos, batch_size)
    return [float(lp.sum() if reduce == "sum" else lp.mean()) if lp.numel() else float("nan") for lp in lps]
