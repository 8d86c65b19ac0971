"""Upper bounds on sizes the commands and functions take (no torch here: the CLI imports it to parse
its options)."""

from __future__ import annotations

import operator

from evo_cli.errors import InputError

# the largest batch any command or function takes (rows per forward call): far past what memory allows,
# and it keeps the batch arithmetic in machine integers
MAX_BATCH_SIZE = 1 << 20
# generations of one run (prompts x samples): each is kept until the output is written
MAX_GENERATIONS = 1_000_000


def check_batch_size(batch_size: int) -> None:
    """An ``InputError`` unless batch_size is a whole number (numpy integers count, a float or a bool
    does not) with 1 <= batch_size <= MAX_BATCH_SIZE."""
    try:
        ok = not isinstance(batch_size, bool) and 1 <= operator.index(batch_size) <= MAX_BATCH_SIZE
    except TypeError:
        ok = False
    if not ok:
        raise InputError(f"batch size must be from 1 to {MAX_BATCH_SIZE:,}, not {batch_size!r}")
