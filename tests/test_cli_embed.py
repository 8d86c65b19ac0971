"""``evo embed``: outputs read back through the API, metadata, layouts and errors."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from safetensors.torch import load_file

from evo_cli.cli.main import cli, main
from evo_cli.errors import InputError
from evo_cli.io.embeddings import embedding_matrix, read_embeddings, read_metadata
from evo_cli.model.tokenizer import decode
from evo_cli.kernels import resolve_backend

from .conftest import CONFORMANCE, EVO1_CASES, EVO2_CASES, case_id
from .test_embedding import recorded_layer

TINY = CONFORMANCE / "evo2" / "tiny_a"


def run(*args):
    return CliRunner().invoke(cli, ["embed", *map(str, args)])


def run_failing(capsys, *args):
    """Through ``main``, which turns errors into one line on stderr: (exit code, stderr)."""
    with pytest.raises(SystemExit) as exc:
        main(["embed", *map(str, args)])
    return exc.value.code, capsys.readouterr().err


def write_fasta(path, records):
    path.write_text("".join(f">{name}\n{seq}\n" for name, seq in records))
    return path


def case_fasta(tmp_path, case):
    v = load_file(str(case / "vectors.safetensors"))
    return write_fasta(tmp_path / "in.fa", [(f"s{i}", decode(row)) for i, row in enumerate(v["input_ids"])]), v


def per_position(path, seq_id, layer):
    t = read_embeddings(path, layer=layer, ids=[seq_id])
    assert t.column("pos").to_pylist() == list(range(1, len(t) + 1))  # 1-based, as in every evo output
    return embedding_matrix(t)


@pytest.mark.parametrize("case", EVO2_CASES, ids=case_id)
def test_evo2_cases_per_position_and_mean(tmp_path, case):
    fa, v = case_fasta(tmp_path, case)
    layer = recorded_layer(case)
    ref = v["embedding"].numpy()
    res = run("--fasta", fa, "-o", tmp_path / "none.parquet", "--model", case, "--layer", layer, "--pool", "none",
              "--dtype", "float32", "--device", "cpu", "--chunk-size", 256)
    assert res.exit_code == 0, res.output
    for i in range(len(ref)):
        assert np.abs(per_position(tmp_path / "none.parquet", f"s{i}", layer) - ref[i]).max() < 1e-4
    res = run("--fasta", fa, "-o", tmp_path / "mean.parquet", "--model", case, "--layer", layer)
    assert res.exit_code == 0, res.output
    t = read_embeddings(tmp_path / "mean.parquet")
    assert t.column("id").to_pylist() == ["s0", "s1"] and t.column("layer").to_pylist() == [layer] * 2
    assert t.column("length").to_pylist() == [ref.shape[1]] * 2 and t.column("pooling").to_pylist() == ["mean"] * 2
    assert np.abs(embedding_matrix(t) - ref.mean(1)).max() < 1e-5


@pytest.mark.parametrize("case", EVO1_CASES, ids=case_id)
def test_evo1_cases_hidden_states(tmp_path, case):
    fa, v = case_fasta(tmp_path, case)
    hs = v["hidden_states_b0"].numpy()
    names = ["embedding_layer"] + [f"blocks.{i}" for i in range(len(hs) - 1)]
    layer_args = [a for name in names for a in ("--layer", name)]
    res = run("--fasta", fa, "-o", tmp_path / "none.parquet", "--model", case, *layer_args, "--pool", "none")
    assert res.exit_code == 0, res.output
    for k, name in enumerate(names):
        assert np.abs(per_position(tmp_path / "none.parquet", "s0", name) - hs[k]).max() < 1e-4, name
    res = run("--fasta", fa, "-o", tmp_path / "mean.parquet", "--model", case, *layer_args, "--pool", "mean")
    assert res.exit_code == 0, res.output
    for k, name in enumerate(names):
        got = embedding_matrix(read_embeddings(tmp_path / "mean.parquet", layer=name, ids=["s0"]))
        assert np.abs(got[0] - hs[k].mean(0)).max() < 1e-5, name


def test_metadata_default_layer_and_schema(tmp_path):
    fa = write_fasta(tmp_path / "in.fa", [("a", "ACGTTGCA"), ("b", "GGATCCATTAGC")])
    out = tmp_path / "sub" / "out.parquet"
    res = run("--fasta", fa, "-o", out, "--model", TINY, "--pool", "max", "--strand", "both", "--chunk-size", 5)
    assert res.exit_code == 0, res.output
    assert "embedding layer blocks.3.mlp.l3 (the middle block's MLP output" in res.output
    meta = read_metadata(out)
    assert meta["model"] == str(TINY) and meta["dtype"] == "float32" and meta["pooling"] == "max"
    assert meta["strand"] == "both" and meta["chunk_size"] == 5 and meta["layers"] == ["blocks.3.mlp.l3"]
    assert meta["command"].startswith("evo embed --fasta") and "--layer blocks.3.mlp.l3 --pool max --strand both" in meta["command"]
    from evo_cli import __version__

    assert meta["version"] == __version__ and f"--kernels {resolve_backend('auto', 'cpu')}" in meta["command"]
    # one key, as in every Parquet file evo writes
    assert list(pq.read_schema(out).metadata) == [b"evo"]
    t = read_embeddings(out)
    assert str(t.schema.field("embedding").type) == "fixed_size_list<element: float>[64]"
    assert t.column_names == ["id", "length", "layer", "pooling", "embedding"] and t.column("length").to_pylist() == [8, 12]


def test_per_position_rows_and_negative_layer(tmp_path):
    fa = write_fasta(tmp_path / "in.fa", [("a", "ACGTTGCAAC"), ("b", "GGA")])
    out = tmp_path / "out.parquet"
    res = run("--fasta", fa, "-o", out, "--model", TINY, "--layer", "blocks.-1", "--layer", "norm", "--pool", "none",
              "--chunk-size", 4, "-q")
    assert res.exit_code == 0, res.output
    assert res.output == ""
    t = read_embeddings(out)
    assert t.num_rows == 2 * (10 + 3) and t.column_names[-2:] == ["pos", "embedding"]
    assert sorted(set(t.column("layer").to_pylist())) == ["blocks.6", "norm"]
    assert per_position(out, "b", "norm").shape == (3, 64)
    # the name as given on the command line, or a typo, was an empty table without a word
    for layer in ("blocks.-1", "blocks.60"):
        with pytest.raises(InputError, match=f"holds no layer '{layer}', only blocks.6, norm .*blocks.-1 as blocks.N"):
            read_embeddings(out, layer=layer)
    assert read_embeddings(out, layer="norm", ids=["zz"]).num_rows == 0  # a layer it holds: ids filter as asked


@pytest.mark.parametrize("text,match", [
    (">a\nACGT\n>b\n\n", "record 'b' has no sequence"),
    (">a\nACGT\n>a\nACGA\n", "duplicate record id 'a'"),
    (">a\nACGU\n", "record 'a' has 'U' at position 4"),
])
def test_bad_fasta(tmp_path, capsys, text, match):
    fa = tmp_path / "in.fa"
    fa.write_text(text)
    code, err = run_failing(capsys, "--fasta", fa, "-o", tmp_path / "out.parquet", "--model", TINY)
    assert code == 1 and err.startswith("evo: error: ") and match in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == [fa]


def test_missing_fasta_bad_layer_and_stdout(tmp_path, capsys):
    # a missing input is a bad file (exit 1, as in evo score), not a bad option
    code, err = run_failing(capsys, "--fasta", tmp_path / "nope.fa", "-o", tmp_path / "out.parquet", "--model", TINY)
    assert code == 1 and err == f"evo: error: {tmp_path / 'nope.fa'}: no such file\n"
    code, err = run_failing(capsys, "--fasta", tmp_path, "-o", tmp_path / "out.parquet", "--model", TINY)
    assert code == 1 and err == f"evo: error: {tmp_path}: is a directory, expected a FASTA file\n"
    fa = write_fasta(tmp_path / "in.fa", [("a", "ACGT")])
    code, err = run_failing(capsys, "--fasta", fa, "-o", tmp_path / "out.parquet", "--model", TINY, "--layer", "blocks.7")
    assert code == 1 and "unknown layer 'blocks.7'" in err and "blocks.N.mlp.l3" in err and err.count("\n") == 1
    code, err = run_failing(capsys, "--fasta", fa, "-o", "-", "--model", TINY)
    assert code == 2 and "parquet output needs a file name (-o PATH), not stdout" in err
    assert list(tmp_path.iterdir()) == [fa]


def test_failure_midway_leaves_no_output(tmp_path, monkeypatch):
    import evo_cli.embedding

    real = evo_cli.embedding.iter_embeddings

    def failing(*args, **kwargs):
        for i, piece in enumerate(real(*args, **kwargs)):
            if i == 1:
                raise RuntimeError("interrupted")
            yield piece

    monkeypatch.setattr(evo_cli.embedding, "iter_embeddings", failing)
    fa = write_fasta(tmp_path / "in.fa", [("a", "ACGT"), ("b", "ACGA")])
    res = run("--fasta", fa, "-o", tmp_path / "out.parquet", "--model", TINY, "--batch-size", 1)
    assert isinstance(res.exception, RuntimeError) and str(res.exception) == "interrupted"
    assert list(tmp_path.iterdir()) == [fa]


@pytest.mark.parametrize("pool", ["mean", "none"])
def test_resume_after_an_interruption_gives_the_same_file(tmp_path, pool):
    """40 sequences in chunks of 16: stopped inside the third chunk, resumed after the second."""
    import torch

    import evo_cli
    from evo_cli.embedding import run_embed
    from evo_cli.io.embeddings import parts_dir
    from evo_cli.io.fasta import read_fasta

    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 30, (40,), generator=g).tolist()
    fa = write_fasta(tmp_path / "in.fa", [(f"s{i}", "".join("ACGT"[j] for j in torch.randint(0, 4, (n,), generator=g)))
                                          for i, n in enumerate(lengths)])
    records = read_fasta(fa)
    model = evo_cli.load_model(TINY, device="cpu", dtype="float32")
    kw = dict(layers=["blocks.1", "norm"], pool=pool, batch_size=1, settings={"input": "x"}, metadata={"m": "1"})
    out = tmp_path / "out.parquet"
    summary = run_embed(model, records, out, **kw)
    assert (summary.sequences, summary.rows, summary.resumed) == (40, 2 * (sum(lengths) if pool == "none" else 40), 0)
    expected = out.read_bytes()
    out.unlink()

    calls = []

    def stop_in_third_chunk(n):  # one model call per sequence
        calls.append(n)
        if len(calls) == 35:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_embed(model, records, out, progress=stop_in_third_chunk, **kw)
    assert not out.exists() and sorted(p.name for p in parts_dir(out).iterdir()) == ["part-000000.parquet",
                                                                                      "part-000001.parquet"]
    with pytest.raises(evo_cli.InputError, match="add --resume"):
        run_embed(model, records, out, **kw)
    with pytest.raises(evo_cli.InputError, match=r"settings differ \(pool: "):
        run_embed(model, records, out, resume=True, **{**kw, "pool": "max"})
    summary = run_embed(model, records, out, resume=True, **kw)
    assert summary.resumed == 32 and out.read_bytes() == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.fa", "out.parquet"]
    # the parts merged in order hold what the API computes
    ref = evo_cli.embed(model, [r.sequence for r in records], ["norm"], pool=pool, batch_size=1)["norm"]
    got = embedding_matrix(read_embeddings(out, layer="norm"))
    ref = torch.cat(ref) if pool == "none" else ref
    assert np.array_equal(got, ref.numpy()) and read_metadata(out)["m"] == "1"


def test_cli_refuses_to_overwrite_progress_without_resume(tmp_path, capsys):
    fa = write_fasta(tmp_path / "in.fa", [("a", "ACGT")])
    out = tmp_path / "out.parquet"
    (tmp_path / "out.parquet.evo-partial").write_text(json.dumps({"format": "evo-partial/1", "settings": {}}) + "\n")
    code, err = run_failing(capsys, "--fasta", fa, "-o", out, "--model", TINY)
    assert code == 1 and "add --resume" in err and err.count("\n") == 1
    code, err = run_failing(capsys, "--fasta", fa, "-o", out, "--model", TINY, "--resume")
    assert code == 1 and "cannot resume, the settings differ" in err and "fasta_mtime_ns" in err
    res = run("--fasta", fa, "-o", tmp_path / "fresh.parquet", "--model", TINY, "--resume")  # nothing to resume: a new run
    assert res.exit_code == 0 and read_embeddings(tmp_path / "fresh.parquet").num_rows == 1


@pytest.mark.parametrize("layer", ["3", "blocks.3.mlp", "blocks.x", "blocks.1.mlp.l1", "unembed", ""])
def test_a_malformed_layer_fails_before_the_model_loads(tmp_path, capsys, monkeypatch, layer):
    """A layer name of no known form is a bad option (exit 2), found before a model of minutes is loaded;
    a block past the model's end is found once its config is known (exit 1, above)."""
    import evo_cli.cli.embed

    monkeypatch.setattr(evo_cli.cli.embed, "load_model_cli", lambda *a, **k: pytest.fail("the model was loaded"))
    fa = write_fasta(tmp_path / "in.fa", [("a", "ACGT")])
    code, err = run_failing(capsys, "--fasta", fa, "-o", tmp_path / "out.parquet", "--model", TINY, "--layer", "norm",
                            "--layer", layer)
    assert code == 2 and f"unknown layer {layer!r}" in err and "blocks.N.mlp.l3" in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == [fa]


def test_a_run_does_not_wipe_the_parts_another_run_is_writing(tmp_path, capsys):
    """Two runs of one output started together: before the first has recorded a part (so no progress
    file tells), its part being written (a live process's temporary) makes the second stop with one line
    instead of deleting the folder under it."""
    import os

    from evo_cli.io.embeddings import parts_dir

    fa = write_fasta(tmp_path / "in.fa", [("a", "ACGT")])
    out = tmp_path / "out.parquet"
    writing = parts_dir(out) / f".part-000000.parquet.evo-tmp-{os.getppid()}-abcd.parquet"  # a running process's
    writing.parent.mkdir()
    writing.write_bytes(b"PAR1")
    code, err = run_failing(capsys, "--fasta", fa, "-o", out, "--model", TINY, "--resume")
    assert code == 1 and err.splitlines()[-1] == f"evo: error: {parts_dir(out)}: another evo run is writing this " \
                                                 "output now; wait for it to end (or stop it) before running or " \
                                                 "resuming this one"
    assert writing.exists()
    writing.rename(parts_dir(out) / ".part-000000.parquet.evo-tmp-999999999-abcd.parquet")  # its process is gone
    assert run("--fasta", fa, "-o", out, "--model", TINY).exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.fa", "out.parquet"]
