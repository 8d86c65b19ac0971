"""Published models by name from a fake Hugging Face cache: offline loading, split parts read in place,
downloads (huggingface_hub stubbed), disk-space and not-cached errors, and the ``evo models`` /
``evo download`` commands."""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
from huggingface_hub import constants as hf_constants
import pytest
import torch
import yaml
from click.testing import CliRunner

import evo_cli
from evo_cli import hub, registry
from evo_cli.cli.main import cli, main
from evo_cli.errors import CheckpointError
from evo_cli.model.config import ModelConfig

from .hubcache import C1, TINY_A, add_snapshot, evo1_published_files, split_bytes, tiny_ids


COMMIT = "c0ffee" * 6 + "abcd"  # what hubcache.add_snapshot stores


def _tiny_a_config(name: str) -> ModelConfig:
    return dataclasses.replace(ModelConfig.from_evo2(yaml.safe_load((TINY_A / "config.yml").read_text())), name=name)


def _c1_config(name: str) -> ModelConfig:
    d = yaml.safe_load((C1 / "evo1_inference.yml").read_text())
    return dataclasses.replace(ModelConfig.from_evo1(d), name=name)


@pytest.fixture
def env(tmp_path, monkeypatch):
    """An empty hub cache under HF_HOME, offline; packaged configs of published names replaced by the
    tiny conformance configs (the real ones describe billions of parameters)."""
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(registry, "_warned_fp8", set())
    tiny = {name: (_c1_config(name) if spec.family != "evo2" else _tiny_a_config(name)) for name, spec in registry.MODELS.items()}
    monkeypatch.setattr(registry, "model_config", tiny.__getitem__)
    return home / "hub"


def _logits(model, ids):
    with torch.no_grad():
        return model(ids)


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.lstat().st_size for p in sorted(root.rglob("*"))}


def test_split_evo2_model_by_name_offline(env, caplog):
    """evo2_40b's ``.pt.part0/.part1`` are read in place from the snapshot: no merged copy, nothing deleted."""
    spec = registry.MODELS["evo2_40b"]
    parts = split_bytes((TINY_A / "weights.pt").read_bytes(), 2)
    add_snapshot(env, spec.repo, spec.revision, dict(zip(spec.files, parts)))
    home = env.parent
    before = _tree(home)
    with caplog.at_level(logging.WARNING):
        model = evo_cli.load_model("evo2_40b", device="cpu")
        evo_cli.load_model("evo2_40b", device="cpu")
    assert model.config.name == "evo2_40b"
    ref = evo_cli.load_model(TINY_A, device="cpu")
    ids = tiny_ids()
    assert torch.equal(_logits(model, ids), _logits(ref, ids))
    assert _tree(home) == before
    # FP8 is needed for reference accuracy: warned once per process
    assert sum("FP8" in r.getMessage() and "evo2_40b" in r.getMessage() for r in caplog.records) == 1
    # huggingface_hub's own scanner accepts the cache we built
    info = huggingface_hub.scan_cache_dir(env)
    assert not info.warnings and [r.repo_id for r in info.repos] == [spec.repo]


def test_evo1_model_by_name_uses_revision_and_packaged_config(env, tmp_path):
    """evo-1-131k-base resolves refs/1.1_fix (not main); its config comes from the package, not config.json."""
    spec = registry.MODELS["evo-1-131k-base"]
    files = evo1_published_files(tmp_path)
    add_snapshot(env, spec.repo, "1.1_fix", files)
    wrong = dict(files, **{"model-00001-of-00003.safetensors": files["model-00002-of-00003.safetensors"]})
    add_snapshot(env, spec.repo, "main", wrong, commit="b" * 40)
    model = evo_cli.load_model("evo-1-131k-base", device="cpu")
    assert model.config == registry.model_config("evo-1-131k-base")
    ref = evo_cli.load_model(C1, device="cpu")
    ids = tiny_ids()
    assert torch.equal(_logits(model, ids), _logits(ref, ids))


