"""The list of ``evo`` subcommands; each lives in its own module."""

from .info import info
from .score import score, score_variants

COMMANDS = [info, score, score_variants]
