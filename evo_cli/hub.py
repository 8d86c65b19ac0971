"""Published checkpoints in the Hugging Face cache: where they are, whether they are complete, and
downloading them.

The cache is huggingface_hub's own (``models--{org}--{name}/refs/{revision}``,
``snapshots/{commit}/<file>`` symlinked to ``blobs/``), so files are shared with every other tool
that uses it and never copied elsewhere. Byte-split Evo 2 checkpoints (``<name>.pt.part0..N``) stay
as they are: the loader reads the parts in place, nothing merges or deletes them.

Environment (huggingface_hub's variables, read when called, so a changed environment is honoured):
``HF_HUB_CACHE`` (else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``) is the cache;
``HF_HUB_OFFLINE=1`` forbids network access; ``HF_TOKEN`` is used for downloads; ``HF_ENDPOINT`` is the
Hub contacted; ``HF_HUB_ETAG_TIMEOUT`` (default 10 s) bounds every metadata request, and huggingface_hub's
``HF_HUB_DOWNLOAD_TIMEOUT`` a stalled file transfer, so an unresponsive network fails in seconds.
Interrupted downloads resume: huggingface_hub keeps ``blobs/*.incomplete`` and continues them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from evo_cli.errors import CheckpointError

from .registry import BUNDLED, MODELS, ModelSpec, closest_names

log = logging.getLogger(__name__)

_TRUE = {"1", "ON", "YES", "TRUE"}
_COMMIT = re.compile(r"[0-9a-f]{40}")


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache: ``HF_HUB_CACHE``, else ``HF_HOME``/hub, else ~/.cache/huggingface/hub."""
    env = os.environ
    cache = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if not cache:
        home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface")
        cache = os.path.join(home, "hub")
    return Path(os.path.expandvars(os.path.expanduser(cache)))


def is_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set to a true value."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.upper() in _TRUE


def repo_cache_dir(spec: ModelSpec, cache: Path | None = None) -> Path:
    return (cache or hub_cache_dir()) / f"models--{spec.repo.replace('/', '--')}"


def snapshot_dir(spec: ModelSpec, cache: Path | None = None) -> Path | None:
    """The cached snapshot folder of ``spec.revision`` (complete or not), or None."""
    repo = repo_cache_dir(spec, cache)
    commit = spec.revision
    if not _COMMIT.fullmatch(commit):
        ref = repo / "refs" / spec.revision
        try:
            commit = ref.read_bytes().decode("ascii", "replace").strip() if ref.is_file() else ""
        except OSError:
            commit = ""
        # huggingface_hub writes a commit hash; anything else (empty, damaged) is no snapshot, not the folder
        # "snapshots/" itself or a path out of the cache
        if not _COMMIT.fullmatch(commit):
            return None
    snap = repo / "snapshots" / commit
    return snap if snap.is_dir() else None


def published_in_cache(path: Path) -> tuple[Path, ModelSpec] | None:
    """``path`` inside the hub cache folder of a published model's repo (``models--{org}--{name}``): the
    path to open and the model's spec, else None. A snapshot folder or a file in it is opened as given;
    the repo folder itself means the snapshot of the registry's revision. Such files load with the
    packaged config, as the model's name does: the hub's own configs are not used (the Evo 2 repos have
    none that describes the model; the Evo 1 8k ``config.json`` carries keys copied from the 131k one)."""
    repos = {f"models--{s.repo.replace('/', '--')}": s for s in MODELS.values()}
    for candidate in dict.fromkeys((Path(os.path.abspath(path)), Path(os.path.realpath(path)))):
        parts = candidate.parts
        at = next((i for i in range(len(parts) - 1, -1, -1) if parts[i] in repos), None)
        if at is None:
            continue
        spec, rest = repos[parts[at]], parts[at + 1:]
        if not rest:
            snap = snapshot_dir(spec, Path(*parts[:at]))
            if snap is None:
                raise CheckpointError(f"{path}: no snapshot of {spec.repo}@{spec.revision} in this hub cache folder; "
                                      f"`evo download {spec.name}` fetches it, or pass a folder under snapshots/")
            return snap, spec
        if rest[0] == "snapshots" and len(rest) > 1:
            return Path(path), spec
    return None


@dataclass(frozen=True)
class CacheStatus:
    """``state``: ``cached`` (every file present), ``partial`` (some files or an interrupted download) or
    ``missing``. ``size_bytes``: bytes on disk of the model's files, including unfinished downloads."""

    state: str
    path: Path | None
    size_bytes: int
    missing: tuple[str, ...]


