"""``evo score``: the reference scores of both families, chunked long sequences, per-position output."""

import json

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from safetensors import safe_open

import evo_cli
from evo_cli.io.fasta import format_fasta
from evo_cli.model.tokenizer import decode
from evo_cli.kernels import resolve_backend

from .conftest import CONFORMANCE
from .test_cli_score_variants import evo

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CASES = [CONFORMANCE / "evo1" / "c1_8k_style_L512", CONFORMANCE / "evo2" / "tiny_a"]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.parent.name)
def test_defaults_give_the_reference_scores(case, tmp_path):
    """Evo 1 prepends BOS and scores every base, Evo 2 scores bases 2..L: the conformance vectors."""
    with safe_open(str(case / "vectors.safetensors"), "pt") as f:
        ids, want_mean, want_sum = f.get_tensor("input_ids"), f.get_tensor("score_mean"), f.get_tensor("score_sum")
    seqs = [decode(row) for row in ids.tolist()]
    (tmp_path / "in.fa").write_text("".join(format_fasta(f"s{i}", s) for i, s in enumerate(seqs)))
    code, _, err = evo("score", "--fasta", tmp_path / "in.fa", "-m", case, "-o", tmp_path / "out.tsv",
                       "--per-position", tmp_path / "pos.tsv")
    assert code == 0, err
    df = pd.read_csv(tmp_path / "out.tsv", sep="\t")
    assert list(df.columns) == ["id", "length", "mean_ll", "sum_ll"] and list(df.length) == [len(s) for s in seqs]
    assert torch.allclose(torch.tensor(df.mean_ll.values), want_mean.double(), atol=1e-5, rtol=0)
    assert torch.allclose(torch.tensor(df.sum_ll.values), want_sum.double(), atol=0, rtol=1e-5)
    pos = pd.read_csv(tmp_path / "pos.tsv", sep="\t")
    bos = case.parent.name == "evo1"
    first = pos[pos.id == "s0"]
    assert len(first) == len(seqs[0]) - (0 if bos else 1) and first.pos.iloc[0] == (1 if bos else 2)
    assert "".join(first.base) == seqs[0][0 if bos else 1 :]
    assert pos.groupby("id").logprob.sum().values == pytest.approx(df.sum_ll.values, rel=1e-6)



@pytest.mark.parametrize("case", CASES, ids=lambda c: c.parent.name)
def test_each_per_position_value_is_its_bases_log_probability(case, tmp_path):
    """Row (id, pos, base) holds log p(base at pos | the bases before it, after BOS for Evo 1) from one
    plain forward, restated here: a sum alone would not show values shifted by a position, another
    row's values, or lowercase scored as other tokens. Two records of other lengths in one batch,
    the second run in chunks."""
    seqs = {"a": "ACGTTGCAACGGATTACAgattacaTTGA", "b": "GATTACAgg"}
    (tmp_path / "in.fa").write_text("".join(format_fasta(k, v) for k, v in seqs.items()))
    code, _, err = evo("score", "--fasta", tmp_path / "in.fa", "-m", case, "-o", tmp_path / "o.tsv",
                       "--per-position", tmp_path / "p.tsv", "--chunk-size", 8, "--kernels", "torch")
    assert code == 0, err
    pos = pd.read_csv(tmp_path / "p.tsv", sep="\t")
    model = evo_cli.load_model(case, device="cpu", dtype="float32", kernels="torch")
    bos = case.parent.name == "evo1"
    for name, seq in seqs.items():
        ids = ([0] if bos else []) + list(seq.upper().encode())
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids]))[0].double(), -1)
        want = [logp[t - 1, ids[t]].item() for t in range(1, len(ids))]
        rows = pos[pos.id == name]
        first = 1 if bos else 2
        assert rows.pos.tolist() == list(range(first, len(seq) + 1))
        assert "".join(rows.base) == seq.upper()[first - 1 :]
        # float32 logits of scale 10 within 1e-4 (the conformance bound); a misplaced value is off by ~1
        assert max(abs(a - b) for a, b in zip(rows.logprob, want)) < 1e-4, name

