"""Variant windows, prefix-shared window scoring and chunked sequence scoring against plain full-window scoring."""

import math
import random

import pytest
import torch

from evo_cli import scoring
from evo_cli.io.fasta import reverse_complement
from evo_cli.scoring import score_sequences, score_windows, token_logprobs, variant_windows, window_bounds

from .conftest import CONFORMANCE

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_a(load_case):
    return load_case(CONFORMANCE / "evo2" / "tiny_a")[0]


def _contig(n=400, seed=0):
    rng = random.Random(seed)
    return "".join(rng.choice("ACGT") for _ in range(n))


def _fetch(contig):
    return lambda a, b: contig[max(0, a) : min(b, len(contig))]


def test_snv_window_matches_the_brca1_notebook():
    contig = _contig()
    for p in (0, 5, 32, 200, 390, 399):
        ref, [alt] = variant_windows(_fetch(contig), len(contig), p, contig[p], ["A" if contig[p] != "A" else "C"], 64)
        lo, hi = max(0, p - 32), min(len(contig), p + 32)
        assert ref == contig[lo:hi] and (lo, hi) == window_bounds(p, 64, len(contig))
        i = min(32, p)
        assert alt[i] != ref[i] and alt[:i] == ref[:i] and alt[i + 1 :] == ref[i + 1 :]


def test_indel_windows_keep_the_left_flank_and_the_length():
    contig = _contig()
    p = 200
    ref, (dele, ins, long_ins) = variant_windows(_fetch(contig), len(contig), p, contig[p : p + 4],
                                                 [contig[p], contig[p] + "GATTACA", "T" * 50], 64)
    assert len(ref) == len(dele) == len(ins) == len(long_ins) == 64
    assert dele == contig[168:201] + contig[204:235]  # deletion: the right flank is extended by 3
    assert ins == contig[168:201] + "GATTACA" + contig[204:228]  # insertion: cut on the right
    assert long_ins == contig[168:200] + "T" * 32  # an allele longer than the window's right half is cut
    # at the contig end the ALT window of a deletion can only be shorter
    p = 390
    ref, [dele] = variant_windows(_fetch(contig), len(contig), p, contig[p : p + 5], [contig[p]], 64)
    assert ref == contig[358:400] and dele == contig[358:391] + contig[395:400]


def _sites(contig):
    """(start, ref, alts): SNVs (multi-allelic), deletions, insertions, an MNV, at both contig edges."""
    c = contig
    other = {"A": "C", "C": "G", "G": "T", "T": "A"}
    return [
        (150, c[150], [b for b in "ACGT" if b != c[150]]),
        (151, c[151:155], [c[151], c[151] + "TTGA", other[c[151]] + c[152:155]]),
        (230, c[230], [c[230] + "ACGTACGTAC"]),
        (3, c[3:6], [c[3], c[3] + "G"]),
        (1, c[1], [other[c[1]]]),
        (396, c[396:399], [c[396]]),
        (398, c[398], [c[398] + "CC", other[c[398]]]),
    ]


@pytest.mark.parametrize("family", ["evo2", "evo1"])
def test_shared_prefix_equals_independent_windows(family, tiny_a, tiny_models, monkeypatch):
    model = tiny_a if family == "evo2" else tiny_models["evo1"]
    # without a chunk size a CPU run goes on from the prefix in steps of _CPU_STEP tokens: make them short
    monkeypatch.setattr(scoring, "_CPU_STEP", 7)
    contig = _contig()
    groups = []
    for start, ref, alts in _sites(contig):
        rw, aws = variant_windows(_fetch(contig), len(contig), start, ref, alts, 64)
        groups.append([rw, *aws])
        groups.append([reverse_complement(w) for w in [rw, *aws]])
    windows = [w for g in groups for w in g]
    full = dict(zip(windows, score_sequences(model, windows, prepend_bos=False)))
    for batch_size, chunk_size in ((3, None), (2, 24)):
        shared = score_windows(model, groups, batch_size=batch_size, chunk_size=chunk_size)
        assert shared.keys() == full.keys()
        err = max(abs(shared[w] - full[w]) for w in full)
        assert err < 1e-5, (batch_size, chunk_size, err)
    alone = score_windows(model, groups, share_prefix=False)
    assert max(abs(alone[w] - full[w]) for w in full) < 1e-5
    # --reduce sum: the prefix's log-probs plus the suffix's, not divided; the windows (lengths 2 to 64)
    # differ in length, so a sum off by a token or divided by the wrong count shows
    sums = dict(zip(windows, score_sequences(model, windows, prepend_bos=False, reduce="sum")))
    assert {len(w) for w in windows} != {64}
    shared = score_windows(model, groups, batch_size=3, chunk_size=24, reduce="sum")
    assert shared.keys() == sums.keys()
    assert max(abs(shared[w] - sums[w]) for w in sums) < 1e-4
    assert max(abs(shared[w] - full[w] * (len(w) - 1)) for w in sums) < 1e-4