def cache_status(spec: ModelSpec, cache: Path | None = None) -> CacheStatus:
    repo = repo_cache_dir(spec, cache)
    snap = snapshot_dir(spec, cache)
    present = [snap / f for f in spec.files if snap is not None and (snap / f).is_file()]
    missing = tuple(f for f in spec.files if snap is None or not (snap / f).is_file())
    # snapshot entries are symlinks into blobs/; count each blob once
    blobs = {p.resolve() for p in present}
    partial = list((repo / "blobs").glob("*.incomplete")) if (repo / "blobs").is_dir() else []
    size = sum(b.stat().st_size for b in blobs) + sum(p.stat().st_size for p in partial)
    if not missing:
        state = "cached"
    elif present or partial:
        state = "partial"
    else:
        state = "missing"
    return CacheStatus(state=state, path=snap, size_bytes=size, missing=missing)


def _evo2_merged_file(spec: ModelSpec) -> Path | None:
    """The file the evo2 package merges split checkpoints into, after which it deletes the parts from
    the cache: ``<name>.pt`` in the folder that holds the hub cache (``os.path.dirname(HF_HUB_CACHE)``
    in the evo2 code: ``$HF_HOME`` for the default cache ``$HF_HOME/hub``)."""
    merged = hub_cache_dir().parent / f"{spec.name}.pt"
    return merged if spec.family == "evo2" and merged.is_file() else None


def not_cached_message(spec: ModelSpec, status: CacheStatus) -> str:
    what = "is only partly in" if status.state == "partial" else "is not in"
    where = f"{spec.name} {what} the Hugging Face cache ({hub_cache_dir()})"
    if not is_offline():
        return f"{where}; run `evo download {spec.name}` first"
    return (f"{where} and downloads are off (HF_HUB_OFFLINE); run `evo download {spec.name}` on a connected "
            "machine, or copy its hub cache here and point HF_HUB_CACHE at it")


def model_weights_path(spec: ModelSpec, download: bool = True) -> Path:
    """The weights file to open for a published model, downloading it first when it is not cached
    (unless ``download`` is False or ``HF_HUB_OFFLINE`` is set)."""
    status = cache_status(spec)
    if status.state == "cached":
        return status.path / spec.weights
    merged = _evo2_merged_file(spec)
    if merged is not None:
        log.info("%s: using %s (merged by the evo2 package)", spec.name, merged)
        return merged
    if not download or is_offline():
        raise CheckpointError(not_cached_message(spec, status))
    return download_model(spec.name) / spec.weights


def resolve_spec(name: str) -> ModelSpec:
    spec = MODELS.get(name)
    if spec is None:
        if not name.strip():  # else ": no such ... (did you mean 'evo2_7b'?)"
            raise CheckpointError("no model name given: the name is empty (see `evo models`)")
        if name in BUNDLED:
            raise CheckpointError(f"{name} is bundled with evo and needs no download: use --model {name}")
        if os.path.exists(name):
            raise CheckpointError(f"{name} is a checkpoint on disk, not a published model name: it needs no download; "
                                  f"use --model {name}")
        guess = closest_names(name)
        hint = f" (did you mean {guess[0]!r}?)" if guess else ""
        raise CheckpointError(f"{name}: not a published model name{hint}; `evo models` lists the names")
    return spec


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk_space(spec: ModelSpec, status: CacheStatus, cache: Path) -> None:
    """Refuse to start a download that cannot fit: the registry's size minus what is already on disk."""
    needed = max(0, spec.download_bytes - status.size_bytes)
    where = _existing_parent(cache)
    free = shutil.disk_usage(where).free
    if needed > free:
        raise CheckpointError(f"{spec.name} needs {needed / 1e9:.1f} GB, {free / 1e9:.1f} GB free at {where}")


def hub_endpoint() -> str:
    """The Hub contacted: ``HF_ENDPOINT`` (read when called), else huggingface_hub's default."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def hub_timeout() -> float:
    """Seconds one Hub request may wait for an answer: huggingface_hub's ``HF_HUB_ETAG_TIMEOUT`` (default 10)."""
    try:
        seconds = float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or 10)
    except ValueError:
        seconds = 10.0
    return seconds if seconds > 0 else 10.0


@contextlib.contextmanager
def _bounded_session(seconds: float):
    """huggingface_hub's shared HTTP client waits forever by default; requests that pass no timeout of their
    own (the file listing) wait at most ``seconds`` while this is active."""
    from huggingface_hub.utils import get_session

    session = get_session()
    old = getattr(session, "timeout", None)
    session.timeout = seconds
    try:
        yield
    finally:
        session.timeout = old


