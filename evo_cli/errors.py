"""Errors that end a command with one clear line (the CLI prints ``str(err)`` and exits non-zero)."""


class EvoError(Exception):
    """Base class: a problem with the user's input, files or options, not a bug."""


class ConfigError(EvoError):
    """A model config that cannot be parsed or describes an unsupported architecture."""


class CheckpointError(EvoError):
    """A checkpoint that is missing, truncated, or does not match its config."""


class InputError(EvoError):
    """Bad sequence, FASTA, VCF or option values."""


class OutputError(EvoError):
    """An output that cannot be written: unwritable location, full disk, read-only file, an input."""
