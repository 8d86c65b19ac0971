"""Non-finite numbers: weights checked once at load (naming the tensor), model outputs checked per batch
(naming the record), and no advice to use float32 to a run that already is float32."""

from __future__ import annotations

import shutil

import pytest
import torch

import evo_cli
from evo_cli.embedding import run_embed
from evo_cli.errors import CheckpointError, EvoError
from evo_cli.generation import generate
from evo_cli.io.fasta import FastaRecord
from evo_cli.model.init import motif_config, random_model
from evo_cli.mutagenesis import run_mutagenize
from evo_cli.scoring import run_score
from evo_cli.variants import run_score_variants

from .conftest import CONFORMANCE

TINY_A = CONFORMANCE / "evo2" / "tiny_a"
EXAMPLES = CONFORMANCE.parents[2] / "examples" / "data"


@pytest.mark.parametrize("key, index, value", [
    ("embedding_layer.weight", (65,), float("nan")),  # the row of 'A'
    ("blocks.3.pre_norm.scale", (0,), float("inf")),
    ("blocks.2.filter.log_poles", (1, 0), float("-inf")),
])
def test_non_finite_weight_is_refused_at_load(tmp_path, key, index, value):
    d = shutil.copytree(TINY_A, tmp_path / "c")
    sd = torch.load(d / "weights.pt", weights_only=True)
    sd[key][index] = value
    torch.save(sd, d / "weights.pt")
    with pytest.raises(CheckpointError) as e:
        evo_cli.load_model(d, device="cpu")
    msg = str(e.value)
    assert msg.startswith(f"{d / 'weights.pt'}: tensor {key!r} holds a non-finite value ({value} at index ")
    assert msg.endswith("the checkpoint is damaged") and "\n" not in msg


@pytest.fixture
def nan_model(one_torch_thread):
    """A tiny float32 model with finite weights that computes NaN for any sequence with an 'A' (an overflow
    on some inputs only)."""
    model = random_model(motif_config("evo2", hidden_size=32, num_layers=7, head_dim=8, state_size=4, name="nan"), seed=1)
    model.embedding_layer.register_forward_hook(
        lambda module, inputs, out: out.masked_fill((inputs[0] == ord("A"))[..., None], float("nan")))
    return model


FLOAT32_HINT = "already float32: the checkpoint's weights are extreme or damaged"


def test_score_names_the_record(nan_model, tmp_path):
    records = [FastaRecord("clean", "", "CCGTCGTG"), FastaRecord("bad", "", "CCGTAGTG")]
    with pytest.raises(EvoError, match=rf"^the model computed NaN or infinite values for sequence 'bad' \({FLOAT32_HINT}\)$"):
        run_score(nan_model, records, tmp_path / "s.tsv", batch_size=1)
    assert not (tmp_path / "s.tsv").exists()
    # a sequence of one base has no scored position: its NaN mean is not an error
    run_score(nan_model, [FastaRecord("one", "", "C")], tmp_path / "one.tsv")
    assert (tmp_path / "one.tsv").read_text().splitlines()[1].split("\t")[:2] == ["one", "1"]


def test_embed_names_the_record(nan_model, tmp_path):
    records = [FastaRecord("clean", "", "CCGTCGTG"), FastaRecord("bad", "", "CCGTAGTG")]
    with pytest.raises(EvoError, match=r"^the model computed NaN or infinite values for sequence 'bad' \(already"):
        run_embed(nan_model, records, tmp_path / "e.parquet", layers="blocks.2")
    assert not (tmp_path / "e.parquet").exists()


def test_score_variants_names_the_record(nan_model, tmp_path):
    with pytest.raises(EvoError, match=r"^the model computed NaN or infinite values for record NC_000913.3:340 \(already"):
        run_score_variants(nan_model, EXAMPLES / "thrA_snvs.vcf", EXAMPLES / "ecoli_first20kb.fa", tmp_path / "o.vcf",
                           window=16, batch_size=4)
    assert not (tmp_path / "o.vcf").exists()


def test_mutagenize_names_the_position(nan_model, tmp_path):
    from evo_cli.io.vcf import parse_region

    fasta = tmp_path / "r.fa"
    fasta.write_text(">c\nCCGTCGTGCC\n")
    # mutating C at 4 to A puts an A in that ALT window
    with pytest.raises(EvoError, match=r"^the model computed NaN or infinite values for position c:4 \(already"):
        run_mutagenize(nan_model, fasta, tmp_path / "m.tsv", regions=[parse_region("c:4-5")], window=6)
    assert not (tmp_path / "m.tsv").exists()


def test_generate_hint_depends_on_dtype(nan_model):
    with pytest.raises(EvoError) as e:
        generate(nan_model, {"p": "CCGTAG"}, 4, seed=1)
    assert str(e.value) == f"the model computed NaN or infinite values for prompt 'p' while sampling ({FLOAT32_HINT})"
    with pytest.raises(EvoError, match=r"\(numerical overflow in bfloat16: try --dtype float32\)$"):
        generate(nan_model.to(torch.bfloat16), {"p": "CCGTAG"}, 4, seed=1)


@pytest.mark.parametrize("index", [(2, 5), (0, 17)])
def test_non_finite_weight_is_named_at_its_index_in_the_file(tmp_path, index):
    """A native checkpoint stores nn.Linear weights transposed (``<name>.T``): the index given is the one
    in the file. Before, it was the index in the model's layout (here [5, 2] for [2, 5])."""
    from safetensors.torch import load_file, save_file

    native = evo_cli.convert_checkpoint(TINY_A, tmp_path / "n")
    shard = next(native.glob("model-*.safetensors"))
    sd = load_file(str(shard))
    key = "blocks.0.mlp.l1.weight.T"
    sd[key][index] = float("nan")
    save_file(sd, str(shard))
    with pytest.raises(CheckpointError) as e:
        evo_cli.load_model(native, device="cpu")
    assert str(e.value) == (f"{shard}: tensor {key!r} holds a non-finite value (nan at index {list(index)}, as "
                            f"{str(sd[key].dtype).removeprefix('torch.')}); the checkpoint is damaged")


def test_a_weight_the_cast_makes_infinite_is_not_called_damaged(tmp_path):
    """float16 (accepted by load_model) overflows past 65504: the file is fine, the dtype is not."""
    d = shutil.copytree(TINY_A, tmp_path / "c")
    sd = torch.load(d / "weights.pt", weights_only=True)
    sd["blocks.3.pre_norm.scale"][1] = 2.0**20
    torch.save(sd, d / "weights.pt")
    assert evo_cli.load_model(d, device="cpu", dtype=torch.float32).blocks[3].pre_norm.scale[1] == 2.0**20
    with pytest.raises(CheckpointError, match=r"^\S+weights.pt: tensor 'blocks.3.pre_norm.scale' holds a value too "
                                              r"large for float16 \(it becomes inf\); load the model in float32 or bfloat16$"):
        evo_cli.load_model(d, device="cpu", dtype=torch.float16)