def test_chunks_bos_override_and_parquet(tmp_path):
    case = CASES[1]
    seqs = {"long": "ACGTTGCA" * 40 + "acgtn", "short": "GATTACA", "one": "A"}
    (tmp_path / "in.fa").write_text("".join(format_fasta(k, v) for k, v in seqs.items()))
    runs = {}
    for name, extra in {"plain": [], "chunked": ["--chunk-size", 16], "bos": ["--bos"]}.items():
        out = tmp_path / f"{name}.parquet"
        code, _, err = evo("score", "--fasta", tmp_path / "in.fa", "-m", case, "-o", out, *extra)
        assert code == 0, err
        runs[name] = pd.read_parquet(out)
    plain, chunked, bos = runs["plain"], runs["chunked"], runs["bos"]
    assert list(plain.length) == [325, 7, 1]
    assert (chunked.mean_ll - plain.mean_ll).abs().max() < 1e-5 and (chunked.sum_ll - plain.sum_ll).abs().max() < 1e-3
    # one base without BOS has nothing to score; with BOS it is scored
    assert pd.isna(plain.mean_ll.iloc[2]) and plain.sum_ll.iloc[2] == 0 and bos.sum_ll.iloc[2] < 0
    assert (bos.sum_ll != plain.sum_ll).all()
    meta = json.loads(pq.read_schema(tmp_path / "bos.parquet").metadata[b"evo"])
    assert meta["bos"] is True and meta["dtype"] == "float32" and meta["version"] == evo_cli.__version__
    # the full command: defaults included, None defaults resolved
    assert meta["command"].startswith("evo score --fasta ") and " --bos --batch-size 8 --chunk-size 8192 " in meta["command"]
    assert "--format parquet" in meta["command"] and f"--kernels {resolve_backend('auto', 'cpu')}" in meta["command"]


def test_parquet_to_stdout_and_same_outputs_fail_before_writing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.fa").write_text(format_fasta("s", "ACGTACGT"))
    code, out, err = evo("score", "--fasta", "in.fa", "-m", CASES[1], "-o", "-", "--format", "parquet")
    assert code == 2 and out == "" and err == ("evo: error: parquet output needs a file name (-o PATH), not stdout "
                                               "(see `evo score --help`)\n")
    code, out, err = evo("score", "--fasta", "in.fa", "-m", CASES[1], "--per-position", "pos.parquet")
    assert code == 0 and (tmp_path / "pos.parquet").exists() and out.startswith("id\tlength")
    for output, per_position in [("a.tsv", "a.tsv"), ("-", "-"), ("a.tsv", "./sub/../a.tsv")]:
        code, out, err = evo("score", "--fasta", "in.fa", "-m", CASES[1], "-o", output, "--per-position", per_position)
        assert code == 2 and f"--per-position {per_position} and -o {output} are both one output" in err and out == "", err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.fa", "pos.parquet"]


def test_cli_and_api_give_the_same_numbers(tmp_path):
    import evo_cli
    from evo_cli.scoring import iter_sequence_scores

    seqs = {"a": "ACGTTGCAAC", "one": "G", "b": "GATTACAGATTACA"}
    (tmp_path / "in.fa").write_text("".join(format_fasta(k, v) for k, v in seqs.items()))
    code, _, err = evo("score", "--fasta", tmp_path / "in.fa", "-m", CASES[1], "-o", tmp_path / "o.tsv",
                       "--per-position", tmp_path / "p.tsv", "--batch-size", 2)
    assert code == 0, err
    cli = pd.read_csv(tmp_path / "o.tsv", sep="\t")
    model = evo_cli.load_model(CASES[1], device="cpu", dtype="float32")
    means = evo_cli.score_sequences(model, list(seqs.values()), batch_size=2)
    sums = evo_cli.score_sequences(model, list(seqs.values()), reduce="sum", batch_size=2)
    # one base without BOS: nothing scored, mean NaN and sum 0 in both
    assert pd.isna(means[1]) and pd.isna(cli.mean_ll[1]) and sums[1] == 0 == cli.sum_ll[1]
    assert cli.mean_ll[[0, 2]].tolist() == [means[0], means[2]] and cli.sum_ll.tolist() == sums
    scores = list(iter_sequence_scores(model, iter(seqs.values()), batch_size=2))
    assert [(s.length, s.first, s.logprobs.numel()) for s in scores] == [(10, 1, 9), (1, 1, 0), (14, 1, 13)]
    pos = pd.read_csv(tmp_path / "p.tsv", sep="\t")
    assert pos[pos.id == "b"].logprob.tolist() == scores[2].logprobs.tolist()
    assert pos[pos.id == "b"].pos.tolist() == list(range(2, 15)) and "".join(pos[pos.id == "b"].base) == seqs["b"][1:]


