"""The bundled evo-demo model, and the README quick-start commands that use it."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

import evo_cli
from evo_cli import registry
from evo_cli.cli.main import cli
from evo_cli.io.fasta import read_fasta
from evo_cli.scoring import score_sequences

from .conftest import DATA

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "data"


@pytest.fixture(scope="module")
def demo():
    return evo_cli.load_model("evo-demo", device="cpu", dtype="float32")


def test_loads_by_name_as_the_card_says(demo):
    assert demo.config.name == "evo-demo" and demo.config.pattern == "SMLASMLS"
    assert sum(p.numel() for p in demo.parameters()) == round(registry.BUNDLED["evo-demo"].params * 1e9) == 1_693_352
    weights = Path(str(registry.BUNDLED["evo-demo"].path)) / "model-00001-of-00001.safetensors"
    assert weights.stat().st_size <= 10_000_000
    assert registry.BUNDLED["evo-demo"].card.is_file()


def test_beats_uniform_on_held_out_ecoli(demo):
    """8 kb of the held-out region (the card's full 100 kb: 1.844 bits/base; Markov-5: 1.933)."""
    recs = read_fasta(DATA / "ecoli_heldout_8kb.fa")
    sums = score_sequences(demo, [r.sequence for r in recs], reduce="sum")
    bits = -sum(sums) / sum(len(r.sequence) - 1 for r in recs) / math.log(2)
    assert bits < 1.9, bits


def test_listed_by_evo_models():
    res = CliRunner().invoke(cli, ["models"])
    assert res.exit_code == 0, res.output
    assert any(line.startswith("evo-demo") and "bundled" in line for line in res.output.splitlines())


def test_quick_start_commands(tmp_path):
    """The four commands of the README's quick start, on the bundled example data, with the numbers the
    README gives."""
    run = CliRunner()
    out = tmp_path / "thrA.tsv"
    res = run.invoke(cli, ["score-variants", "-q", "--model", "evo-demo", "--vcf", str(EXAMPLES / "thrA_snvs.vcf"),
                           "--fasta", str(EXAMPLES / "ecoli_first20kb.fa"), "-o", str(out)])
    assert res.exit_code == 0, res.output
    scores = pd.read_csv(out, sep="\t")
    assert len(scores) == 36 and (scores["status"] == "ok").all()
    # "the five substitutions of the 36 whose delta is below -0.001 (NC_000913.3 341, 345, 347, 348 and 349)";
    # the next lowest is -0.00084
    assert sorted(scores[scores["delta"] < -0.001]["pos"]) == [341, 345, 347, 348, 349]

    gen = tmp_path / "generated.fa"
    res = run.invoke(cli, ["generate", "-q", "--model", "evo-demo", "--prompt", "ATGCGAGTGTTGAAGTTCGGCGGTACATCA",
                           "--n-tokens", "300", "--num-samples", "2", "--seed", "1", "-o", str(gen)])
    assert res.exit_code == 0, res.output
    seqs = [r.sequence for r in read_fasta(gen, alphabet=None)]
    # the demo model has learnt DNA: it emits only A, C, G and T
    assert len(seqs) == 2 and all(len(s) == 300 and set(s) <= set("ACGT") for s in seqs)

    emb = tmp_path / "genes.parquet"
    res = run.invoke(cli, ["embed", "-q", "--model", "evo-demo", "--fasta", str(EXAMPLES / "ecoli_genes.fa"), "-o", str(emb)])
    assert res.exit_code == 0, res.output
    table = pd.read_parquet(emb)
    assert len(table) == 6 and set(table["layer"]) == {"blocks.4.mlp.l3"} and len(table["embedding"][0]) == 128

    ll = tmp_path / "genes_ll.tsv"
    res = run.invoke(cli, ["score", "-q", "--model", "evo-demo", "--fasta", str(EXAMPLES / "ecoli_genes.fa"), "-o", str(ll)])
    assert res.exit_code == 0, res.output
    genes = read_fasta(EXAMPLES / "ecoli_genes.fa")
    table = pd.read_csv(ll, sep="\t")
    assert list(table["id"]) == [g.id for g in genes] and list(table["length"]) == [len(g.sequence) for g in genes]
    # every gene more likely than uniform bases (ln 4 = 1.386 nats per base), as a model of E. coli DNA
    assert (table["mean_ll"] > -math.log(4)).all() and (table["mean_ll"] < -1.1).all(), table
