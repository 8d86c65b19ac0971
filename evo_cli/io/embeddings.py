"""Embeddings as Parquet, written and read with pyarrow (no torch here).

Two layouts, chosen by the pooling:

- pooled (``mean``, ``last``, ``max``): one row per (sequence, layer) with columns ``id`` (string),
  ``length`` (int64, bases), ``layer`` (string), ``pooling`` (string) and ``embedding``
  (``fixed_size_list<float32>[D]``).
- per position (``none``): one row per (sequence, layer, position), the same columns plus
  ``pos`` (int64, 1-based, as ``pos`` in every evo output) before ``embedding``. The rows of one (sequence, layer) are in
  ascending position; pieces of different layers of a long sequence interleave, chunk by chunk.
  Rows are streamed to disk in row groups as they are computed, so memory stays bounded at any
  length, and the repeated ``id``/``layer`` values cost next to nothing (dictionary encoding).

``embedding`` is one fixed-size list column: ``table["embedding"].combine_chunks().values.to_numpy()``
reshaped to ``[rows, D]`` is a zero-copy view (``embedding_matrix``). The file's key-value metadata
holds one key, ``evo``: a JSON object recording how the file was made (``runs.output_metadata``:
version, full command, model, dtype, device, kernels, then pooling, strand, chunk size, layers).
The file is written to a temporary name and renamed on success: a failed run leaves nothing.

A run that writes a file (``evo embed``, ``embedding.run_embed``) writes it in parts, one per chunk
of sequences, into ``<output>.evo-partial.d/`` beside the progress file ``<output>.evo-partial``
(``io/partial.py``); ``merge_parts`` then makes the output from them (a lone part is renamed, not
copied), so that an interrupted run can resume after its last complete part.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from evo_cli.errors import InputError

from .atomic import atomic_path, is_special, output_name_error
from .partial import SUFFIX

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

# numpy and pyarrow are imported where used: the CLI reads the constants below at start-up

# the poolings of ``evo embed`` / ``evo_cli.embed``: ``none`` keeps every position (the per-position layout)
POOLINGS = ("mean", "last", "max", "none")
# sequences per batch, and the longest sequence run in one pass (longer ones run in chunks of this)
DEFAULT_BATCH_SIZE = 8
DEFAULT_CHUNK_SIZE = 8192

# buffered rows are written as a row group once they hold this many bytes of embeddings
_ROW_GROUP_BYTES = 64 << 20


def embedding_schema(dim: int, per_position: bool, metadata: dict | None = None) -> pa.Schema:
    import pyarrow as pa

    fields = [("id", pa.string()), ("length", pa.int64()), ("layer", pa.string()), ("pooling", pa.string())]
    if per_position:
        fields.append(("pos", pa.int64()))
    fields.append(("embedding", pa.list_(pa.float32(), dim)))
    return pa.schema(fields, metadata={"evo": json.dumps(metadata or {}, sort_keys=True)})


class EmbeddingWriter:
    """Streams embedding rows into a Parquet file (open it with ``open_embedding_writer``)."""

    def __init__(self, path: str | Path, dim: int, per_position: bool, metadata: dict | None = None):
        import pyarrow.parquet as pq

        self.dim = dim
        self.per_position = per_position
        self.schema = embedding_schema(dim, per_position, metadata)
        self.rows = 0
        self._buffer: list[pa.RecordBatch] = []
        self._buffered_bytes = 0
        self._writer = pq.ParquetWriter(str(path), self.schema, use_dictionary=["id", "layer", "pooling"],
                                        write_statistics=["id", "length", "layer", "pooling", "pos"])

    def write(self, id: str, length: int, layer: str, pooling: str, values: np.ndarray, start: int = 0) -> None:
        """values: [D] (one pooled row) or [n, D] float32 (0-based positions ``start .. start+n-1``,
        written as 1-based ``pos``)."""
        import numpy as np
        import pyarrow as pa

        values = np.ascontiguousarray(values, dtype=np.float32).reshape(-1, self.dim)
        n = values.shape[0]
        if not self.per_position and n != 1:
            raise ValueError(f"a pooled row holds one vector, got {n}")
        cols = [pa.repeat(id, n), pa.repeat(length, n), pa.repeat(layer, n), pa.repeat(pooling, n)]
        if self.per_position:
            cols.append(pa.array(np.arange(start + 1, start + n + 1, dtype=np.int64)))
        cols.append(pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), self.dim))
        self._buffer.append(pa.RecordBatch.from_arrays(cols, schema=self.schema))
        self._buffered_bytes += values.nbytes
        self.rows += n
        if self._buffered_bytes >= _ROW_GROUP_BYTES:
            self.flush()

    def write_table(self, table: pa.Table) -> None:
        """Rows read back from another embeddings file of the same schema."""
        for batch in table.cast(self.schema).to_batches():
            self._buffer.append(batch)
            self._buffered_bytes += batch.nbytes
            self.rows += batch.num_rows
        if self._buffered_bytes >= _ROW_GROUP_BYTES:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa

        if self._buffer:
            self._writer.write_table(pa.Table.from_batches(self._buffer, self.schema).combine_chunks())
        self._buffer, self._buffered_bytes = [], 0

    def close(self) -> None:
        self.flush()
        self._writer.close()


@contextlib.contextmanager
def open_embedding_writer(path: str | Path, dim: int, per_position: bool, metadata: dict | None = None):
    """An ``EmbeddingWriter`` on a temporary file that becomes ``path`` when the block succeeds."""
    with atomic_path(path) as tmp:
        writer = EmbeddingWriter(tmp, dim, per_position, metadata)
        try:
            yield writer
        except BaseException:
            writer._writer.close()
            raise
        writer.close()


EXTENSIONS = (".parquet", ".pq")


def check_embedding_output(path: str | Path) -> None:
    """Embeddings are Parquet: refuse an output named for another format (``e.tsv``), and a device or a
    pipe (the output is made of part files kept beside it, renamed or merged into place)."""
    if not str(path).lower().endswith(EXTENSIONS):
        raise output_name_error(path, f"{path}: embeddings are written as Parquet; name the output .parquet (or .pq)")
    if is_special(path):
        raise InputError(f"{path}: is a device or a pipe; embeddings are written to a regular Parquet file")


def parts_dir(output: str | Path) -> Path:
    """Where a run writing ``output`` keeps its finished parts."""
    return Path(str(output) + SUFFIX + ".d")


def merge_parts(parts: list[Path], output: str | Path, dim: int, per_position: bool, metadata: dict | None = None) -> None:
    """Make ``output`` from the (complete, fsynced) part files, in order: a lone part is renamed to
    ``output``; more are copied row group by row group into a new file, renamed when complete."""
    import pyarrow.parquet as pq

    if len(parts) == 1:
        os.replace(parts[0], output)
        return
    with open_embedding_writer(output, dim, per_position, metadata) as writer:
        for part in parts:
            pf = pq.ParquetFile(str(part))
            for i in range(pf.num_row_groups):
                writer.write_table(pf.read_row_group(i))


def _check(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    return path


def read_embeddings(path: str | Path, layer: str | None = None, ids: list[str] | None = None) -> pa.Table:
    """The rows of an embeddings file, optionally only one layer and some sequence ids (file order).
    A layer that a file with rows does not hold is an InputError naming those it holds (not an empty table)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    filters = []
    if layer is not None:
        filters.append(("layer", "=", layer))
    if ids is not None:
        filters.append(("id", "in", list(ids)))
    try:
        table = pq.read_table(str(_check(path)), filters=filters or None)
        if layer is None or table.num_rows or ids is not None and not ids:
            return table
        held = pc.unique(pq.read_table(str(path), columns=["layer"]).column("layer")).to_pylist()
    except pa.ArrowInvalid as err:
        raise InputError(f"{path}: not a Parquet embeddings file ({err})") from None
    if layer in held or not held:
        return table  # none of ``ids`` has it, or the file has no rows
    raise InputError(f"{path}: holds no layer {layer!r}, only {', '.join(sorted(held))} (layer "
                     "names are stored as evo embed resolved them: blocks.-1 as blocks.N)")


def embedding_matrix(table: pa.Table) -> np.ndarray:
    """The ``embedding`` column as [rows, D] float32 (zero-copy for a single-chunk column)."""
    col = table.column("embedding").combine_chunks()
    return col.flatten().to_numpy().reshape(-1, col.type.list_size)


def read_metadata(path: str | Path) -> dict:
    """The run record (the JSON object under the key ``evo``) of an embeddings file, or of any
    Parquet file evo wrote; {} when there is none."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(str(_check(path))).metadata or {}
    return json.loads(meta[b"evo"]) if b"evo" in meta else {}
