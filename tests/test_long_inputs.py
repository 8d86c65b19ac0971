"""Long records in `evo score` and `evo embed`: each is a chunk of progress of its own (a killed run
keeps the long records it finished), and layer-by-layer runs show their progress as they go."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import evo_cli
import evo_cli.embedding as embedding
import evo_cli.scoring as scoring
from evo_cli.io.fasta import format_fasta, read_fasta
from evo_cli.model.init import motif_config, random_model
from evo_cli.runs import record_chunks

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model():
    """14 layers of the Evo 2 motif (blocks 3 and 10 are attention: layer by layer saves memory)."""
    return random_model(motif_config("evo2", hidden_size=16, num_layers=14, head_dim=8, state_size=4, name="t14"), seed=4)


def _records(tmp_path, lengths):
    g = torch.Generator().manual_seed(0)
    fa = tmp_path / "in.fa"
    fa.write_text("".join(format_fasta(f"s{i}", "".join("ACGT"[j] for j in torch.randint(0, 4, (n,), generator=g)))
                          for i, n in enumerate(lengths)))
    return read_fasta(fa)


def test_record_chunks_put_each_long_record_alone():
    assert record_chunks([5, 5, 5, 5, 5], 2, None) == [(0, 2), (2, 4), (4, 5)]
    assert record_chunks([5, 50, 5, 5, 5, 60, 70], 2, 10) == [(0, 1), (1, 2), (2, 4), (4, 5), (5, 6), (6, 7)]
    assert record_chunks([], 2, 10) == []


def _stop_after(total):
    calls = []

    def progress(n):
        calls.append(n)
        if sum(calls) > total:
            raise KeyboardInterrupt

    return progress


def test_score_killed_inside_a_long_record_keeps_the_long_records_before_it(model, tmp_path):
    records = _records(tmp_path, [70, 65, 60])  # all longer than the chunk size: each runs (and is kept) alone
    kw = dict(batch_size=1, chunk_size=16, per_position=tmp_path / "pos.tsv", settings={"input": "x"})
    out = tmp_path / "scores.tsv"
    scoring.run_score(model, records, out, **kw)
    expected = out.read_bytes(), (tmp_path / "pos.tsv").read_bytes()
    out.unlink()
    with pytest.raises(KeyboardInterrupt):  # inside the third record
        scoring.run_score(model, records, out, progress=_stop_after(70 + 65 + 20), **kw)
    assert Path(str(out) + ".evo-partial").read_text().count("\n") == 3  # settings + two records
    summary = scoring.run_score(model, records, out, resume=True, **kw)
    assert (summary.resumed, summary.sequences) == (2, 3)
    assert (out.read_bytes(), (tmp_path / "pos.tsv").read_bytes()) == expected


def test_embed_killed_inside_a_long_record_keeps_the_long_records_before_it(model, tmp_path):
    records = _records(tmp_path, [8, 70, 9, 65, 60])
    kw = dict(layers=["blocks.4"], pool="none", batch_size=1, chunk_size=16, settings={"input": "x"})
    out = tmp_path / "emb.parquet"
    embedding.run_embed(model, records, out, **kw)
    expected = out.read_bytes()
    out.unlink()
    with pytest.raises(KeyboardInterrupt):  # inside the last record
        embedding.run_embed(model, records, out, progress=_stop_after(8 + 70 + 9 + 65 + 20), **kw)
    summary = embedding.run_embed(model, records, out, resume=True, **kw)
    assert (summary.resumed, summary.sequences) == (4, 5) and out.read_bytes() == expected


def _spy_last_block(model, events):
    return model.blocks[-1].register_forward_pre_hook(lambda *_: events.append("last block"))


@pytest.mark.parametrize("free", [None, 0], ids=["chunked", "layerwise"])
def test_score_shows_progress_before_the_last_block_of_a_long_record(model, monkeypatch, free):
    """Layer by layer, the first logits come once every earlier block has run over the whole record:
    progress counts each block's chunks as they finish, the calls summing to the positions."""
    monkeypatch.setattr(scoring, "free_memory_bytes", lambda device: free)
    ids = [torch.randint(65, 69, (100,), generator=torch.Generator().manual_seed(0)).tolist()]
    events = []
    handle = _spy_last_block(model, events)
    try:
        scoring.token_logprobs(model, ids, chunk_size=32, progress=events.append)
    finally:
        handle.remove()
    counts = [e for e in events if e != "last block"]
    assert sum(counts) == 100 and all(n > 0 for n in counts)
    # chunked: one call per chunk; layer by layer: one per (block, chunk) with work to count (not the 4-position
    # chunks, 4 // 14 = 0, of 10 blocks), 13 of the 14 blocks' share before the last block
    before = sum(counts[: events.index("last block")])
    assert (len(counts), before) == ((4, 0) if free is None else (46, 92))


def test_embed_layerwise_shows_progress_before_the_last_block(model, monkeypatch):
    monkeypatch.setattr(embedding, "free_memory_bytes", lambda device: 0)
    events = []
    handle = _spy_last_block(model, events)
    try:
        list(embedding.iter_embeddings(model, ["ACGT" * 25], layers=["blocks.13"], pool="mean", chunk_size=32,
                                       progress=events.append))
    finally:
        handle.remove()
    counts = [e for e in events if e != "last block"]
    assert sum(counts) == 100 and sum(counts[: events.index("last block")]) == 92
