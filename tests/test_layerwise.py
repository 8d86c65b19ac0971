"""Layer-by-layer runs of long sequences (``StripedHyena.forward_layerwise``) inside `evo score` and
`evo embed`: chosen when the KV caches would not fit, with the chunked path's numbers."""

from __future__ import annotations

import pytest
import torch

import evo_cli.embedding as embedding
import evo_cli.scoring as scoring
from evo_cli.model.init import motif_config, random_model


@pytest.fixture(scope="module")
def two_attention_blocks():
    """14 layers of the Evo 2 motif: blocks 3 and 10 are attention."""
    return random_model(motif_config("evo2", hidden_size=16, num_layers=14, head_dim=8, state_size=4, name="t14"), seed=3)


def _spy_modes(model, monkeypatch):
    used = []
    for name in ("forward_chunked", "forward_layerwise"):
        fn = getattr(model, name)
        monkeypatch.setattr(model, name, lambda *a, _fn=fn, _name=name, **k: (used.append(_name), _fn(*a, **k))[1])
    return used


def test_score_long_sequence_layerwise(two_attention_blocks, monkeypatch):
    model = two_attention_blocks
    ids = [torch.randint(65, 69, (100,), generator=torch.Generator().manual_seed(0)).tolist()]
    used = _spy_modes(model, monkeypatch)
    chunked = scoring.token_logprobs(model, ids, chunk_size=32)[0]
    monkeypatch.setattr(scoring, "free_memory_bytes", lambda device: 0)
    layerwise = scoring.token_logprobs(model, ids, chunk_size=32)[0]
    assert used == ["forward_chunked", "forward_layerwise"]
    assert layerwise.shape == chunked.shape == (99,)
    assert (layerwise - chunked).abs().max().item() < 1e-5


@pytest.mark.parametrize("layers,mode", [(["blocks.11.mlp.l3"], "forward_layerwise"),
                                         (["blocks.4.mlp.l3", "blocks.11.mlp.l3"], "forward_chunked")])
def test_embed_long_sequence_layerwise(two_attention_blocks, monkeypatch, layers, mode):
    """Layer by layer only where every hooked layer sits in the last block run."""
    model = two_attention_blocks
    seq = "".join("ACGT"[i] for i in torch.randint(0, 4, (90,), generator=torch.Generator().manual_seed(1)).tolist())
    kw = dict(layers=layers, pool="none", chunk_size=32)
    chunked = list(embedding.iter_embeddings(model, [seq], **kw))
    used = _spy_modes(model, monkeypatch)
    monkeypatch.setattr(embedding, "free_memory_bytes", lambda device: 0)
    got = list(embedding.iter_embeddings(model, [seq], **kw))
    assert used == [mode]
    assert [(e.layer, e.start) for e in got] == [(e.layer, e.start) for e in chunked]
    assert max((a.values - b.values).abs().max().item() for a, b in zip(got, chunked)) < 1e-5