def test_resume_writes_the_same_bytes(tmp_path):
    """A run stopped after two chunks leaves its progress; resuming it gives the uninterrupted outputs
    (the bedGraph track too, rebuilt from the kept log-probabilities)."""
    from pathlib import Path

    import evo_cli
    from evo_cli.io.fasta import read_fasta
    from evo_cli.runs import run_settings
    from evo_cli.scoring import run_score

    g = torch.Generator().manual_seed(0)
    fa = tmp_path / "in.fa"
    fa.write_text("".join(format_fasta(f"s{i}", "".join("ACGT"[j] for j in torch.randint(0, 4, (n,), generator=g)))
                          for i, n in enumerate(torch.randint(1, 40, (40,), generator=g).tolist())))
    records = read_fasta(fa)
    model = evo_cli.load_model(CASES[1], device="cpu", dtype="float32")
    settings = run_settings(model, {"fasta": fa})
    kw = dict(per_position=tmp_path / "pos.parquet", bedgraph=tmp_path / "t.bedGraph", batch_size=1, settings=settings,
              metadata={"m": "x"})
    out, partial = tmp_path / "scores.tsv", Path(str(tmp_path / "scores.tsv") + ".evo-partial")
    run_score(model, records, out, **kw)
    expected = out.read_bytes(), (tmp_path / "pos.parquet").read_bytes(), (tmp_path / "t.bedGraph").read_bytes()
    out.unlink()
    (tmp_path / "t.bedGraph").unlink()

    calls = []
    bos = evo_cli.scoring.default_prepend_bos(model)
    # progress counts positions (bases + BOS), one call per forward (batch size 1: per sequence)
    first_two = sum(len(r.sequence) + bos for r in records[:32])

    def stop_in_the_third(n):  # chunks of 16 sequences: 16, 16, 8
        calls.append(n)
        if sum(calls) > first_two:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_score(model, records, out, progress=stop_in_the_third, **kw)
    assert len(calls) == 33 and not out.exists() and partial.read_text().count("\n") == 3
    assert not (tmp_path / "t.bedGraph").exists()
    with pytest.raises(evo_cli.InputError, match="add --resume"):
        run_score(model, records, out, **kw)
    with pytest.raises(evo_cli.InputError, match=r"settings differ \(batch_size: 1 then, 2 now\)"):
        run_score(model, records, out, resume=True, **{**kw, "batch_size": 2})
    done = []
    summary = run_score(model, records, out, resume=True, progress=done.append, **kw)
    chunk = [sum(len(r.sequence) + bos for r in records[i : i + 16]) for i in (0, 16)]
    assert (summary.sequences, summary.resumed, done[:2], len(done)) == (40, 32, chunk, 2 + 8)
    assert sum(done) == sum(len(r.sequence) + bos for r in records)
    got = out.read_bytes(), (tmp_path / "pos.parquet").read_bytes(), (tmp_path / "t.bedGraph").read_bytes()
    assert got == expected and not partial.exists()


@pytest.mark.parametrize("track", ["t.bedGraph", "t.bw"])
def test_the_track_is_written_as_the_records_are_scored(track, tmp_path):
    """The track is not held in memory: a chunk's rows are in its file when the next chunk is scored,
    and hold the per-position log-probabilities."""
    import pyBigWig

    from evo_cli.io.atomic import temporary_prefix
    from evo_cli.io.fasta import FastaRecord
    from evo_cli.scoring import run_score

    model = evo_cli.load_model(CASES[1], device="cpu", dtype="float32")
    # batch size 1: chunks of 16 sequences; the 17th sequence is scored after the first chunk's rows
    records = [FastaRecord(f"s{i}", "", "ACGTTGCA" * 40) for i in range(17)]
    path = tmp_path / track
    written = []

    def progress(_):
        written.append(sum(p.stat().st_size for p in tmp_path.glob(temporary_prefix(path) + "*")))

    run_score(model, records, "-", per_position=tmp_path / "pos.tsv", bedgraph=path, batch_size=1, progress=progress)
    # bytes on disk: before the first chunk's rows (at most a header) and after them (16 x 319 rows)
    assert len(written) == 17 and written[15] == written[0] < 1000 and written[16] > written[0] + 16 * 1000
    pos = pd.read_csv(tmp_path / "pos.tsv", sep="\t")
    if track.endswith(".bw"):
        bw = pyBigWig.open(str(path))
        got = [v for r in records for v in bw.values(r.id, 1, len(r.sequence))]
    else:
        got = pd.read_csv(path, sep="\t", skiprows=1, header=None).iloc[:, 3].tolist()
    assert len(got) == len(pos) == 17 * 319 and max(abs(a - b) for a, b in zip(got, pos.logprob)) < 1e-6


