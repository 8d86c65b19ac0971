"""The list of ``evo`` subcommands; each lives in its own module."""

from .generate import generate
from .info import info
from .models import convert, download, models

COMMANDS = [info, models, download, convert, generate]
