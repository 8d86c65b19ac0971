"""Thread count under a cgroup CPU quota (containers), read from fake cgroup trees."""

import os

import torch

from evo_cli import runtime


def _tree(tmp_path, files: dict, proc: str):
    for rel, text in files.items():
        path = tmp_path / "cg" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (tmp_path / "proc").write_text(proc)
    return str(tmp_path / "cg"), str(tmp_path / "proc")


def test_cgroup_v2_quota_of_own_cgroup_and_ancestors(tmp_path):
    root, proc = _tree(tmp_path, {"cpu.max": "max 100000", "job/cpu.max": "350000 100000",
                                  "job/step/cpu.max": "max 100000"}, "0::/job/step\n")
    assert runtime.cgroup_cpu_quota(root, proc) == 3.5
    root, proc = _tree(tmp_path, {"cpu.max": "max 100000"}, "0::/\n")
    assert runtime.cgroup_cpu_quota(root, proc) is None


def test_cgroup_v1_quota(tmp_path):
    files = {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "150000", "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000",
             "cpu,cpuacct/cpu.cfs_quota_us": "-1", "cpu,cpuacct/cpu.cfs_period_us": "100000"}
    root, proc = _tree(tmp_path, files, "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n")
    assert runtime.cgroup_cpu_quota(root, proc) == 1.5
    # a container sees its own cgroup as the root of its namespace
    files = {"cpu/cpu.cfs_quota_us": "200000", "cpu/cpu.cfs_period_us": "100000"}
    root, proc = _tree(tmp_path / "ns", files, "3:cpu:/\n")
    assert runtime.cgroup_cpu_quota(root, proc) == 2.0


def test_usable_cpus_rounds_the_quota_up_and_keeps_the_affinity_cap(tmp_path):
    cores = len(os.sched_getaffinity(0))
    root, proc = _tree(tmp_path, {"cpu.max": "50000 100000"}, "0::/\n")
    assert runtime.usable_cpus(root, proc) == 1
    root, proc = _tree(tmp_path / "b", {"cpu.max": f"{(cores + 8) * 100000} 100000"}, "0::/\n")
    assert runtime.usable_cpus(root, proc) == cores
    root, proc = _tree(tmp_path / "c", {"cpu.max": "garbage"}, "0::/\n")
    assert runtime.usable_cpus(root, proc) == cores


def test_fit_threads_to_cpus(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setattr(runtime, "usable_cpus", lambda: 1)
        torch.set_num_threads(2)
        assert runtime.fit_threads_to_cpus() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's choice stands
        torch.set_num_threads(2)
        assert runtime.fit_threads_to_cpus() == 2
    finally:
        torch.set_num_threads(before)


def test_usable_cpus_here_is_positive():
    assert 1 <= runtime.usable_cpus() <= len(os.sched_getaffinity(0))


def test_the_cli_bounds_openmp_spinning_before_torch_loads():
    """``evo`` sets GOMP_SPINCOUNT for a process that has not loaded torch, and leaves a user's
    choice alone (a child process: this one has torch loaded already)."""
    import subprocess
    import sys

    code = ("import sys, os; from evo_cli.cli.main import main\n"
            "try:\n    main(['--version'])\nexcept SystemExit:\n    pass\n"
            "print(os.environ.get('GOMP_SPINCOUNT'), 'torch' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-1] == "2000 False"
    for chosen in ({"GOMP_SPINCOUNT": "77"}, {"OMP_WAIT_POLICY": "ACTIVE"}):
        out = subprocess.run([sys.executable, "-c", code], env={**env, **chosen}, capture_output=True, text=True,
                             check=True).stdout
        assert out.splitlines()[-1] == f"{chosen.get('GOMP_SPINCOUNT')} False"