def test_sharing_and_dedupe_cut_the_tokens_run(tiny_a):
    contig = _contig()
    groups = []
    for start, ref, alts in _sites(contig)[:2]:  # both differ from REF at the variant's index 32
        rw, aws = variant_windows(_fetch(contig), len(contig), start, ref, alts, 64)
        groups.append([rw, *aws])
    tokens = []
    hook = tiny_a.embedding_layer.register_forward_hook(lambda m, i, o: tokens.append(i[0].numel()))
    try:
        def run(gs, share):
            tokens.clear()
            scores = score_windows(tiny_a, gs, batch_size=64, share_prefix=share)
            return scores, sum(tokens)

        shared, n_shared = run(groups, True)
        alone, n_alone = run(groups, False)
        twice, n_twice = run(groups + groups, True)
    finally:
        hook.remove()
    assert n_alone == 8 * 64  # 2 sites x 4 windows of 64
    assert n_shared == 2 * 32 + 8 * 32  # each site's 32-token prefix once, then the 8 windows' suffixes
    assert n_twice == n_shared and twice == shared  # identical windows are scored once


@pytest.mark.parametrize("family", ["evo2", "evo1"])
def test_chunked_sequence_scores_equal_unchunked(family, tiny_a, tiny_models):
    model = tiny_a if family == "evo2" else tiny_models["evo1"]
    seqs = [_contig(300, 1), _contig(77, 2), _contig(5, 3)]
    ids = [list(s.encode()) for s in seqs]
    for bos in (False, True):
        ref = token_logprobs(model, ids, prepend_bos=bos)
        got = token_logprobs(model, ids, prepend_bos=bos, chunk_size=64)
        for r, g in zip(ref, got):
            assert r.shape == g.shape and torch.allclose(r, g, atol=1e-5, rtol=1e-5)
    assert score_sequences(model, seqs, chunk_size=33) == pytest.approx(score_sequences(model, seqs), abs=1e-5)


def test_an_empty_sequence_scores_nan_alone_or_batched(tiny_a):
    """An empty sequence has nothing to score, like one base without BOS: mean NaN and sum 0, also
    when it is alone in its batch (its [B, 0] logits once raised an IndexError)."""
    for kwargs in ({}, {"chunk_size": 2}, {"batch_size": 1}):
        means = score_sequences(tiny_a, ["", "ACGT"], **kwargs)
        assert math.isnan(means[0]) and math.isfinite(means[1])
        assert math.isnan(score_sequences(tiny_a, [""], **kwargs)[0])
        assert score_sequences(tiny_a, [""], reduce="sum", **kwargs) == [0.0]


@pytest.mark.parametrize("kernels", ["torch", "numba"])
@pytest.mark.parametrize("family", ["evo2", "evo1"])
def test_sequences_of_one_length_score_and_embed_the_same_bits_at_any_batch_size(family, kernels, tiny_models):
    """README: sequences of one length give the same bytes at batch sizes 1 and 8 with both backends
    (nothing is padded, and a row's numbers do not depend on the rows beside it)."""
    from evo_cli.embedding import embed

    model = tiny_models[family]
    seqs = [_contig(70, seed) for seed in range(10)]  # a batch of 8, then one of 2
    before = model.kernels
    try:
        model.set_kernels(kernels)
        for reduce in ("mean", "sum"):
            assert score_sequences(model, seqs, reduce=reduce, batch_size=1) == \
                score_sequences(model, seqs, reduce=reduce, batch_size=8)
        for pool in ("mean", "none"):
            one, eight = (embed(model, seqs, "blocks.1", pool=pool, batch_size=b)["blocks.1"] for b in (1, 8))
            assert all(torch.equal(a, b) for a, b in zip(one, eight))
    finally:
        model.set_kernels(before)  # the session's shared model
