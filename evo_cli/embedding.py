"""Hidden states of named layers, pooled on the fly, for sequences of any length.

Layer names are the references' module names: ``embedding_layer`` (token embeddings),
``blocks.N`` (output of block N, after its residual adds), ``blocks.N.mlp.l3`` (block N's MLP output,
before the residual add; Evo 2's recommended embedding) and ``norm`` (the final norm, which feeds the
unembedding). A negative N counts from the end (``blocks.-1`` is the last block). Forward hooks
capture only the requested modules, and blocks past the deepest one are not run.

Pooling over the positions of a sequence: ``mean``, ``max`` (per channel), ``last`` (the last
position, the only one that has read the whole sequence) or ``none`` (every position). No BOS
token is prepended (the references' embeddings are taken on the bare sequence, for both families).
Hidden states are returned in float32 whatever the model dtype.

Strands: ``forward``, or ``both``, which averages the forward sequence with its reverse complement.
Pooled values are averaged as pooled vectors (for ``last``: the forward and the reverse-complement
last positions, both of which have read the whole sequence). Per position, forward position ``i``
is averaged with reverse-complement position ``L-1-i``, the same base seen from the other side.

Batching and memory: sequences up to ``chunk_size`` tokens are right-padded into batches (a causal
model's padding never reaches earlier positions, and pooling skips the pads); longer ones run alone,
in chunks with a carried state, which is exact and bounds activation memory by the chunk whatever
the length. What still grows with the length is the KV cache of the attention blocks (in the model
dtype) and, for ``pool="none"`` with ``strand="both"`` only, the reverse strand's per-position states
of the requested layers, kept on the host until the forward strand comes by.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import torch

from evo_cli.distributed import Share, checkpoint_rank, current
from evo_cli.errors import InputError, whole_number
from evo_cli.io.embeddings import (DEFAULT_BATCH_SIZE, DEFAULT_CHUNK_SIZE, POOLINGS, check_embedding_output, merge_parts,
                                   open_embedding_writer, parts_dir)
from evo_cli.io.atomic import written_by_another_run
from evo_cli.io.partial import Checkpoint, busy_output, progress_files
from evo_cli.io.fasta import STRANDS, reverse_complement
from evo_cli.limits import check_batch_size
from evo_cli.model.tokenizer import PAD_ID, check_text
from evo_cli.registry import known_model
from evo_cli.runs import progress_metadata, record_chunks
from evo_cli.runtime import free_memory_bytes, non_finite_error
from evo_cli.scoring import warn_beyond_context, warn_lower_case, warn_not_acgt

log = logging.getLogger(__name__)

# pooled results are small: sort this many batches' worth of sequences by length to cut padding
_SORT_WINDOW_BATCHES = 16

_BLOCK_LAYER = re.compile(r"blocks\.(-?[0-9]+)(\.mlp\.l3)?")


@dataclass
class Embedding:
    """One piece of output: ``values`` is [D] (pooled) or [n, D] for positions ``start .. start+n-1``
    (``pool="none"``), float32 on the CPU. ``index`` is the sequence's position in the input."""

    index: int
    layer: str
    values: torch.Tensor
    start: int = 0


def check_layer_name(name: str) -> None:
    """InputError unless ``name`` has the form of a layer name (``resolve_layer`` also checks its block
    index against a model): without a model, so that a typo is reported before one is loaded."""
    if name not in ("embedding_layer", "norm") and not _BLOCK_LAYER.fullmatch(name):
        raise InputError(f"unknown layer {name!r}: valid layers are embedding_layer, blocks.N, blocks.N.mlp.l3 "
                         "(N a block index, negative counting from the end) and norm")


def resolve_layer(config, name: str) -> str:
    """The canonical name of a layer (negative block indices made positive); InputError if unknown."""
    n = config.num_layers
    if name in ("embedding_layer", "norm"):
        return name
    m = _BLOCK_LAYER.fullmatch(name)
    if m and -n <= int(m.group(1)) < n:
        return f"blocks.{int(m.group(1)) % n}{m.group(2) or ''}"
    raise InputError(
        f"unknown layer {name!r}: this model has {n} blocks; valid layers are embedding_layer, blocks.N, "
        f"blocks.N.mlp.l3 (N in 0..{n - 1}, or -{n}..-1 counting from the end) and norm"
    )


def default_layer(config) -> str:
    """The recommended layer of a published or bundled model, else the middle block's MLP output."""
    spec = known_model(config)
    return resolve_layer(config, spec.embedding_layer) if spec else f"blocks.{config.num_layers // 2}.mlp.l3"


