"""Files only (FASTA, VCF, tables, embeddings, tracks); no torch here."""

from evo_cli import _submodule


def __getattr__(name: str):
    return _submodule(__name__, name)  # ``evo_cli.io.embeddings`` after a bare ``import evo_cli``