def test_hub_cache_paths_of_a_published_model_load_with_its_packaged_config(env, tmp_path):
    """What `evo download` prints (the snapshot folder), a file in it, or the repo folder, passed as a path,
    loads like the name: the Evo 2 repos' config.json does not describe the model, and the Evo 1 8k one
    carries the 131k rotary interpolation; neither is used."""
    spec = registry.MODELS["evo2_7b"]
    hub_config = b'{"name": "Evo 2 7B", "architecture": ["StripedHyena2"], "_name_or_path": "evo2_7b.pt"}'
    snap = add_snapshot(env, spec.repo, spec.revision, {"evo2_7b.pt": (TINY_A / "weights.pt").read_bytes(),
                                                        "config.json": hub_config})
    ids = tiny_ids()
    ref = _logits(evo_cli.load_model(TINY_A, device="cpu"), ids)
    for path in (snap, snap / "evo2_7b.pt", env / "models--arcinstitute--evo2_7b"):
        model = evo_cli.load_model(path, device="cpu")
        assert model.config == registry.model_config("evo2_7b")
        assert torch.equal(_logits(model, ids), ref)
    spec = registry.MODELS["evo-1-8k-base"]
    files = evo1_published_files(tmp_path)
    cfg = json.loads(files["config.json"])
    files["config.json"] = json.dumps(dict(cfg, use_interpolated_rotary_pos_emb=True, rotary_emb_scaling_factor=16)).encode()
    snap = add_snapshot(env, spec.repo, spec.revision, files)
    model = evo_cli.load_model(snap, device="cpu")
    assert model.config == registry.model_config("evo-1-8k-base") and model.config.rotary_scaling == 1
    assert torch.equal(_logits(model, ids), _logits(evo_cli.load_model(C1, device="cpu"), ids))
    # a repo folder with no snapshot of the registry's revision: one line saying how to get it
    (env / "models--arcinstitute--evo2_20b" / "blobs").mkdir(parents=True)
    with pytest.raises(CheckpointError, match=r"models--arcinstitute--evo2_20b: no snapshot of arcinstitute/evo2_20b@main"
                                              r".*`evo download evo2_20b`"):
        evo_cli.load_model(env / "models--arcinstitute--evo2_20b", device="cpu")


@pytest.mark.parametrize("ref", [b"", b"../../../..", b"\xff\xfe"])
def test_a_damaged_ref_is_no_snapshot(env, ref):
    """refs/main must hold a commit: empty it named the snapshots/ folder itself, a path left the cache,
    and bytes that are not text ended in UnicodeDecodeError."""
    spec = registry.MODELS["evo2_7b"]
    add_snapshot(env, spec.repo, spec.revision, {"evo2_7b.pt": (TINY_A / "weights.pt").read_bytes()})
    (env / "models--arcinstitute--evo2_7b" / "refs" / "main").write_bytes(ref)
    assert hub.snapshot_dir(spec) is None and hub.cache_status(spec).state == "missing"
    with pytest.raises(CheckpointError, match="evo2_7b is not in the Hugging Face cache"):
        evo_cli.load_model("evo2_7b", device="cpu")


