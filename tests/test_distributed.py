"""Data parallel runs under torchrun (``distributed.py``) on CPU with gloo: 2 and 3 ranks give the
single-process bytes for score-variants, score, embed, generate and mutagenize (also with each rank's model
split over cpu,cpu); uneven work keeps every rank busy; a run with a killed rank resumes with 1 and
with 2 ranks to the same bytes.

Each launch runs several commands (``dist_worker.py``); the 2- and 3-rank launches run side by side."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from evo_cli.cli.main import main
from evo_cli.io.partial import progress_files

from .conftest import CONFORMANCE, DATA

TINY = CONFORMANCE / "evo2" / "tiny_a"
BRCA1 = DATA / "brca1"
FA = BRCA1 / "GRCh37_chr17_41100001-41300000.fa"
SNVS = BRCA1 / "brca1_sge_first48.region.vcf"
WORKER = Path(__file__).parent / "dist_worker.py"
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def evo(*args, threads: int, cwd: Path) -> str:
    """Run ``evo ARGS`` in this process, in ``cwd``, with ``threads`` torch threads (a rank's share of
    the cores: CPU results depend on the thread count); returns stderr."""
    n, here = torch.get_num_threads(), os.getcwd()
    torch.set_num_threads(threads)
    err = io.StringIO()
    try:
        os.chdir(cwd)
        with contextlib.redirect_stderr(err):
            main([str(a) for a in args])
    finally:
        torch.set_num_threads(n)
        os.chdir(here)
    return err.getvalue()


def launch(ranks: int, steps: list[dict], cwd: Path) -> subprocess.Popen:
    """torchrun ``ranks`` ranks in ``cwd`` running ``steps`` (``dist_worker.py``); after a failure,
    torchrun restarts them once."""
    cwd.mkdir(exist_ok=True)
    plan = cwd / "plan.json"
    plan.write_text(json.dumps([{**s, "argv": [str(a) for a in s["argv"]]} for s in steps]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
           "--monitor-interval=0.1", "--max-restarts=1", str(WORKER), str(plan)]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out + err


def commands(inputs: Path) -> list[list]:
    """The four commands; outputs named relative to the working directory (the commands are
    recorded in some outputs)."""
    f = inputs
    return [
        ["score-variants", "-m", TINY, "--vcf", SNVS, "--fasta", FA, "--window", 64, "--batch-size", 4,
         "-o", "variants.tsv"],
        ["score", "-m", TINY, "--fasta", f / "seqs.fa", "--batch-size", 1, "-o", "scores.tsv",
         "--per-position", "positions.tsv"],
        ["embed", "-m", TINY, "--fasta", f / "seqs.fa", "--batch-size", 1, "--layer", "blocks.3",
         "-o", "embed.parquet"],
        ["generate", "-m", TINY, "--prompts", f / "prompts.fa", "--num-samples", 2, "--batch-size", 2, "-n", 6,
         "--seed", 3, "-o", "gen.jsonl"],
    ]


OUTPUTS = ["variants.tsv", "scores.tsv", "positions.tsv", "embed.parquet", "gen.jsonl"]
# 5 chunks of 2 positions, written by rank 0 alone
MUTAGENIZE = ["mutagenize", "-m", TINY, "--fasta", FA, "--region", "GRCh37_chr17_41100001_41300000:97700-97709",
              "--window", 32, "--batch-size", 2, "-o", "scan.vcf.gz", "--bedgraph", "scan.bedGraph"]
KILLED = ["score-variants", "-m", TINY, "--vcf", SNVS, "--fasta", FA, "--window", 64, "--batch-size", 2,
          "-o", "killed.tsv"]


def _seqs(path: Path, lengths: list[int], seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    path.write_text("".join(f">s{i}\n{''.join('ACGT'[j] for j in torch.randint(0, 4, (n,), generator=g).tolist())}\n"
                            for i, n in enumerate(lengths)))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Launch 2 ranks (the four commands, an uneven score run, a run stopped by a killed rank, which
    torchrun restarts and the 2 new ranks resume) and 3 ranks (the four commands) side by side."""
    f = tmp_path_factory.mktemp("dist")
    _seqs(f / "seqs.fa", [5 + 7 * i % 30 for i in range(40)], 0)  # 3 chunks of 16 sequences
    _seqs(f / "prompts.fa", [3, 9, 4, 12, 5], 1)  # 10 rows in 5 batches
    _seqs(f / "uneven.fa", [12000] + [8] * 127, 2)  # 9 chunks: the long sequence alone, then 8 of short ones
    two = launch(2, [{"argv": c} for c in commands(f)]
                 + [{"argv": ["-v", "score", "-m", TINY, "--fasta", f / "uneven.fa", "--batch-size", 1, "--chunk-size",
                              500, "-o", "uneven.tsv"]},
                    {"argv": KILLED + ["--resume"], "stop_after": 2, "copy_to": str(f / "k1")}], f / "2")
    no_seed = commands(f)[3][:-4] + ["-o", "gen-noseed.jsonl"]  # rank 0 draws the seed for all
    split = commands(f)[0][:-1] + ["variants-split.tsv", "--device", "cpu,cpu"]  # each rank's model in 2 parts
    three = launch(3, [{"argv": c} for c in commands(f) + [no_seed, split, MUTAGENIZE]], f / "3")
    return f, {"two": finish(two), "three": finish(three)}


