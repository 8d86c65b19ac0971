"""Tables written row by row: TSV (plain, one header row) or Parquet (zstd, run metadata in the
file's key-value metadata). No torch here.

Floats are written losslessly (``repr``, the shortest text that reads back to the same float64);
missing values are empty cells in TSV and nulls in Parquet. Outputs appear only when complete.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterator

from evo_cli.errors import OptionError

from .atomic import (STDOUT, atomic_open_text, atomic_path, check_output_path, check_seekable, is_special,
                     output_name_error)

TABLE_FORMATS = ("tsv", "parquet")
# file name endings of tables (lower case) -> format
# (a TSV name ending in .gz is written gzip-compressed, as a .bedGraph.gz track)
TABLE_EXTENSIONS = {".parquet": "parquet", ".pq": "parquet", ".tsv": "tsv", ".txt": "tsv", ".tab": "tsv",
                    ".tsv.gz": "tsv", ".txt.gz": "tsv", ".tab.gz": "tsv"}
_ROW_GROUP = 1 << 16


def table_format(path: str | Path | None, format: str | None = None) -> str:
    """``tsv`` or ``parquet`` from ``format`` or the extension (stdout is TSV); an OptionError for a
    ``format`` that contradicts the name (a TSV named .parquet fails whatever reads it by its name)."""
    if format:
        if format not in TABLE_FORMATS:
            raise OptionError(f"unknown table format {format!r} (expected {' or '.join(TABLE_FORMATS)})")
        named = None if path in STDOUT else format_from_extension(path, TABLE_EXTENSIONS)
        if named and named != format:
            raise OptionError(f"--format {format} contradicts -o {path} (a {named} name): drop --format or rename "
                              "the output")
        return format
    if path in STDOUT:
        return "tsv"
    fmt = format_from_extension(path, TABLE_EXTENSIONS)
    if fmt:
        return fmt
    if is_special(path):  # /dev/stdout, a FIFO: stdout's format, as the shell's > would get
        return "tsv"
    raise output_name_error(path, f"{path}: cannot tell the table format from the extension (use .tsv, .tsv.gz or .parquet, or --format)")


def format_from_extension(path: str | Path, extensions: dict[str, str]) -> str | None:
    """The format of the first (longest) ending in ``extensions`` that ``path`` has, or None."""
    name = str(path).lower()
    return next((extensions[ext] for ext in sorted(extensions, key=len, reverse=True) if name.endswith(ext)), None)


def check_table_output(path: str | Path | None, format: str | None = None) -> str:
    """``table_format``, refusing Parquet on stdout, a device or a pipe (it needs a seekable file) and a
    path that cannot be a file (``check_output_path``), before any work."""
    fmt = table_format(path, format)
    if fmt == "parquet":
        check_seekable(path, "parquet")
    check_output_path(path)
    return fmt


def _utf8(s: str) -> str:
    """``s`` as text that UTF-8 can encode: bytes outside UTF-8 that a VCF's text carried through as
    surrogates (``surrogateescape``, e.g. a Latin-1 byte in an ID) become U+FFFD, as a FASTA's do when
    read. Without this a run failed when its table was written, after all the scoring."""
    if s.isascii():
        return s
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v) if v == v else "nan"
    return _utf8(str(v))


@contextlib.contextmanager
def table_writer(path: str | Path | None, columns: list[tuple[str, str]], format: str = "tsv",
                 metadata: dict[str, str] | None = None) -> Iterator:
    """Yield ``write(rows)`` for rows of tuples matching ``columns`` = [(name, "str"|"int"|"float")].

    TSV: a header row then one line per row (``-``/None: stdout). Parquet: typed columns, the
    ``metadata`` dict stored under the key ``evo`` as JSON."""
    names = [c for c, _ in columns]
    check_table_output(path, format)
    if format == "tsv":
        with atomic_open_text(path) as fh:  # .tsv.gz: gzip
            fh.write("\t".join(names) + "\n")

            def write_tsv(rows):
                fh.writelines("\t".join(_cell(v) for v in row) + "\n" for row in rows)

            yield write_tsv
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {"str": pa.string(), "int": pa.int64(), "float": pa.float64()}
    schema = pa.schema([(c, types[t]) for c, t in columns])
    if metadata:
        schema = schema.with_metadata({"evo": json.dumps(metadata, sort_keys=True)})
    with atomic_path(path) as tmp, pq.ParquetWriter(str(tmp), schema, compression="zstd") as pw:
        buffer: list[tuple] = []

        def flush():
            if buffer:
                cols = [[None if x is None else _utf8(x) for x in v] if t == "str" else v
                        for (_, t), v in zip(columns, zip(*buffer))]
                pw.write_table(pa.table({c: pa.array(v, type=schema.field(c).type) for c, v in zip(names, cols)},
                                        schema=schema))
                buffer.clear()

        def write_parquet(rows):
            for row in rows:
                buffer.append(row)
                if len(buffer) >= _ROW_GROUP:
                    flush()

        yield write_parquet
        flush()
