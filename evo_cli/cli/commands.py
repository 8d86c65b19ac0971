"""The list of ``evo`` subcommands; each lives in its own module."""

from .info import info

COMMANDS = [info]