def test_hf_home_alone_sets_the_cache(env, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE")
    assert hub.hub_cache_dir() == env
    spec = registry.MODELS["evo2_7b"]
    add_snapshot(env, spec.repo, spec.revision, {"evo2_7b.pt": (TINY_A / "weights.pt").read_bytes()})
    assert hub.cache_status(spec).state == "cached"
    assert evo_cli.load_model("evo2_7b", device="cpu").config.name == "evo2_7b"


def test_offline_and_not_cached(env):
    with pytest.raises(CheckpointError) as e:
        evo_cli.load_model("evo2_7b", device="cpu")
    msg = str(e.value)
    assert "\n" not in msg and "evo download evo2_7b" in msg and "HF_HUB_CACHE" in msg and str(env) in msg


def test_partial_snapshot_is_not_loaded(env):
    spec = registry.MODELS["evo2_40b"]
    add_snapshot(env, spec.repo, spec.revision, {spec.files[0]: b"first half"})
    assert hub.cache_status(spec).state == "partial"
    with pytest.raises(CheckpointError, match="only partly in the Hugging Face cache"):
        evo_cli.load_model("evo2_40b", device="cpu")


def test_unknown_name_suggests_the_closest(env):
    with pytest.raises(CheckpointError, match=r"did you mean 'evo2_7b'\?.*evo models"):
        evo_cli.load_model("evo2-7b", device="cpu")
    with pytest.raises(CheckpointError, match=r"no such checkpoint file or directory, nor a published model name; "):
        evo_cli.load_model("/no/such/dir", device="cpu")


def test_downloading_an_empty_name_says_so(env, capsys):
    with pytest.raises(SystemExit) as e:
        main(["download", "evo2_7b", " "])
    assert e.value.code == 1 and capsys.readouterr().err == "evo: error: no model name given: the name is empty (see `evo models`)\n"


def test_downloading_a_bundled_model_says_it_needs_none(env):
    with pytest.raises(CheckpointError, match="evo-demo is bundled with evo and needs no download: use --model evo-demo"):
        hub.download_model("evo-demo")


def test_evo2_merged_file_is_used(env):
    """The evo2 package merges split parts into $HF_HOME/<name>.pt and deletes them; that file is used."""
    (env.parent).mkdir(parents=True, exist_ok=True)
    (env.parent / "evo2_40b.pt").write_bytes((TINY_A / "weights.pt").read_bytes())
    assert evo_cli.load_model("evo2_40b", device="cpu").config.name == "evo2_40b"


@pytest.fixture
def fake_download(env, monkeypatch):
    """Online, with snapshot_download replaced by one that fills the cache from local files (and 1 PB free)."""
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(hub.shutil, "disk_usage", lambda path: SimpleNamespace(total=0, used=0, free=10**15))
    calls = []

    def snapshot_download(repo_id, revision, cache_dir, allow_patterns, **kw):
        calls.append(dict(repo_id=repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=allow_patterns, **kw))
        data = (TINY_A / "weights.pt").read_bytes()
        files = dict(zip(allow_patterns, split_bytes(data, len(allow_patterns))))
        return str(add_snapshot(Path(cache_dir), repo_id, revision, files))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    # the branch resolves to a commit first (with a timeout); the ref is recorded once the files are in
    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", lambda self, repo, revision, timeout: SimpleNamespace(
        sha=COMMIT if timeout == hub.hub_timeout() else None))
    return calls


def test_a_download_says_where_from_once_the_hub_answers(fake_download, env, caplog):
    with caplog.at_level(logging.WARNING):
        hub.download_model("evo2_7b")
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("downloading")]
    assert said == [f"downloading evo2_7b (~13.2 GB) from {hub.hub_endpoint()}/arcinstitute/evo2_7b@main into {env}"]


def test_a_merged_file_is_not_downloaded_again(fake_download, env):
    """With the parts merged by the evo2 package (and deleted), `evo download` fetched all 82 GB again and
    `evo models` said missing, though the loader uses the merged file."""
    merged = env.parent / "evo2_40b.pt"
    merged.parent.mkdir(parents=True, exist_ok=True)
    merged.write_bytes((TINY_A / "weights.pt").read_bytes())
    assert hub.download_model("evo2_40b") == merged and fake_download == []
    res = CliRunner().invoke(cli, ["download", "evo2_40b"])
    assert res.exit_code == 0 and res.stdout.strip() == str(merged) and fake_download == []
    rows = {r["name"]: r for r in hub.list_models()}
    assert rows["evo2_40b"]["cached"] == "cached" and rows["evo2_40b"]["path"] == str(merged)
    assert rows["evo2_40b"]["size_on_disk"] == merged.stat().st_size
    assert rows["evo2_40b_base"]["cached"] == "missing" and rows["evo2_40b_base"]["path"] is None


def test_download_then_cached(fake_download, env):
    path = hub.download_model("evo2_40b")
    assert fake_download == [dict(repo_id="arcinstitute/evo2_40b", revision=COMMIT, cache_dir=str(env),
                                  allow_patterns=["evo2_40b.pt.part0", "evo2_40b.pt.part1"],
                                  endpoint="https://huggingface.co", etag_timeout=10.0)]
    assert (hub.repo_cache_dir(registry.MODELS["evo2_40b"]) / "refs" / "main").read_text() == COMMIT
    assert sorted(p.name for p in path.iterdir()) == ["evo2_40b.pt.part0", "evo2_40b.pt.part1"]
    assert hub.download_model("evo2_40b") == path and len(fake_download) == 1


