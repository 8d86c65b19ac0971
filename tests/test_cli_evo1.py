"""Evo 1 checkpoints through the CLI: BOS-aware context checks, configs that disagree with the weights."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import yaml

from evo_cli.io.fasta import format_fasta, read_fasta

from .conftest import CONFORMANCE
from .test_cli_score_variants import evo

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EVO1 = CONFORMANCE / "evo1" / "c1_8k_style_L512"
EVO2 = CONFORMANCE / "evo2" / "tiny_a"


def _linked(src: Path, dst: Path, skip: set[str]) -> Path:
    """``dst``: a folder of links to ``src``'s files but ``skip`` (written by the caller)."""
    dst.mkdir()
    for f in src.iterdir():
        if f.name not in skip:
            (dst / f.name).symlink_to(f)
    return dst


def test_context_warning_counts_the_bos_token(tmp_path, caplog):
    """Evo 1 scores a record of L bases as L + 1 positions (BOS first): a record of exactly the context
    runs past it, so it must warn; without BOS (and in embed, which prepends none) it fits."""
    from evo_cli.embedding import run_embed
    from evo_cli.model.init import motif_config, random_model
    from evo_cli.scoring import run_score

    model = random_model(motif_config("evo1", hidden_size=16, num_layers=3, head_dim=8, state_size=2,
                                      max_seqlen=32, name="short"), seed=0)
    fa = tmp_path / "in.fa"
    fa.write_text(format_fasta("edge", "ACGT" * 8))
    records = read_fasta(fa)
    with caplog.at_level(logging.WARNING):
        run_score(model, records, tmp_path / "bos.tsv")
    assert "1 record(s) are longer than the model's context of 32 positions with the BOS token" in caplog.text
    assert "(longest: 'edge', 32 bp)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        run_score(model, records, tmp_path / "nobos.tsv", prepend_bos=False)
        run_embed(model, records, tmp_path / "e.parquet")
    assert "context" not in caplog.text
    # one base more: embedded all the same (the numbers of the API's forward), with the warning
    from evo_cli.embedding import default_layer, embed
    from evo_cli.io.embeddings import embedding_matrix, read_embeddings

    fa.write_text(format_fasta("edge", "ACGT" * 8 + "G"))
    with caplog.at_level(logging.WARNING):
        run_embed(model, read_fasta(fa), tmp_path / "long.parquet")
    assert "1 record(s) are longer than the model's context of 32 positions (longest: 'edge', 33 bp)" in caplog.text
    got = embedding_matrix(read_embeddings(tmp_path / "long.parquet"))
    layer = default_layer(model.config)
    want = embed(model, ["ACGT" * 8 + "G"], layer)[layer]
    assert got.shape == (1, 16) and np.abs(got - want.numpy()).max() < 1e-6


@pytest.mark.parametrize("case", [EVO1, EVO2], ids=["evo1", "evo2"])
def test_a_config_with_fewer_layers_than_the_weights_is_an_error(case, tmp_path):
    """Weights for a block past the config's last layer mean the config does not describe this
    checkpoint: running the first blocks only would give wrong numbers with a mere warning."""
    if case == EVO1:
        d = _linked(case, tmp_path / "m", {"config.json", "evo1_inference.yml"})
        config = json.loads((case / "config.json").read_text())
        config.update(num_layers=5, hyena_layer_idxs=[0, 1, 3])  # drops block 5 (hyena)
        (d / "config.json").write_text(json.dumps(config))
    else:
        d = _linked(case, tmp_path / "m", {"config.yml"})
        config = yaml.safe_load((case / "config.yml").read_text())
        config.update(num_layers=6, hcl_layer_idxs=[2])  # drops block 6 (hcl)
        (d / "config.yml").write_text(yaml.safe_dump(config))
    (tmp_path / "in.fa").write_text(format_fasta("s", "ACGTACGT"))
    code, out, err = evo("score", "--fasta", tmp_path / "in.fa", "-m", d, "-o", "-")
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1, err
    assert "block 5" in err if case == EVO1 else "block 6" in err
    assert "num_layers" in err and "Traceback" not in err
