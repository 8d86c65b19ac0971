"""Errors that end a command with one clear line (the CLI prints ``str(err)`` and exits non-zero)."""

import operator


class EvoError(Exception):
    """Base class: a problem with the user's input, files or options, not a bug."""


class ConfigError(EvoError):
    """A model config that cannot be parsed or describes an unsupported architecture."""


class CheckpointError(EvoError):
    """A checkpoint that is missing, truncated, or does not match its config."""


class InputError(EvoError):
    """Bad sequence, FASTA, VCF or option values."""


def whole_number(value, name: str, minimum: int) -> int:
    """``value`` as an int of at least ``minimum`` (numpy integers count, a bool or a float does not),
    else one ``InputError`` naming the argument."""
    try:
        n = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        n = None
    if n is None or n < minimum:
        raise InputError(f"{name} must be a whole number of at least {minimum}, not {value!r}")
    return n


class OptionError(InputError):
    """Options that cannot go together, or an option value wrong on its face (an output name of no
    known format, ``--format tsv`` for a ``.vcf.gz`` name): the command line's fault, found without
    reading any input. An InputError for API callers; the command line exits 2 for it, as for click's
    own usage errors (1 is for inputs, models and the environment)."""


class OutputError(EvoError):
    """An output that cannot be written: unwritable location, full disk, read-only file, an input."""
