"""Shared fixtures. Tests run on CPU without network; Triton kernels run under its interpreter."""

from __future__ import annotations

import os
from pathlib import Path

# as `evo` does for itself (cli/main.py): libgomp's default spin-waiting after every parallel op burns
# the time slices of the other threads when another process holds a core (test_decode.py and
# test_embedding.py on a shared, loaded 2-core machine: 22-25 s of CPU time, 28-34 s wall, against
# 10 s and 11-17 s with 2000); read when torch loads, so before the import below
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "2000")

import torch  # noqa: E402

# the Triton interpreter must be switched on before any @triton.jit decorator runs, and before triton
# itself is imported: it reads the variable then, so a test that unsets it (to check the refusal outside
# the interpreter) must not be the first to import triton (test_public_api's fused kernels then failed
# after test_cli_main, run alone)
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    try:
        import triton  # noqa: F401
    except ImportError:
        pass

import pytest  # noqa: E402

DATA = Path(__file__).parent / "data"
CONFORMANCE = DATA / "conformance"
EVO1_CASES = sorted(p for p in (CONFORMANCE / "evo1").iterdir() if p.is_dir())
EVO2_CASES = sorted(p for p in (CONFORMANCE / "evo2").iterdir() if p.is_dir())
CASES = EVO1_CASES + EVO2_CASES


def case_id(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


@pytest.fixture(autouse=True)
def _root_logger_restored():
    """A command run in-process sets the root logger's level (``logging.basicConfig``; ``-q`` raises it to
    errors): restored after each test, so that a later test's ``caplog`` still sees warnings whatever ran
    before it (test_placement's after test_cli_score_variants, run alone)."""
    import logging

    root = logging.getLogger()
    level = root.level
    yield
    root.setLevel(level)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models on a shared 2-core machine: one thread avoids OpenMP oversubscription."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def load_case():
    """Load a conformance case once per session: (model, vectors) in float32 on CPU."""
    from safetensors.torch import load_file

    import evo_cli

    cache = {}

    def load(path: Path):
        if path not in cache:
            cache[path] = (evo_cli.load_model(path, device="cpu", dtype="float32", kernels="torch"),
                           load_file(str(path / "vectors.safetensors")))
        return cache[path]

    return load


@pytest.fixture(scope="session")
def tiny_models():
    """Random float32 models of both families: {"evo1": model, "evo2": model}."""
    from evo_cli.model.init import motif_config, random_model

    return {
        "evo2": random_model(motif_config("evo2", hidden_size=32, num_layers=7, head_dim=8, state_size=4, name="tiny-evo2"), seed=1),
        "evo1": random_model(motif_config("evo1", hidden_size=32, num_layers=9, head_dim=8, state_size=4, name="tiny-evo1"), seed=2),
    }