def test_load_by_name_downloads_when_online(fake_download):
    model = evo_cli.load_model("evo2_7b", device="cpu")
    assert model.config.name == "evo2_7b" and len(fake_download) == 1


def test_not_enough_disk(fake_download, monkeypatch, env):
    monkeypatch.setattr(hub.shutil, "disk_usage", lambda path: SimpleNamespace(total=0, used=0, free=2_000_000_000))
    with pytest.raises(CheckpointError, match=r"^evo2_7b needs 13\.2 GB, 2\.0 GB free at /"):
        hub.download_model("evo2_7b")
    assert fake_download == []


def test_download_error_is_one_line(fake_download, monkeypatch):
    class GatedRepoError(Exception):
        pass

    def refuse(**kw):
        raise GatedRepoError("401 Client Error\nAccess to model is restricted")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)
    with pytest.raises(CheckpointError) as e:
        hub.download_model("evo2_7b")
    assert "\n" not in str(e.value) and "HF_TOKEN" in str(e.value) and "resumes" in str(e.value)


def test_evo_models_lists_all_ten_and_the_bundled_one(env):
    spec = registry.MODELS["evo2_7b"]
    data = (TINY_A / "weights.pt").read_bytes()
    add_snapshot(env, spec.repo, spec.revision, {"evo2_7b.pt": data})
    res = CliRunner().invoke(cli, ["models"])
    assert res.exit_code == 0, res.output
    names = [line.split()[0] for line in res.output.splitlines()[1:]]
    assert names == ["evo-1-8k-base", "evo-1-131k-base", "evo-1.5-8k-base", "evo2_1b_base", "evo2_7b_base",
                     "evo2_7b_262k", "evo2_7b", "evo2_20b", "evo2_40b_base", "evo2_40b", "evo-demo"]
    res = CliRunner().invoke(cli, ["models", "--json"])
    rows = {r["name"]: r for r in json.loads(res.output)}
    assert len(rows) == 11 and rows["evo-demo"]["cached"] == "bundled"
    assert rows["evo2_7b"]["cached"] == "cached" and rows["evo2_7b"]["size_on_disk"] == len(data)
    assert rows["evo2_7b"]["path"].endswith("/evo2_7b.pt") and Path(rows["evo2_7b"]["path"]).is_file()
    assert rows["evo2_40b"]["cached"] == "missing" and rows["evo2_40b"]["needs_fp8"]
    assert rows["evo-1-131k-base"]["revision"] == "1.1_fix"


def test_evo_models_on_an_80_column_terminal_cuts_no_name(env):
    """A terminal too narrow for the rich table gets the plain lines: rich cut the names to 'evo2_…'."""
    import os
    import pty
    import re
    import subprocess
    import sys

    master, child = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "evo_cli.cli.main", "models"], stdout=child, stderr=subprocess.PIPE,
                            env={**os.environ, "COLUMNS": "80"})
    os.close(child)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 1 << 16)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert proc.wait() == 0, proc.stderr.read()
    out = re.sub(r"\x1b\[[0-9;]*m", "", b"".join(chunks).decode())
    names = [*registry.MODELS, *registry.BUNDLED]
    lines = [line.split() for line in out.splitlines()]
    assert [line[0] for line in lines if line and line[0] in names] == names, out
    assert "blocks.16.mlp.l3" in out and "Hugging Face cache: " in out


def test_evo_download_prints_the_snapshot(env):
    spec = registry.MODELS["evo2_1b_base"]
    snap = add_snapshot(env, spec.repo, spec.revision, {"evo2_1b_base.pt": b"x"})
    res = CliRunner().invoke(cli, ["download", "evo2_1b_base"])
    assert res.exit_code == 0 and res.output.strip() == str(snap)