def resolve_layers(config, layers: str | Sequence[str] | None) -> list[str]:
    """Canonical names, duplicates removed, in the order given; None or empty means the default."""
    if isinstance(layers, str):
        layers = [layers]
    if not layers:
        return [default_layer(config)]
    return list(dict.fromkeys(resolve_layer(config, name) for name in layers))


def _last_block(layers: list[str]) -> int | None:
    """The deepest block the layers need (None: all of them and the final norm)."""
    if "norm" in layers:
        return None
    blocks = [int(name.split(".")[1]) for name in layers if name.startswith("blocks.")]
    return max(blocks, default=-1)


def _check(pool: str, strand: str, batch_size: int, chunk_size: int) -> None:
    if pool not in POOLINGS:
        raise InputError(f"pool must be one of {', '.join(POOLINGS)}, not {pool!r}")
    if strand not in STRANDS:
        raise InputError(f"strand must be one of {', '.join(STRANDS)}, not {strand!r}")
    check_batch_size(batch_size)
    if isinstance(chunk_size, int) and chunk_size < 1:
        raise InputError(f"chunk size must be at least 1, not {chunk_size}")
    whole_number(chunk_size, "chunk size", 1)  # None (no chunking, in scoring) or a float


class _Pooler:
    """Pools hidden states chunk by chunk: ``update(h [B, n, D], start)``, then ``result()`` [B, D]
    float32 on the CPU. Positions at or past a row's length (right padding) are ignored."""

    def __init__(self, pool: str, lengths: torch.Tensor):
        self.pool = pool
        self.lengths = lengths
        self.acc = None

    def update(self, h, start: int) -> None:
        n = h.shape[1]
        lengths = self.lengths.to(h.device)  # a split model's layers live on different devices
        valid = torch.arange(start, start + n, device=h.device)[None, :] < lengths[:, None]  # [B, n]
        pad = None if bool(valid.all()) else ~valid[..., None]
        if self.pool == "mean":
            # per-chunk sums in float32, the running sum in float64: exact enough at 1M positions
            s = (h if pad is None else h.masked_fill(pad, 0)).sum(1, dtype=torch.float32).cpu().double()
            self.acc = s if self.acc is None else self.acc + s
        elif self.pool == "max":
            m = (h if pad is None else h.masked_fill(pad, float("-inf"))).amax(1).float().cpu()
            self.acc = m if self.acc is None else torch.maximum(self.acc, m)
        else:
            if self.acc is None:
                self.acc = torch.zeros(h.shape[0], h.shape[2])
            last = lengths - 1 - start
            rows = ((last >= 0) & (last < n)).nonzero()[:, 0]
            self.acc[rows.cpu()] = h[rows, last[rows]].float().cpu()

    def result(self) -> torch.Tensor:
        if self.pool == "mean":
            return (self.acc / self.lengths.cpu()[:, None]).float()
        return self.acc


class _Capture:
    """Forward hooks that keep the latest output of each requested module, registered only while the
    model runs (``with capture.hooked():``): a generator suspended between pieces, or dropped half-read,
    leaves the caller's model without hooks (a hooked model neither chunks long inputs nor decodes on the
    fast CPU path, and the hooks would hold on to every output)."""

    def __init__(self, model, layers: list[str]):
        self.model, self.layers = model, layers
        self.outputs: dict[str, torch.Tensor] = {}

    @contextlib.contextmanager
    def hooked(self):
        handles = [self.model.get_submodule(name).register_forward_hook(self._hook(name)) for name in self.layers]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def _hook(self, name):
        def hook(_module, _inputs, output):
            self.outputs[name] = output

        return hook

    def take(self) -> dict[str, torch.Tensor]:
        out, self.outputs = self.outputs, {}
        return out


def _tokens(seq: str) -> torch.Tensor:
    """[L] int64 byte tokens of a sequence (one token per ASCII base)."""
    return torch.frombuffer(bytearray(seq.encode("utf-8")), dtype=torch.uint8).long()


def _groups(lengths: list[int], batch_size: int, chunk_size: int, window: int) -> Iterator[list[int]]:
    """Batches of sequence indices: sequences longer than ``chunk_size`` alone, the others by length
    within windows of ``window`` consecutive sequences; batches come in order of their first index."""
    for w0 in range(0, len(lengths), window):
        idx = range(w0, min(len(lengths), w0 + window))
        short = sorted((i for i in idx if lengths[i] <= chunk_size), key=lambda i: lengths[i])
        groups = [short[j : j + batch_size] for j in range(0, len(short), batch_size)]
        groups += [[i] for i in idx if lengths[i] > chunk_size]
        yield from sorted(groups, key=min)