def test_cli_resume_refuses_stdout_and_an_edited_fasta(tmp_path):
    fa = tmp_path / "in.fa"
    fa.write_text(format_fasta("s", "ACGTACGT"))
    for output in ([], ["-o", "-"], ["-o", ""]):  # "" is stdout too: it failed after the model had loaded
        code, _, err = evo("score", "--fasta", fa, "-m", CASES[1], *output, "--resume")
        assert code == 2 and "--resume needs an output file" in err and "scoring" not in err
    out = tmp_path / "o.tsv"
    partial = tmp_path / "o.tsv.evo-partial"
    partial.write_text(json.dumps({"format": "evo-partial/1", "settings": {}}) + "\n")
    code, _, err = evo("score", "--fasta", fa, "-m", CASES[1], "-o", out)
    assert code == 1 and "add --resume" in err and err.count("\n") == 1
    code, _, err = evo("score", "--fasta", fa, "-m", CASES[1], "-o", out, "--resume")
    assert code == 1 and "cannot resume, the settings differ" in err and "fasta_mtime_ns" in err


def test_bases_other_than_acgt_are_warned_about_and_a_huge_batch_is_a_usage_error(tmp_path):
    fa = tmp_path / "in.fa"
    fa.write_text(format_fasta("a", "ACGTNNACGT") + format_fasta("b", "ACGTACGT") + format_fasta("c", "ACRYGT"))
    code, out, err = evo("score", "--fasta", fa, "-m", CASES[1], "-o", "-")
    assert code == 0 and len(out.splitlines()) == 4
    assert "warning: 2 record(s) hold bases other than A, C, G and T (first: 'a', 'N')" in err
    code, _, err = evo("score", "--fasta", fa, "-m", CASES[1], "--batch-size", "99999999999999999999")
    assert code == 2 and "--batch-size" in err and "Traceback" not in err


def test_a_resume_names_only_the_settings_that_differ(tmp_path):
    """A generation records its command's header among its settings: a changed option shows once, under
    its own name inside the header, not as two whole headers."""
    out = tmp_path / "g.fa"
    partial = tmp_path / "g.fa.evo-partial"
    header = {"batch_size": 4, "model": "x", "command": "evo generate " + "-p ACGT " * 40}
    from evo_cli.io.partial import _FORMAT, open_progress

    partial.write_text(json.dumps({"format": _FORMAT, "settings": {"batch_size": 4, "header": header}}) + "\n")
    with pytest.raises(evo_cli.InputError) as e:
        open_progress(out, {"batch_size": 8, "header": {**header, "batch_size": 8}}, True, 0)
    assert "batch_size: 4 then, 8 now, header.batch_size: 4 then, 8 now)" in str(e.value)
    assert "evo generate" not in str(e.value)


def test_one_sequence_as_a_string_and_a_bad_chunk_size(tiny_models):
    """A bare string is one sequence (as in ``evo_cli.embed``), not one sequence per character; a chunk
    size below 1 is an error, not "no chunking"."""
    from evo_cli.scoring import iter_sequence_scores

    model = tiny_models["evo2"]
    seq = "ACGTTGCAAGGT"
    want = evo_cli.score_sequences(model, [seq], reduce="sum")
    assert len(want) == 1 and want[0] < 0
    assert evo_cli.score_sequences(model, seq, reduce="sum") == want
    assert [s.length for s in iter_sequence_scores(model, seq)] == [len(seq)]
    for bad in (0, -3):
        with pytest.raises(evo_cli.InputError, match=f"chunk size must be at least 1, not {bad}"):
            evo_cli.score_sequences(model, [seq], chunk_size=bad)


@pytest.mark.parametrize("args", [["-o", "s.parquet", "--format", "tsv"], ["-o", "s.tsv", "--format", "parquet"],
                                  ["-o", "p.bedGraph", "--format", "tsv", "--bedgraph", "p.bedGraph"],
                                  ["-o", "-", "--per-position", "/dev/stdout"],
                                  ["-o", "/dev/stdout", "--per-position", "-"]])
def test_conflicting_outputs_fail_before_the_model_loads(tmp_path, monkeypatch, args):
    """--format naming another table format than the output's extension (a text file named .parquet),
    and two outputs on one file (stdout as - and as /dev/stdout: two tables run together), are usage
    errors caught before any work."""
    import evo_cli.cli.score

    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.fa").write_text(format_fasta("s", "ACGTACGT"))
    monkeypatch.setattr(evo_cli.cli.score, "load_model_cli", lambda *a, **k: pytest.fail("the model was loaded"))
    code, out, err = evo("score", "--fasta", "in.fa", "-m", CASES[1], *args)
    assert code == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err, err
    assert ("are both" in err) if "--format" not in args or "--bedgraph" in args else ("contradicts" in err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.fa"]
