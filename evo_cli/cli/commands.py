"""The list of ``evo`` subcommands; each lives in its own module."""

from .embed import embed
from .info import info

COMMANDS = [info, embed]