def iter_embeddings(
    model,
    sequences: str | Iterable[str],
    layers: str | Sequence[str] | None = None,
    pool: str = "mean",
    strand: str = "forward",
    batch_size: int = DEFAULT_BATCH_SIZE,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: Callable[[int], None] | None = None,
) -> Iterator[Embedding]:
    """Embeddings of ``sequences`` as they are computed, in input order of the sequences.

    Pooled: one ``Embedding`` per (sequence, layer), values [D]. ``pool="none"``: the positions of a
    sequence in pieces of at most ``chunk_size`` (values [n, D], ascending ``start``); pieces of
    different layers interleave. ``progress(n)`` is called with the number of tokens run after each
    model call (both strands count). See the module docstring for layers, strands and memory.
    """
    for e in _iter_embeddings(model, sequences, layers, pool, strand, batch_size, chunk_size, progress):
        # the model runs under inference mode (in _iter_embeddings only); a copy made out here is a
        # normal tensor, which the caller may change in place or train a classifier on (an inference
        # tensor refuses both), and holds only its own values, not the padded batch they came from
        e.values = e.values.clone()
        yield e


@torch.inference_mode()
def _iter_embeddings(model, sequences, layers, pool, strand, batch_size, chunk_size, progress) -> Iterator[Embedding]:
    """``iter_embeddings``, with values that may be inference tensors or views of a batch."""
    _check(pool, strand, batch_size, chunk_size)
    layers = resolve_layers(model.config, layers)
    # a string is one sequence, as in ``embed``, not one per base; any other iterable is read once, here
    # (the checks below and the batching by length go over it)
    sequences = [sequences] if isinstance(sequences, str) else list(sequences)
    for i, s in enumerate(sequences):
        if not check_text(s, f"sequence {i}"):
            raise InputError(f"sequence {i} is empty")
    warn_lower_case(sequences)
    lengths = [len(s.encode("utf-8")) for s in sequences]
    window = batch_size * (_SORT_WINDOW_BATCHES if pool != "none" else 1)
    run = _Runner(model, layers, pool, strand, chunk_size, _Capture(model, layers), progress or (lambda n: None))
    pending: dict[int, list[Embedding]] = {}
    next_index = 0
    for group in _groups(lengths, batch_size, chunk_size, window):
        if lengths[group[0]] > chunk_size:
            # a long sequence streams; every earlier sequence has been emitted (batches come in
            # order of their first index)
            yield from run.long(group[0], sequences[group[0]])
            next_index += 1
        else:
            for e in run.short(group, [sequences[i] for i in group]):
                pending.setdefault(e.index, []).append(e)
        while next_index in pending:
            yield from pending.pop(next_index)
            next_index += 1