def download_model(name: str, quiet: bool = False) -> Path:
    """Download (or finish downloading) a published model into the Hugging Face cache; returns its
    snapshot folder. Nothing is fetched when every file is already there, nor when the evo2 package has
    merged the model's parts into ``<name>.pt`` beside the cache (``_evo2_merged_file``), which the
    loader uses: that file is returned."""
    spec = resolve_spec(name)
    cache = hub_cache_dir()
    status = cache_status(spec, cache)
    if status.state == "cached":
        return status.path
    merged = _evo2_merged_file(spec)
    if merged is not None:
        log.info("%s: %s (merged by the evo2 package) is used; nothing to download", spec.name, merged)
        return merged
    if is_offline():
        raise CheckpointError(not_cached_message(spec, status))
    check_disk_space(spec, status, cache)
    import huggingface_hub
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    if quiet:
        disable_progress_bars()
    endpoint, seconds = hub_endpoint(), hub_timeout()
    try:
        with _bounded_session(seconds):
            commit = spec.revision
            if not _COMMIT.fullmatch(commit):
                # resolved here with a timeout: snapshot_download's own lookup of a branch has none
                api = huggingface_hub.HfApi(endpoint=endpoint)
                commit = api.repo_info(spec.repo, revision=spec.revision, timeout=seconds).sha
            # said once the Hub has answered: an unreachable one gives the error line alone (it names the endpoint)
            log.warning("downloading %s (~%.1f GB) from %s/%s@%s into %s", spec.name, spec.download_bytes / 1e9,
                        endpoint, spec.repo, spec.revision, cache)
            folder = huggingface_hub.snapshot_download(
                repo_id=spec.repo, revision=commit, cache_dir=str(cache), allow_patterns=list(spec.files),
                endpoint=endpoint, etag_timeout=seconds,
            )
    except Exception as err:
        raise CheckpointError(_download_error(spec, err, endpoint, seconds)) from None
    finally:
        if quiet:
            enable_progress_bars()
    if commit != spec.revision:
        # what huggingface_hub records when it resolves a branch itself: refs/<branch> holds the commit
        ref = repo_cache_dir(spec, cache) / "refs" / spec.revision
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(commit)
    missing = [f for f in spec.files if not (Path(folder) / f).is_file()]
    if missing:
        raise CheckpointError(f"{spec.repo}@{spec.revision} has no file {missing[0]!r}, which the registry lists; "
                              "the repository changed: please report it")
    return Path(folder)


def _download_error(spec: ModelSpec, err: Exception, endpoint: str, seconds: float) -> str:
    kind = type(err).__name__
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    hint = ""
    if kind in ("GatedRepoError", "RepositoryNotFoundError") or "401" in first or "403" in first:
        hint = "; log in with `hf auth login` or set HF_TOKEN"
    elif kind == "LocalEntryNotFoundError" or any(w in kind + first for w in ("Connect", "Timeout", "timed out")):
        hint = (f"; {endpoint} cannot be reached or did not answer within {seconds:g} s (HF_HUB_ETAG_TIMEOUT): "
                f"check the network or proxy settings, or set HF_HUB_OFFLINE=1 to use only the local cache")
    return (f"cannot download {spec.repo}@{spec.revision} from {endpoint} ({kind}: {first}){hint}; "
            f"files already fetched are kept and `evo download {spec.name}` resumes")


def list_models() -> list[dict]:
    """Every published model with its cache state, then the bundled models, as plain values (what
    ``evo models`` prints)."""
    cache = hub_cache_dir()
    rows = []
    for spec in MODELS.values():
        status = cache_status(spec, cache)
        merged = _evo2_merged_file(spec) if status.state != "cached" else None
        if merged is not None:  # what the loader uses when the parts are gone
            status = CacheStatus("cached", merged.parent, merged.stat().st_size, ())
        rows.append({
            "name": spec.name,
            "family": spec.family_label,
            "params_billions": spec.params,
            "context": spec.context,
            "embedding_layer": spec.embedding_layer,
            "needs_fp8": spec.fp8,
            # what the published checkpoint holds for FP8: Transformer Engine state on every Hyena projection
            "fp8_state": "Transformer Engine scales (E4M3, delayed scaling)" if spec.fp8 else None,
            "repo": spec.repo,
            "revision": spec.revision,
            "files": list(spec.files),
            "cached": status.state,
            "size_on_disk": status.size_bytes,
            "download_bytes": spec.download_bytes,
            "path": str(merged or status.path / spec.weights) if status.state == "cached" else None,
            "description": spec.description,
        })
    for b in BUNDLED.values():
        files = [f for f in Path(str(b.path)).iterdir() if f.is_file()]
        rows.append({
            "name": b.name, "family": "demo", "params_billions": b.params, "context": b.context,
            "embedding_layer": b.embedding_layer, "needs_fp8": False, "fp8_state": None, "repo": None, "revision": None,
            "files": sorted(f.name for f in files), "cached": "bundled", "size_on_disk": sum(f.stat().st_size for f in files),
            "download_bytes": 0, "path": str(b.path), "description": b.description,
        })
    return rows
