"""Data of the bundled demo model: the E. coli K-12 MG1655 genome (NC_000913.3) with a contiguous
held-out region. Shared by the training script and the Markov baseline."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from evo_cli.io.fasta import read_fasta, reverse_complement

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "genomes"
GENOME = SHARED / "ecoli_K12_MG1655_NC_000913.3.fa.gz"
# 100 kb held out for evaluation (0-based, half-open), with its reverse complement
HELDOUT = (3_000_000, 3_100_000)
_CODES = np.full(256, -1, dtype=np.int64)
_CODES[[ord(c) for c in "ACGT"]] = [0, 1, 2, 3]


def load_genome(path: Path = GENOME) -> str:
    if not path.is_file():
        # one line, not a traceback: the genome is project data, not part of the repository
        raise SystemExit(f"{path}: not found; these scripts need the project's shared/data folder beside "
                         "the checkout (see shared/data/README.md for its provenance)")
    return read_fasta(path)[0].sequence


def training_parts(genome: str) -> list[str]:
    """Both strands of the genome without the held-out region: four contiguous pieces."""
    left, right = genome[: HELDOUT[0]], genome[HELDOUT[1] :]
    return [left, right, reverse_complement(left), reverse_complement(right)]


def encode_acgt(seq: str) -> np.ndarray:
    """A=0, C=1, G=2, T=3, anything else -1."""
    return _CODES[np.frombuffer(seq.encode(), dtype=np.uint8)]