class _Runner:
    """Runs batches of short sequences and single long ones; yields ``Embedding`` pieces."""

    def __init__(self, model, layers, pool, strand, chunk_size, capture, progress):
        self.model, self.layers, self.pool, self.strand = model, layers, pool, strand
        self.chunk_size, self.capture, self.progress = chunk_size, capture, progress
        self.last_block = _last_block(layers)
        # layer by layer (when the KV caches would not fit) only where every hook fires while the last
        # block runs, chunk by chunk: that block's output and MLP, and the final norm after it
        last = model.config.num_layers - 1 if self.last_block is None else self.last_block
        in_last = {f"blocks.{last}", f"blocks.{last}.mlp.l3"} | ({"norm"} if self.last_block is None else set())
        self.layerwise_ok = set(layers) <= in_last

    def _forward(self, ids):
        with self.capture.hooked():
            self.model(ids.to(self.model.device), return_logits=False, last_block=self.last_block)
        return self.capture.take()

    def _chunks(self, ids) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
        """(start, {layer: [1, n, D]}) per chunk of a [1, L] sequence."""
        free = free_memory_bytes(self.model.device) if self.layerwise_ok else None
        chunks = self.model.forward_long(ids.to(self.model.device), self.chunk_size, free_bytes=free,
                                         return_logits=False, last_block=self.last_block, progress=self.progress)
        while True:
            with self.capture.hooked():  # the model runs inside next()
                chunk = next(chunks, None)
            if chunk is None:
                return
            yield chunk[0], self.capture.take()

    def short(self, indices: list[int], seqs: list[str]) -> Iterator[Embedding]:
        """One right-padded batch (forward rows, then reverse-complement rows with ``both``)."""
        if self.strand == "both":
            seqs = seqs + [reverse_complement(s) for s in seqs]
        toks = [_tokens(s) for s in seqs]
        lengths = torch.tensor([len(t) for t in toks])
        ids = torch.full((len(toks), int(lengths.max())), PAD_ID, dtype=torch.long)
        for row, t in enumerate(toks):
            ids[row, : len(t)] = t
        out = self._forward(ids)
        self.progress(int(lengths.sum()))
        B = len(indices)
        for layer in self.layers:
            h = out[layer]
            if self.pool == "none":
                for row, i in enumerate(indices):
                    n = int(lengths[row])
                    v = h[row, :n].float()
                    if self.strand == "both":
                        v = (v + h[B + row, :n].float().flip(0)) / 2
                    yield Embedding(i, layer, v.cpu())
                continue
            pooler = _Pooler(self.pool, lengths.to(h.device))
            pooler.update(h, 0)
            p = pooler.result()
            if self.strand == "both":
                p = (p[:B] + p[B:]) / 2
            for row, i in enumerate(indices):
                yield Embedding(i, layer, p[row])

    def long(self, index: int, seq: str) -> Iterator[Embedding]:
        """One sequence longer than a chunk, chunk by chunk with a carried state."""
        fwd = _tokens(seq)[None]
        L = fwd.shape[1]
        if self.pool != "none":
            strands = [fwd] + ([_tokens(reverse_complement(seq))[None]] if self.strand == "both" else [])
            pooled = {layer: [] for layer in self.layers}
            for ids in strands:
                poolers = {layer: _Pooler(self.pool, torch.tensor([L], device=self.model.device)) for layer in self.layers}
                for start, out in self._chunks(ids):
                    for layer in self.layers:
                        poolers[layer].update(out[layer], start)
                for layer in self.layers:
                    pooled[layer].append(poolers[layer].result()[0])
            for layer in self.layers:
                yield Embedding(index, layer, sum(pooled[layer]) / len(pooled[layer]))
            return
        rc = None
        if self.strand == "both":
            # the reverse strand runs first and is kept, so that the forward strand can stream in order
            rc = {layer: torch.empty(L, self.model.config.hidden_size) for layer in self.layers}
            for start, out in self._chunks(_tokens(reverse_complement(seq))[None]):
                for layer in self.layers:
                    rc[layer][start : start + out[layer].shape[1]] = out[layer][0].float().cpu()
        for start, out in self._chunks(fwd):
            for layer in self.layers:
                v = out[layer][0].float().cpu()
                if rc is not None:
                    # forward position i pairs with reverse-complement position L-1-i
                    v = (v + rc[layer][L - start - v.shape[0] : L - start].flip(0)) / 2
                yield Embedding(index, layer, v, start)


