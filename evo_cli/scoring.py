"""Sequence log-likelihoods under the model, variant windows and prefix-shared window scoring.

Scoring follows each family's reference: Evo 1 (evo ``score_sequences``) prepends the EOS token 0
as BOS and scores every base; Evo 2 (evo2 ``score_sequences``) has no BOS and scores bases 2..L
(the first base has no context). Log-probabilities are taken in float32 from float32 logits and
reduced in float64. Sequences longer than ``chunk_size`` run through the model in chunks with a
carried state (``model.forward_chunked``): exact, with activation memory bounded by the chunk.

Variant windows (the Evo 2 BRCA1 method) are scored without BOS for both families: the mean
log-likelihood of bases 2..n of the window. The REF window and the ALT windows of a site share
everything before the variant, so ``score_windows`` runs that common prefix once, forks its state
per window and runs only the suffixes; the result equals scoring every window on its own.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import torch

from evo_cli.distributed import Share, checkpoint_rank
from evo_cli.errors import InputError
from evo_cli import kernels as K
from evo_cli.io.atomic import STDOUT
from evo_cli.io.partial import open_progress
from evo_cli.io.tables import check_table_output, table_writer
from evo_cli.io.tracks import check_track_output, track_writer
from evo_cli.limits import check_batch_size
from evo_cli.model.tokenizer import EOS_ID, PAD_ID, encode
from evo_cli.runs import progress_metadata, record_chunks
from evo_cli.runtime import free_memory_bytes, non_finite_error

log = logging.getLogger(__name__)


def default_prepend_bos(model) -> bool:
    """The reference default: BOS for Evo 1, none for Evo 2."""
    return model.config.family == "evo1"


def _chunk_logprobs(chunks: Iterable[tuple[int, torch.Tensor]], ids: torch.Tensor,
                    first_logits: torch.Tensor | None = None, backend: str = "auto"):
    """log p(ids[:, t] | ...) from the logits of consecutive chunks of ``ids`` [B, L].

    chunks: ``(start, logits [B, n, V])`` covering ``ids`` in order. first_logits [B, V]: the logits
    that predict ``ids[:, 0]`` (a prefix run before), or None (position 0 is not scored, NaN).
    ``backend``: the model's kernels (``K.token_logprobs``).
    Returns (log-probs [B, L] float32, logits of the last position [B, V])."""
    B, L = ids.shape
    out = torch.empty(B, L, dtype=torch.float32, device=ids.device)
    prev = first_logits
    for start, logits in chunks:
        n = logits.shape[1]
        if n == 0:  # an empty sequence (alone in its batch): nothing to score
            continue
        tok = ids[:, start : start + n]
        if prev is None:
            out[:, start] = float("nan")
        else:
            out[:, start] = K.token_logprobs(prev[:, None], tok[:, :1], backend=backend)[:, 0]
        if n > 1:
            out[:, start + 1 : start + n] = K.token_logprobs(logits[:, :-1], tok[:, 1:], backend=backend)
        prev = logits[:, -1]
    return out, prev


# without a chunk size, a CPU run goes on from a state this many tokens per call (see _continue)
_CPU_STEP = 256


def _continue(model, ids: torch.Tensor, state, chunk_size: int | None) -> Iterator[tuple[int, torch.Tensor]]:
    """Run ``ids`` [B, L] on from ``state`` (updated in place), ``chunk_size`` tokens at a time.

    With no ``chunk_size``, on CPU ``_CPU_STEP`` tokens at a time: the same numbers within float32
    rounding (the chunked path), and the element-wise passes over the [B, step, 3D] activations then
    find them in the CPU caches (about 6% less CPU time on the quick start, benchmarks/README.md)."""
    step = chunk_size or (_CPU_STEP if ids.device.type == "cpu" else ids.shape[1])
    for start in range(0, ids.shape[1], step):
        yield start, model(ids[:, start : start + step], state)


def _padded(rows: Sequence[Sequence[int]], device) -> torch.Tensor:
    """Right-padded [B, max len] int64: padding after the real tokens cannot reach them (causal)."""
    batch = torch.full((len(rows), max(len(r) for r in rows)), PAD_ID, dtype=torch.long)
    for j, r in enumerate(rows):
        batch[j, : len(r)] = torch.tensor(r, dtype=torch.long)
    return batch.to(device)


@torch.inference_mode()
def token_logprobs(model, token_ids: list[list[int]], prepend_bos: bool = False, batch_size: int = 8,
                   chunk_size: int | None = None, progress: Callable[[int], None] | None = None) -> list[torch.Tensor]:
    """log p(x_t | x_<t) for every scored position of each sequence.

    token_ids: sequences of token ids. Returns one float32 CPU tensor per sequence, of length
    ``len(ids)`` with ``prepend_bos`` and ``len(ids) - 1`` without. Sequences up to ``chunk_size``
    tokens are batched by length and right-padded; longer ones run alone through
    ``model.forward_long`` (chunked, or layer by layer when the KV caches would not fit in free
    memory; None: never chunk). ``progress(n)``: called with the tokens of every forward call (per
    chunk of a long sequence, so that its progress shows as it goes).
    """
    progress = progress or (lambda n: None)
    rows = [([EOS_ID] if prepend_bos else []) + list(ids) for ids in token_ids]
    out: list[torch.Tensor | None] = [None] * len(rows)
    long = [i for i, r in enumerate(rows) if chunk_size and len(r) > chunk_size]
    for i in long:
        ids = torch.tensor([rows[i]], dtype=torch.long, device=model.device)
        lp, _ = _chunk_logprobs(model.forward_long(ids, chunk_size, free_bytes=free_memory_bytes(model.device),
                                                   progress=progress), ids, backend=model.kernels)
        out[i] = lp[0, 1:].cpu()
    short = sorted((i for i in range(len(rows)) if out[i] is None), key=lambda i: len(rows[i]))
    for start in range(0, len(short), batch_size):
        chunk = short[start : start + batch_size]
        batch = _padded([rows[i] for i in chunk], model.device)
        lp, _ = _chunk_logprobs([(0, model(batch))], batch, backend=model.kernels)
        progress(sum(len(rows[i]) for i in chunk))
        lp = lp.cpu()
        for j, i in enumerate(chunk):
            out[i] = lp[j, 1 : len(rows[i])].clone()
    return out


# sequences are scored in windows of this many batches, sorted by length inside a window (less padding)
_SORT_WINDOW_BATCHES = 16


@dataclass(frozen=True)
class SequenceScore:
    """The log-likelihood of one sequence of ``length`` bases. ``logprobs``: float32 CPU log p of each
    scored base, bases ``first .. length - 1`` (0-based): ``first`` is 0 with BOS and 1 without (the
    first base has no context then). A sequence with no scored base has ``mean`` NaN and ``sum`` 0."""

    length: int
    first: int
    logprobs: torch.Tensor

    @property
    def sum(self) -> float:
        return _reduce(self.logprobs, "sum")

    @property
    def mean(self) -> float:
        return _reduce(self.logprobs, "mean")


def iter_sequence_scores(model, sequences: str | Iterable[str], prepend_bos: bool | None = None, batch_size: int = 8,
                         chunk_size: int | None = None,
                         progress: Callable[[int], None] | None = None) -> Iterator[SequenceScore]:
    """One ``SequenceScore`` per sequence, in input order, as they are computed.

    ``sequences`` (a string is one sequence) is read lazily, ``batch_size * 16`` at a time, batched by
    length within that window. ``prepend_bos`` defaults to the family's reference; ``chunk_size``:
    score sequences longer than this in chunks with a carried state (same numbers, bounded memory;
    None: never chunk). Sequences should be upper-case DNA (the tokenizer is case-sensitive).
    ``progress(n)``: called with the positions (tokens, BOS included) of every forward call."""
    check_batch_size(batch_size)
    # 0 would silently mean "never chunk" below (``chunk_size and ...``)
    if chunk_size is not None and chunk_size < 1:
        raise InputError(f"chunk size must be at least 1, not {chunk_size}")
    bos = default_prepend_bos(model) if prepend_bos is None else prepend_bos
    # a string is one sequence, as in ``embed``: iterating it would score each base as a sequence
    it = iter([sequences] if isinstance(sequences, str) else sequences)
    while window := list(itertools.islice(it, batch_size * _SORT_WINDOW_BATCHES)):
        lps = token_logprobs(model, [encode(s) for s in window], bos, batch_size, chunk_size, progress)
        for seq, lp in zip(window, lps, strict=True):
            yield SequenceScore(len(seq), 0 if bos else 1, lp)


def score_sequences(
    model,
    sequences: str | Iterable[str],
    reduce: str = "mean",
    prepend_bos: bool | None = None,
    batch_size: int = 8,
    chunk_size: int | None = None,
) -> list[float]:
    """Mean (or sum) log-likelihood per sequence (a string is one sequence: a list of one value);
    ``prepend_bos`` defaults to the family's reference.

    Sequences should be upper-case DNA (the tokenizer is case-sensitive). ``chunk_size``: score
    sequences longer than this in chunks with a carried state (one pass's numbers within float32
    rounding, bounded memory). A
    sequence with nothing to score (one base without BOS) has mean NaN and sum 0. See
    ``iter_sequence_scores`` for per-position log-probabilities."""
    if reduce not in ("mean", "sum"):
        raise ValueError(f"reduce must be 'mean' or 'sum', not {reduce!r}")
    return [getattr(s, reduce) for s in iter_sequence_scores(model, sequences, prepend_bos, batch_size, chunk_size)]


# how a window's per-base log-probabilities become its score
REDUCTIONS = ("mean", "sum")


def _reduce(lp: torch.Tensor, reduce: str) -> float:
    total = float(lp.double().sum())
    if reduce == "sum":
        return total
    return total / lp.numel() if lp.numel() else float("nan")


def window_bounds(start: int, window: int, contig_length: int) -> tuple[int, int]:
    """``[start - window // 2, start - window // 2 + window)`` clipped to the contig (0-based)."""
    lo = start - window // 2
    return max(0, lo), min(contig_length, lo + window)


def variant_windows(fetch: Callable[[int, int], str], contig_length: int, start: int, ref: str, alts: Sequence[str],
                    window: int) -> tuple[str, list[str]]:
    """The REF window of a variant and one window per ALT.

    fetch(a, b): reference bases ``[a, b)`` (upper-case, clipped to the contig); start: 0-based
    start of REF. The REF window is ``window_bounds(start, ...)``: a SNV sits at index
    ``min(window // 2, start)``, as in the Evo 2 BRCA1 notebook. An ALT window keeps the REF window's
    left flank, puts ALT in place of REF and continues with the bases after REF, cut or extended
    so that it is as long as the REF window (shorter only where the contig ends first; an allele
    longer than the rest of the window is cut).
    """
    lo, hi = window_bounds(start, window, contig_length)
    ref_window = fetch(lo, hi)
    left, n = ref_window[: start - lo], hi - lo
    alt_windows = []
    for alt in alts:
        need = n - len(left) - len(alt)
        right = fetch(start + len(ref), start + len(ref) + need) if need > 0 else ""
        alt_windows.append((left + alt.upper() + right)[:n])
    return ref_window, alt_windows


def _common_prefix(rows: list[list[int]]) -> int:
    return len(os.path.commonprefix(rows))


@torch.inference_mode()
def score_windows(model, groups: Iterable[Sequence[str]], batch_size: int = 8, share_prefix: bool = True,
                  chunk_size: int | None = None, reduce: str = "mean") -> dict[str, float]:
    """Mean (``reduce="mean"``) or summed (``"sum"``) log-likelihood of bases 2..n of every window in
    ``groups`` (no BOS).

    groups: windows that may share a prefix, e.g. the REF and ALT windows of a site on one strand.
    Identical windows are scored once. With ``share_prefix`` the longest common prefix P of a group
    (at most its shortest window minus one token) runs once, batched with the prefixes of other groups
    of the same P; its state is forked per window (``state.index_select``) and only the suffixes run,
    batched up to ``batch_size`` rows. The prefix's last logits predict each suffix's first token, and
    the prefix's log-probs are added to every window's total: the same numbers as scoring each window
    alone (``share_prefix=False``), within float32 rounding. ``chunk_size`` bounds the tokens per
    forward call for long windows.
    """
    if reduce not in REDUCTIONS:
        raise InputError(f"reduce must be one of {', '.join(REDUCTIONS)}, not {reduce!r}")
    seen: set[str] = set()
    by_prefix: dict[int, list[list[tuple[str, list[int]]]]] = {}
    alone: list[str] = []
    for group in groups:
        windows = [w for w in dict.fromkeys(group) if w not in seen]
        seen.update(windows)
        rows = [encode(w) for w in windows]
        p = min(_common_prefix(rows), min(map(len, rows)) - 1) if len(rows) > 1 else 0
        if share_prefix and p >= 1:
            by_prefix.setdefault(p, []).append(list(zip(windows, rows)))
        else:
            alone.extend(windows)
    lps = token_logprobs(model, [encode(w) for w in alone], False, batch_size, chunk_size)
    scores = {w: _reduce(lp, reduce) for w, lp in zip(alone, lps)}
    for p, bucket in by_prefix.items():
        for i in range(0, len(bucket), batch_size):
            scores.update(_score_shared(model, p, bucket[i : i + batch_size], batch_size, chunk_size, reduce))
    return scores


def _score_shared(model, p: int, groups: list[list[tuple[str, list[int]]]], batch_size: int,
                  chunk_size: int | None, reduce: str = "mean") -> dict[str, float]:
    """Mean or summed (``reduce``) log-likelihood of the ``(window, tokens)`` of ``groups``; a group's rows share their first ``p`` tokens."""
    suffixes = [(j, w, row) for j, group in enumerate(groups) for w, row in group]
    state = model.new_state(len(groups), p + max(len(row) - p for _, _, row in suffixes))
    prefix = torch.tensor([group[0][1][:p] for group in groups], dtype=torch.long, device=model.device)
    lp, last = _chunk_logprobs(_continue(model, prefix, state, chunk_size), prefix, backend=model.kernels)
    prefix_sum = lp[:, 1:].double().sum(1).cpu()  # [groups]
    out = {}
    for k in range(0, len(suffixes), batch_size):
        part = suffixes[k : k + batch_size]
        rows_of = torch.tensor([j for j, _, _ in part], dtype=torch.long)
        ids = _padded([row[p:] for _, _, row in part], model.device)
        lp, _ = _chunk_logprobs(_continue(model, ids, state.index_select(rows_of), chunk_size), ids,
                                first_logits=last[rows_of.to(last.device)], backend=model.kernels)
        lp = lp.double().cpu()
        for r, (j, w, row) in enumerate(part):
            total = float(prefix_sum[j] + lp[r, : len(row) - p].sum())
            out[w] = total if reduce == "sum" else total / (len(row) - 1)
    return out


def warn_beyond_context(records: Sequence, context: int, bos: bool = False) -> None:
    """Warn about records (``id``, ``sequence``) longer than the model's context: the model was not
    trained on such lengths, and the attention layers' cost grows quadratically with length. ``bos``:
    a BOS token goes first, so a record of exactly the context's length already runs one past it."""
    long = [r for r in records if len(r.sequence) + bos > context]
    if long:
        longest = max(long, key=lambda r: len(r.sequence))
        log.warning("warning: %d record(s) are longer than the model's context of %s positions%s (longest: %r, "
                    "%s bp): the model was not trained on such lengths and the run time grows quadratically past "
                    "the context", len(long), f"{context:,}", " with the BOS token" if bos else "", longest.id,
                    f"{len(longest.sequence):,}")


def warn_not_acgt(records: Sequence) -> None:
    """Warn about records (``id``, ``sequence``) holding bases other than A, C, G and T (N, IUPAC codes,
    lower case): each is read as a token of its own, which the models rarely saw in training (an N
    scores about -22 under evo-demo), so they pull a record's scores and embeddings away."""
    odd = [r for r in records if _NOT_ACGT.search(r.sequence)]
    if odd:
        base = _NOT_ACGT.search(odd[0].sequence).group()
        log.warning("warning: %d record(s) hold bases other than A, C, G and T (first: %r, %r): each is read as a "
                    "token of its own, which the models rarely saw in training (it lowers a record's likelihood "
                    "and shifts its embedding)", len(odd), odd[0].id, base)


_NOT_ACGT = re.compile("[^ACGT]")


SCORE_COLUMNS = [("id", "str"), ("length", "int"), ("mean_ll", "float"), ("sum_ll", "float")]
POSITION_COLUMNS = [("id", "str"), ("pos", "int"), ("base", "str"), ("logprob", "float")]


@dataclass
class ScoreSummary:
    sequences: int = 0
    resumed: int = 0  # sequences done by an earlier, interrupted run
    seconds: float = 0.0


def run_score(model, records: Sequence, output: str | Path, *, format: str | None = None,
              per_position: str | Path | None = None, prepend_bos: bool | None = None, batch_size: int = 8,
              chunk_size: int | None = 8192, resume: bool = False, settings: dict | None = None,
              metadata: dict | None = None, progress: Callable[[int], None] | None = None,
              bedgraph: str | Path | None = None) -> ScoreSummary:
    """Score ``records`` (objects with ``id`` and ``sequence``) and write the table ``output``
    (``SCORE_COLUMNS``; ``-``: TSV on stdout) and, with ``per_position``, every scored position's
    log-probability (``POSITION_COLUMNS``); with ``bedgraph``, the same as a genome-browser track
    (``io/tracks.py``: .bedGraph or .bw, one "chromosome" per sequence id).

    Writing to a file, the run keeps its progress in ``<output>.evo-partial``, one chunk of
    ``batch_size * 16`` sequences at a time; ``resume=True`` continues an interrupted run whose
    ``settings`` (identifying its inputs, see ``runs.run_settings``) are the same, and writes the
    same bytes as an uninterrupted one. ``progress(n)``: called with the positions run (tokens, BOS
    included: ``len(sequence) + bos`` per sequence), chunk by chunk for long sequences."""
    t0 = time.perf_counter()
    fmt = check_table_output(output, format)
    pos_fmt = check_table_output(per_position) if per_position else None
    if resume and output in STDOUT:
        raise InputError("resume needs an output file (progress is kept beside it)")
    bos = default_prepend_bos(model) if prepend_bos is None else prepend_bos
    warn_beyond_context(records, model.config.max_seqlen, bos)
    warn_not_acgt(records)
    keep = per_position is not None or bedgraph is not None  # per-position log-probs are kept
    if bedgraph is not None:
        check_track_output(bedgraph)
    full = {**(settings or {}), "bos": bos, "batch_size": batch_size, "chunk_size": chunk_size, "format": fmt,
            "per_position": per_position is not None, "logprobs": keep, "metadata": progress_metadata(metadata),
            "long_records_alone": True}  # chunks of progress as record_chunks makes them
    store = open_progress(output, full, resume, checkpoint_rank())
    summary = ScoreSummary()
    # a record run in chunks with a carried state is a chunk of progress of its own
    chunks = [records[a:b] for a, b in record_chunks([len(r.sequence) + bos for r in records],
                                                     batch_size * _SORT_WINDOW_BATCHES, chunk_size)]

    def positions(chunk) -> int:
        return sum(len(r.sequence) + bos for r in chunk)

    def compute(k: int, chunk) -> list:
        """Score chunk ``k`` and keep its results; its positions count as each forward call ends, so
        that a long record shows its progress."""
        scores = iter_sequence_scores(model, (r.sequence for r in chunk), bos, batch_size, chunk_size, share.progress)
        stored = [[s.length, s.first, s.mean, s.sum, s.logprobs.tolist() if keep else None] for s in scores]
        for rec, (_, _, _, total, _) in zip(chunk, stored):
            if not math.isfinite(total):  # a sequence with no scored base has sum 0
                raise non_finite_error(f"sequence {rec.id!r}", model.dtype)
        if store is not None:
            store.append(k, stored)
        return stored

    with store or contextlib.nullcontext():  # left last: removed only once the outputs are in place
        share = Share(store, progress)
        if store is not None:
            for k, chunk in enumerate(chunks):
                if k in store:
                    summary.resumed += len(chunk)
                if share.take(k, positions(chunk)):
                    compute(k, chunk)
        if not share.finish():
            return summary  # another rank writes the outputs
        # to stdout, each chunk is written as soon as it is scored; to a file, the outputs (the track too:
        # a resumed run rebuilds it) are written from the kept chunks, one at a time
        results = store.chunks() if store is not None else (compute(k, chunk) for k, chunk in enumerate(chunks))
        with contextlib.ExitStack() as stack:
            write = stack.enter_context(table_writer(output, SCORE_COLUMNS, fmt, metadata))
            write_pos = (stack.enter_context(table_writer(per_position, POSITION_COLUMNS, pos_fmt, metadata))
                         if per_position else None)
            write_bg = None
            if bedgraph is not None:
                write_bg = stack.enter_context(track_writer(
                    bedgraph, {r.id: len(r.sequence) for r in records}, name="evo log-probability",
                    description=f"{(metadata or {}).get('model', 'evo')} per-base log-probability"))
            for chunk, stored in zip(chunks, results, strict=True):
                for rec, (length, first, mean, total, logprobs) in zip(chunk, stored, strict=True):
                    if length != len(rec.sequence):
                        raise InputError(f"{store.path}: sequence {rec.id!r} has another length than when the run "
                                         "started; delete the file to start over")
                    write([(rec.id, length, mean, total)])
                    if write_pos:
                        write_pos((rec.id, first + j + 1, rec.sequence[first + j], v) for j, v in enumerate(logprobs))
                    if write_bg:
                        write_bg((rec.id, first + j, v) for j, v in enumerate(logprobs))
                summary.sequences += len(chunk)
    summary.seconds = time.perf_counter() - t0
    return summary