@pytest.mark.parametrize("ranks", [2, 3])
def test_ranks_write_the_single_process_bytes(runs, ranks):
    folder, results = runs
    code, log = results["two" if ranks == 2 else "three"]
    assert code == 0, log
    ref = folder / f"ref{ranks}"
    ref.mkdir()
    for argv in commands(folder):
        evo("-q", *argv, threads=max(1, CORES // ranks), cwd=ref)
    differ = [name for name in OUTPUTS if (ref / name).read_bytes() != (folder / str(ranks) / name).read_bytes()]
    assert differ == []
    # rank 0 alone reports (one line per score-variants run not resumed), its progress counts every rank's work
    summaries = [line for line in log.splitlines() if "evo: scored 48 of 48 variants" in line]
    assert len([line for line in summaries if "resuming" not in line]) == {2: 1, 3: 2}[ranks]
    assert re.search(r"scoring .* 48/48 ", log)
    if ranks == 3:
        assert (folder / "3" / "variants-split.tsv").read_bytes() == (ref / "variants.tsv").read_bytes()
        got = (folder / "3" / "gen-noseed.jsonl").read_bytes()
        seeds = {json.loads(line)["seed"] for line in got.splitlines()}
        assert len(seeds) == 1
        argv = commands(folder)[3][:-3] + [seeds.pop(), "-o", "gen-noseed.jsonl"]
        evo("-q", *argv, threads=max(1, CORES // ranks), cwd=ref)
        assert (ref / "gen-noseed.jsonl").read_bytes() == got
        evo("-q", *MUTAGENIZE, threads=max(1, CORES // ranks), cwd=ref)
        for name in ("scan.vcf.gz", "scan.vcf.gz.tbi", "scan.bedGraph"):
            assert (folder / "3" / name).read_bytes() == (ref / name).read_bytes(), name
    assert not [p for p in (folder / str(ranks)).iterdir() if ".evo-partial" in p.name and "killed" not in p.name]


def test_uneven_work_keeps_every_rank_busy(runs):
    """One chunk holds a 12,000-base sequence (alone: it runs in chunks), eight hold short ones: while
    one rank runs the long chunk, the other takes the short ones."""
    _, results = runs
    _, log = results["two"]
    chunks = {int(r): json.loads(c) for r, c in re.findall(r"evo: rank (\d): \d+ chunks (\[[\d, ]*\])", log)}
    assert sorted(chunks) == [0, 1] and sorted(chunks[0] + chunks[1]) == list(range(9)), log
    long, short = (0, 1) if 0 in chunks[0] else (1, 0)
    # a fixed split would give each rank 4 or 5; the long chunk's rank takes at most one short one
    assert chunks[long][0] == 0 and len(chunks[long]) <= 2 and len(chunks[short]) >= 7


def test_a_killed_rank_resumes_with_one_and_with_two_ranks(runs):
    """Rank 1 killed once each rank had stored 2 chunks; torchrun restarted the job (2 ranks, with
    ``--resume``), and a copy of the progress taken then is resumed here by one process."""
    folder, results = runs
    code, log = results["two"]
    assert code == 0 and "failed (exitcode: -9) local_rank: 1" in log, log
    # a settings line, then one line per chunk
    assert {p.name: p.read_text().count("\n") for p in progress_files(folder / "k1" / "killed.tsv")} == \
        {"killed.tsv.evo-partial": 3, "killed.tsv.evo-partial.1": 3}
    ref = folder / "kref"
    ref.mkdir()
    evo("-q", *KILLED, threads=max(1, CORES // 2), cwd=ref)
    assert (folder / "2" / "killed.tsv").read_bytes() == (ref / "killed.tsv").read_bytes()
    stderr = evo(*KILLED, "--resume", threads=max(1, CORES // 2), cwd=folder / "k1")
    assert "48 of 48 variants" in stderr and "done before resuming" in stderr
    assert (folder / "k1" / "killed.tsv").read_bytes() == (ref / "killed.tsv").read_bytes()
    assert progress_files(folder / "k1" / "killed.tsv") == progress_files(folder / "2" / "killed.tsv") == []


@pytest.mark.parametrize("name", ["o.tsv.evo-partial", "o.tsv.evo-partial.1"])
def test_a_folder_where_a_progress_file_goes_is_one_line_before_the_run(tmp_path, name):
    """A folder at a progress file's path (rank 0's or another rank's) ended the run, after the model had
    loaded, with "IsADirectoryError ... (run with -v for the traceback)"; check_fresh, which every command
    calls before it loads the model, now refuses it, resuming or not."""
    from evo_cli.errors import InputError
    from evo_cli.io.partial import check_fresh

    (tmp_path / name).mkdir()
    for resume in (False, True):
        with pytest.raises(InputError, match=rf"{name.replace('.', '[.]')} exists and is not a file"):
            check_fresh(tmp_path / "o.tsv", resume)


def test_progress_files_of_several_ranks_resume_in_chunk_order(tmp_path):
    """Without torchrun: chunks stored out of order by two ranks are read back in order by any rank."""
    from evo_cli.errors import InputError
    from evo_cli.io.partial import Checkpoint, check_fresh, stored_settings

    out = tmp_path / "o.tsv"
    (tmp_path / "o.tsv.evo-partial.d").mkdir()  # embed's parts folder is not a progress file
    with pytest.raises(KeyboardInterrupt), Checkpoint(out, {"a": 1}, False, rank=1) as one:
        one.append(2, [[2.5]])
        one.append(0, [[0.5]])
        raise KeyboardInterrupt
    assert [p.name for p in progress_files(out)] == ["o.tsv.evo-partial.1"] and stored_settings(out) == {"a": 1}
    with pytest.raises(InputError, match=r"o\.tsv\.evo-partial\.1 exists: .* add --resume"):
        check_fresh(out, False)
    with pytest.raises(InputError, match=r"settings differ \(a: 1 then, 2 now\)"):
        Checkpoint(out, {"a": 2}, True)
    with Checkpoint(out, {"a": 1}, True) as zero:
        assert (zero.done, 0 in zero, 1 in zero) == (2, True, False)
        assert list(zero.chunks()) == [[[0.5]]]  # up to the first chunk not stored
        zero.append(1, [[1.5]])
        with pytest.raises(ValueError, match="stored already"):
            zero.append(2, [[9.0]])
        assert list(zero.chunks()) == [[[0.5]], [[1.5]], [[2.5]]]
    assert progress_files(out) == [] and (tmp_path / "o.tsv.evo-partial.d").is_dir()
    # a chunk in two files (copied by hand, say) is refused
    with pytest.raises(KeyboardInterrupt), Checkpoint(out, {"a": 1}, True) as c:
        c.append(0, [[0.5]])
        raise KeyboardInterrupt
    shutil.copy(tmp_path / "o.tsv.evo-partial", tmp_path / "o.tsv.evo-partial.3")
    with pytest.raises(InputError, match=r"evo-partial\.3:2: chunk 0 stored twice"):
        Checkpoint(out, {"a": 1}, True)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_a_failed_rank_on_another_node_stops_the_others(tmp_path):
    """Two nodes (two torchrun agents, one rank each; torchrun stops the ranks of its own node only):
    rank 1 meets a bad input before the run starts (``open``) or as it asks for its first chunk
    (``take``), or rank 0 as it draws the seed the other waits for (``seed``), and exits. The other
    rank stops by itself, at once, with one line, and no output is written. The cases run side by side."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    argv = {"open": ["score", "-m", str(TINY), "--fasta", "seqs.fa", "--batch-size", "1", "-o", "s.tsv"],
            "seed": ["generate", "-m", str(TINY), "--prompts", "seqs.fa", "-n", "2", "-o", "s.fa"]}
    nodes = {}
    for where in ("open", "take", "seed"):
        folder = tmp_path / where
        folder.mkdir()
        _seqs(folder / "seqs.fa", [8] * 40, 0)  # 3 chunks
        (folder / "plan.json").write_text(json.dumps([{"argv": argv.get(where, argv["open"]), "fail": where}]))
        # static rendezvous: node 0 runs rank 0 and holds the store, which outlives node 1
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
               "--master-addr=localhost", f"--master-port={_free_port()}", "--monitor-interval=0.1"]
        nodes[where] = [subprocess.Popen(cmd + [f"--node-rank={n}", str(WORKER), "plan.json"], cwd=folder, env=env,
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for n in range(2)]
    for where, pair in nodes.items():
        logs = []
        for node in pair:
            try:
                logs.append(node.communicate(timeout=60)[0])
            except subprocess.TimeoutExpired:
                for n in [n for p in nodes.values() for n in p]:
                    n.kill()
                pytest.fail(f"a rank still waits for the rank that failed ({where})")
        assert [n.returncode for n in pair] == [1, 1], logs
        # on a loaded machine loading the numba kernels can take long enough for its notice to show
        lines = [line for log in logs for line in log.splitlines()
                 if line.startswith("evo") and "preparing the CPU kernels" not in line]
        failed, other = ("0", "evo (rank 1)") if where == "seed" else ("1", "evo")
        assert sorted(lines) == sorted([
            f"{'evo' if failed == '0' else 'evo (rank 1)'}: error: a bad input only rank {failed} sees",
            f"{other}: error: rank {failed} stopped before finishing its part of the run (see its message); the "
            "chunks done are kept: rerun with --resume once that is fixed"]), logs
        assert not any("evo_cli" in log for log in logs)  # no traceback of evo's
        out = tmp_path / where / ("s.fa" if where == "seed" else "s.tsv")
        assert not out.exists()
        assert progress_files(out) == [] or where == "take"


@pytest.mark.parametrize("env, message", [
    ({"RANK": "1", "WORLD_SIZE": "1", "MASTER_PORT": "1"}, r"RANK=1 is not a rank of WORLD_SIZE=1 \(0\.\.0\)"),
    ({"RANK": "0", "WORLD_SIZE": "abc", "MASTER_PORT": "1"}, r"WORLD_SIZE='abc': not a whole number"),
    ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "x", "MASTER_PORT": "1"}, r"LOCAL_WORLD_SIZE='x'"),
    ({"RANK": "0", "WORLD_SIZE": "1"}, "MASTER_ADDR is set but MASTER_PORT is not"),
])
def test_a_launcher_environment_set_wrong_is_one_line_before_the_rendezvous(monkeypatch, tmp_path, env, message):
    """Set by hand (not by torchrun): a rank outside the world waited forever in the rendezvous, a missing
    MASTER_PORT or a WORLD_SIZE that is not a number ended with "ValueError: ..."."""
    import torch.distributed as dist

    from evo_cli import distributed

    for name in ("MASTER_PORT", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MASTER_ADDR", "localhost")
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    def no_rendezvous(*_a, **_k):
        raise AssertionError("reached the rendezvous")

    monkeypatch.setattr(dist, "rendezvous", no_rendezvous)
    with pytest.raises(distributed.InputError, match=message):
        distributed.setup("cpu")
    assert distributed.current() is None
    fa = tmp_path / "in.fa"
    fa.write_text(">a\nACGTACGT\n")
    err = io.StringIO()
    with pytest.raises(SystemExit) as exit_, contextlib.redirect_stderr(err):
        main(["score", "-m", str(TINY), "--fasta", str(fa), "-o", str(tmp_path / "o.tsv")])
    err = err.getvalue()
    assert exit_.value.code == 1 and err.count("\n") == 1 and "evo: error: " in err and "Traceback" not in err
    assert re.search(message, err)


def test_progress_files_of_ranks_on_different_gpus_agree(tmp_path):
    """score and embed keep the output's metadata among a run's settings, and its ``device`` names the GPU:
    rank r of a GPU job runs on cuda:r, so rank 0, merging, refused every other rank's progress file
    ("settings differ (metadata.device: 'cuda:1' then, 'cuda:0' now)"), as did a run resumed on another GPU.
    Stand-in on CPU: the chunks of a run recording cuda:1, resumed by one recording cuda:0."""
    import evo_cli
    from evo_cli.embedding import run_embed
    from evo_cli.io.fasta import read_fasta
    from evo_cli.scoring import run_score

    from .test_cli_score_variants import _interrupt_after

    _seqs(tmp_path / "in.fa", [9] * 40, 0)  # 3 chunks of 16 sequences
    records = read_fasta(tmp_path / "in.fa")
    model = evo_cli.load_model(TINY, device="cpu", dtype="float32")
    meta = {"command": "evo ...", "device": "cuda:0", "kernels": "triton"}

    runs = {"score.tsv": lambda out, **kw: run_score(model, records, out, batch_size=1, settings={"x": 1}, **kw),
            "embed.parquet": lambda out, **kw: run_embed(model, records, out, ["blocks.1"], batch_size=1,
                                                         settings={"x": 1}, **kw)}
    for name, run in runs.items():
        run(tmp_path / f"want-{name}", metadata=meta)
        with pytest.raises(KeyboardInterrupt):
            run(tmp_path / name, metadata={**meta, "device": "cuda:1"}, progress=_interrupt_after(20))
        run(tmp_path / name, metadata=meta, resume=True)
        assert (tmp_path / name).read_bytes() == (tmp_path / f"want-{name}").read_bytes()
