"""The list of ``evo`` subcommands; each lives in its own module."""

from .embed import embed
from .generate import generate
from .info import info
from .models import convert, download, models
from .mutagenize import mutagenize, plot
from .score import score, score_variants
from .selftest import selftest

COMMANDS = [info, models, download, convert, generate, score, score_variants, mutagenize, embed, plot,
            selftest]