@pytest.mark.parametrize("args, message", [
    (["download", "evo2_7bb"], "did you mean 'evo2_7b'"),
    (["download", "evo2_7b"], "evo download evo2_7b"),
    # a checkpoint folder that exists was "no such checkpoint file or directory"
    (["download", str(TINY_A)], f"{TINY_A} is a checkpoint on disk, not a published model name: it needs no "
                                f"download; use --model {TINY_A}"),
    (["download", "evo2-7b"], "evo2-7b: not a published model name (did you mean 'evo2_7b'?); `evo models` lists "
                              "the names"),
])
def test_evo_download_errors(env, capsys, args, message):
    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.startswith("evo: error: ") and message in err and err.count("\n") == 1


def test_info_and_convert_by_name(env, tmp_path):
    spec = registry.MODELS["evo2_7b_262k"]
    add_snapshot(env, spec.repo, spec.revision, {"evo2_7b_262k.pt": (TINY_A / "weights.pt").read_bytes()})
    res = CliRunner().invoke(cli, ["info", "-m", "evo2_7b_262k", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["name"] == "evo2_7b_262k"
    res = CliRunner().invoke(cli, ["convert", "evo2_7b_262k", "-o", str(tmp_path / "native")])
    assert res.exit_code == 0, res.output
    native = evo_cli.load_model(tmp_path / "native", device="cpu")
    assert native.config == registry.model_config("evo2_7b_262k")
    ids = tiny_ids()
    assert torch.equal(_logits(native, ids), _logits(evo_cli.load_model("evo2_7b_262k", device="cpu"), ids))


def test_interrupted_download_counts_as_partial(fake_download, env, monkeypatch):
    """huggingface_hub resumes from blobs/*.incomplete; their bytes are not asked for again."""
    spec = registry.MODELS["evo2_7b"]
    blobs = hub.repo_cache_dir(spec) / "blobs"
    blobs.mkdir(parents=True)
    (blobs / "0123abcd.incomplete").write_bytes(b"\0" * 1000)
    status = hub.cache_status(spec)
    assert (status.state, status.size_bytes, status.missing) == ("partial", 1000, ("evo2_7b.pt",))
    monkeypatch.setattr(hub.shutil, "disk_usage", lambda path: SimpleNamespace(total=0, used=0, free=spec.download_bytes - 1000))
    hub.download_model("evo2_7b")
    assert len(fake_download) == 1


def test_stalled_hub_fails_in_seconds(env, monkeypatch, capsys):
    """An endpoint that accepts connections and never answers: one line naming it and HF_HUB_OFFLINE (and
    no "downloading" line before it: the Hub never answered)."""
    monkeypatch.delenv("HF_HUB_OFFLINE")
    # huggingface_hub read HF_HUB_OFFLINE when it was imported (this machine may set it)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub.shutil, "disk_usage", lambda path: SimpleNamespace(total=0, used=0, free=10**15))
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)  # the kernel completes the handshakes; nothing ever reads or replies
        endpoint = f"http://127.0.0.1:{server.getsockname()[1]}"
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "1")
        t0 = time.monotonic()
        with pytest.raises(SystemExit) as e:
            main(["download", "evo2_1b_base"])
        elapsed = time.monotonic() - t0
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert e.value.code == 1 and elapsed < 8, (elapsed, err)
    assert len(lines) == 1 and lines[0].startswith("evo: error: cannot download arcinstitute/evo2_1b_base@main "
                                                   f"from {endpoint} (")
    assert f"{endpoint} cannot be reached or did not answer within 1 s" in lines[0] and "HF_HUB_OFFLINE=1" in lines[0]
    assert hub.cache_status(registry.MODELS["evo2_1b_base"]).state == "missing"


def test_info_of_a_partly_downloaded_model_says_so(env):
    """One part of two in the cache: `evo info` said "not downloaded", as for a model never fetched."""
    spec = registry.MODELS["evo2_40b"]
    add_snapshot(env, spec.repo, spec.revision, {spec.files[0]: b"\0" * 10})
    res = CliRunner().invoke(cli, ["info", "-m", "evo2_40b", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["path"] == "partly downloaded (`evo download evo2_40b` finishes it)"
    res = CliRunner().invoke(cli, ["info", "-m", "evo2_7b", "--json"])
    assert json.loads(res.output)["path"] == "not downloaded (`evo download evo2_7b` fetches the weights)"