def embed(
    model,
    sequences: str | Iterable[str],
    layers: str | Sequence[str] | None = None,
    pool: str = "mean",
    strand: str = "forward",
    batch_size: int = DEFAULT_BATCH_SIZE,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> dict[str, torch.Tensor | list[torch.Tensor]]:
    """Embeddings of DNA sequences, keyed by canonical layer name, float32 on the CPU.

    Pooled: ``{layer: [N, D]}``; ``pool="none"``: ``{layer: [Tensor [L_i, D] per sequence]}``. Either
    way ``result[layer][i]`` is sequence i's embedding. ``layers``: a name, a list, or None for the
    model's default (see ``default_layer``). For outputs too large to hold, use ``iter_embeddings``.
    Sequences should be upper-case DNA: the tokenizer is case-sensitive, so a soft-masked (lower-case)
    base is another token, embedded as given with a warning (``evo embed`` upper-cases what it reads).
    """
    # a string is one sequence; any other iterable is read once, here (it is indexed below)
    sequences = [sequences] if isinstance(sequences, str) else list(sequences)
    layers = resolve_layers(model.config, layers)
    pieces: dict[str, list[list[torch.Tensor]]] = {layer: [[] for _ in sequences] for layer in layers}
    for e in iter_embeddings(model, sequences, layers, pool, strand, batch_size, chunk_size):
        pieces[e.layer][e.index].append(e.values)
    if pool == "none":
        return {layer: [p[0] if len(p) == 1 else torch.cat(p) for p in per_seq] for layer, per_seq in pieces.items()}
    return {layer: torch.stack([p[0] for p in per_seq]) if per_seq else torch.empty(0, model.config.hidden_size)
            for layer, per_seq in pieces.items()}


@dataclass
class EmbedSummary:
    sequences: int = 0
    rows: int = 0
    resumed: int = 0  # sequences done by an earlier, interrupted run
    seconds: float = 0.0


def run_embed(
    model,
    records: Sequence,
    output: str | Path,
    layers: str | Sequence[str] | None = None,
    pool: str = "mean",
    strand: str = "forward",
    batch_size: int = DEFAULT_BATCH_SIZE,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    *,
    resume: bool = False,
    settings: dict | None = None,
    metadata: dict | None = None,
    progress: Callable[[int], None] | None = None,
) -> EmbedSummary:
    """Embed ``records`` (objects with ``id`` and ``sequence``) into the Parquet file ``output``
    (layout in ``io/embeddings.py``; ``metadata`` is stored in it).

    The run goes in chunks of ``batch_size * 16`` sequences, each written to its own part file and
    recorded in ``<output>.evo-partial``; ``resume=True`` continues an interrupted run with the same
    ``settings`` (see ``runs.run_settings``) after its last complete part, and writes the same bytes
    as an uninterrupted run. ``progress(n)``: tokens run (both strands count), as in ``iter_embeddings``."""
    t0 = time.perf_counter()
    _check(pool, strand, batch_size, chunk_size)
    check_embedding_output(output)
    layers = resolve_layers(model.config, layers)
    warn_beyond_context(records, model.config.max_seqlen)
    warn_not_acgt(records)
    full = {**(settings or {}), "layers": layers, "pool": pool, "strand": strand, "batch_size": batch_size,
            "chunk_size": chunk_size, "metadata": progress_metadata(metadata),
            "long_records_alone": True}  # parts as record_chunks makes them
    store = Checkpoint(output, full, resume, checkpoint_rank())
    folder = parts_dir(output)
    if store.done == 0:
        if written_by_another_run(folder):  # it has not recorded a part yet: its progress file cannot say so
            store.close()
            raise busy_output(folder)
        shutil.rmtree(folder, ignore_errors=True)  # parts of a run stopped before its first record
    dim, per_position = model.config.hidden_size, pool == "none"
    summary = EmbedSummary()
    # a record run in chunks with a carried state is a part of its own
    chunks = [records[a:b] for a, b in record_chunks([len(r.sequence.encode("utf-8")) for r in records],
                                                     batch_size * _SORT_WINDOW_BATCHES, chunk_size)]
    strands = 2 if strand == "both" else 1
    try:
        with store:
            share = Share(store, progress)
            for k, chunk in enumerate(chunks):
                if k in store:
                    summary.resumed += len(chunk)
                if share.take(k, strands * sum(len(r.sequence) for r in chunk)):
                    part = folder / f"part-{k:06d}.parquet"
                    with open_embedding_writer(part, dim, per_position, metadata) as writer:
                        for e in iter_embeddings(model, [r.sequence for r in chunk], layers, pool, strand, batch_size,
                                                 chunk_size, share.progress):
                            r = chunk[e.index]
                            if not bool(torch.isfinite(e.values).all()):
                                raise non_finite_error(f"sequence {r.id!r}", model.dtype)
                            writer.write(r.id, len(r.sequence), e.layer, pool, e.values.numpy(), e.start)
                    store.append(k, [[part.name, writer.rows]])
            if not share.finish():
                return summary  # another rank writes the output
            parts = []
            for chunk, [[name, rows]] in zip(chunks, store.chunks(), strict=True):
                parts.append(folder / name)
                if not parts[-1].is_file():
                    raise InputError(f"{parts[-1]}: missing, though {store.path} records it; delete both to start over")
                summary.sequences += len(chunk)
                summary.rows += rows
            if parts:
                merge_parts(parts, output, dim, per_position, metadata)
            else:
                with open_embedding_writer(output, dim, per_position, metadata):
                    pass
    except BaseException:
        # nothing to resume: leave nothing behind, unless another run of the output that started at
        # the same moment keeps its progress there (then the parts are its)
        if store.done == 0 and current() is None and not progress_files(output):
            shutil.rmtree(folder, ignore_errors=True)
        raise
    shutil.rmtree(folder, ignore_errors=True)
    summary.seconds = time.perf_counter() - t0
    return summary
