"""The one-GPU checklist of benchmarks/README.md ("To run on one H100") as one command for a short lease.

    python3 benchmarks/gpu_checklist.py --out "$OUT"                  # every step, 540 s at most
    python3 benchmarks/gpu_checklist.py --out "$OUT" --budget 300 --only generate_triton layerwise
    python3 benchmarks/gpu_checklist.py --list                        # the steps, their commands and limits
    python3 benchmarks/gpu_checklist.py --smoke --out /tmp/checklist  # CPU: tiny shapes, Triton interpreter

Each step runs in its own process group with a time limit; its output is appended to
``OUT/checklist.log`` and its status to ``OUT/summary.tsv`` as soon as it ends (two files, so a run
cut short still leaves what it had), and a failing step does not stop the next. A step whose usual
time (``est``) no longer fits in what is left of ``--budget`` is skipped, and none runs past it.
``setup`` installs the package (``pip install --no-build-isolation --no-deps -e .``: the GPU machine
has torch, triton and numba, and no network) unless it already imports from this tree, and first any
wheels carried in ``.whl/`` (mmaemu for the FP8 steps). ``--smoke`` runs the same steps on CPU at toy
sizes (the fused ops under ``TRITON_INTERPRET=1``): it checks the commands, not the GPU.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
BENCH = "benchmarks"
WHEEL_SITE = "/tmp/evo-site"  # carried wheels go here (the device notes' recipe), not into the image's env

ENV_REPORT = """
import importlib.util, platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| CUDA", torch.version.cuda)
for m in ("triton", "numba", "numpy", "mmaemu", "xdist", "pytest_timeout"):
    spec = importlib.util.find_spec(m)
    v = getattr(__import__(m), "__version__", "") if spec else ""
    print(f"{m}: {'present ' + v if spec else 'MISSING'}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    free, total = torch.cuda.mem_get_info(0)
    print(f"{torch.cuda.device_count()} GPU(s); cuda:0 {p.name}, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, "
          f"{free / 2**30:.1f} of {total / 2**30:.1f} GiB free")
else:
    print("no CUDA device")
"""


class Step:
    def __init__(self, name, cmd, timeout, est, env=None, note="", optional=False):
        self.name, self.cmd, self.timeout, self.est = name, cmd, timeout, est
        self.env, self.note, self.optional = env or {}, note, optional

    def shown(self) -> str:
        """The command as a shell would take it (``note`` for the steps that are no one command)."""
        if self.cmd is None or self.name == "env":
            return self.note
        return " ".join([*(f"{k}={v}" for k, v in self.env.items()), shlex.join(self.cmd)])


def steps(smoke: bool) -> list[Step]:
    """The README's one-H100 commands in order of value; ``smoke``: the same at toy sizes on CPU.
    ``est`` is a guess of a step's seconds on an H100 (model builds, first compiles and autotuning
    included); ``timeout`` caps it."""
    if smoke:
        M = ["--hidden", "64", "--layers", "7", "--head-dim", "16", "--threads", "1"]
        L8, L64, L128, NTOK, GEN = "40", "100", "200", "4", "8"
        kern, chunk = ["--hidden", "64", "--threads", "1", "--repeats", "1"], "32"
        fp8 = ["--device", "cpu", "--rows", "32", "--length", "32", "--hidden", "64", "--layers", "7",
               "--head-dim", "16", "--threads", "1", "--dtype", "bfloat16"]
        tests = ["-k", "rms_norm or (test_featurize and L1-)"]
        test_env = {}
        split = [*M, "--split", "cpu,cpu", "--length", "64", "--chunk", "20", "--n-tokens", "4", "--kernels", "triton"]
    else:
        M = ["--hidden", "4096", "--layers", "32", "--inner-mlp", "11008"]
        L8, L64, L128, NTOK, GEN = "8192", "65536", "131072", "16", "1024"
        kern, chunk = [], "8192"
        fp8 = ["--device", "cuda", "--rows", "8192", "--length", "8192", "--hidden", "1920", "--layers", "25"]
        tests = ["-k", "not backend_choice and not dispatch and not one_autotune"]
        split = ["--hidden", "1024", "--layers", "14", "--split", "cuda:0,cuda:0", "--length", "4096",
                 "--kernels", "triton"]
        # the many small test shapes each compile and autotune every config: 8 processes compile at once
        if importlib.util.find_spec("xdist"):
            tests += ["-n", "8"]
        test_env = {"EVO_TEST_DEVICE": "cuda"}
    if importlib.util.find_spec("pytest_timeout"):
        tests += ["--timeout", "240"]
    b = lambda script, *a: [PY, f"{BENCH}/{script}", *a]  # noqa: E731
    return [
        Step("env", [PY, "-c", ENV_REPORT], 60, 10, note="versions, packages and the GPU"),
        Step("setup", None, 180, 20, note="pip install -e . (and .whl/*.whl) unless already importable"),
        Step("tests", [PY, "-m", "pytest", "tests/test_kernels_fused.py", "-p", "no:cacheprovider", *tests], 300, 90,
             env=test_env),
        Step("check_backends", b("check_backends.py", *M, "--lengths", L8, "--n-tokens", NTOK), 180, 60),
        Step("kernels_8k", b("bench_kernels.py", *kern, "--length", L8), 150, 40),
        Step("forward_triton", b("bench_forward.py", *M, "--lengths", L8, L64, L128, "--kernels", "triton"), 300, 150),
        Step("forward_torch", b("bench_forward.py", *M, "--lengths", L8, L64, "--kernels", "torch"), 180, 75),
        Step("generate_triton", b("bench_generate.py", *M, "--batches", "1", "--n-tokens", GEN, "--kernels", "triton"),
             150, 45),
        Step("generate_torch", b("bench_generate.py", *M, "--batches", "1", "--n-tokens", GEN, "--kernels", "torch"),
             150, 45),
        Step("kernels_128k", b("bench_kernels.py", *kern, "--length", L128, "--ops", "featurize", "se", "mr", "modal",
                               "norm"), 180, 60),
        Step("layerwise", b("bench_layerwise.py", *M, "--length", L128, "--chunk", chunk), 240, 100),
        Step("fp8_info", [PY, "-m", "mmaemu", "info"], 90, 15, note="only where mmaemu imports"),
        Step("fp8", b("bench_fp8.py", *fp8, "--modes", "off", "native", "emulate"), 180, 40),
        # optional, run only when named in --only: Triton -> PTX -> ptxas for sm_90 needs no GPU (done on
        # CPU, README); the split path on one GPU (both parts on cuda:0) at a small size, before a machine
        # with two GPUs shows the copies between them
        Step("compile", b("compile_kernels.py"), 300, 150, note="needs no GPU", optional=True),
        Step("split_1gpu", b("check_split.py", *split), 150, 60, note="the split code path, not two GPUs",
             optional=True),
    ]


class Checklist:
    def __init__(self, out: Path, budget: float, smoke: bool):
        self.out, self.deadline, self.smoke = out, time.monotonic() + budget, smoke
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if smoke:
            self.env["TRITON_INTERPRET"] = "1"
        out.mkdir(parents=True, exist_ok=True)
        self.log = open(out / "checklist.log", "a")
        self.rows: list[tuple[str, str, float, str]] = []

    def say(self, text: str) -> None:
        self.log.write(text + "\n")
        self.log.flush()

    def run(self, cmd, limit: float, env=None) -> str:
        """Run ``cmd`` from the repository root with its output in the log: ``ok``, ``rc=N`` or ``timeout``."""
        self.log.flush()
        # its own process group: a step's children (bench_forward runs one process per length) die with it
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**self.env, **(env or {})}, preexec_fn=os.setpgrp)
        try:
            rc = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return "timeout"
        return "ok" if rc == 0 else f"rc={rc}"

    def imports_here(self) -> bool:
        """Whether ``evo_cli.kernels`` imports, from this tree, in a fresh process outside the tree."""
        probe = subprocess.run([PY, "-c", "import os, evo_cli.kernels as k; print(os.path.realpath(k.__file__))"],
                               cwd="/", capture_output=True, text=True, env=self.env)
        return probe.returncode == 0 and probe.stdout.strip() == str(ROOT / "kernels" / "__init__.py")

    def setup(self, limit: float) -> str:
        end = time.monotonic() + limit
        wheels = sorted(glob.glob(str(ROOT / ".whl" / "*.whl")))
        if wheels:
            status = self.run([PY, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                               "--disable-pip-version-check", "--upgrade", "--target", WHEEL_SITE, *wheels],
                              end - time.monotonic())
            self.say(f"wheels {', '.join(Path(w).name for w in wheels)}: {status}")
            if status == "ok":
                self.add_path(WHEEL_SITE)
        if self.imports_here():
            self.say("evo_cli imports from this tree: nothing to install")
            return "ok"
        status = self.run([PY, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-index",
                           "--disable-pip-version-check", "-e", "."], end - time.monotonic())
        if status == "ok" and self.imports_here():
            return "ok"
        # without the install (an old setuptools, say): the tree itself, with kernels/ where the
        # package expects it; enough for the benchmarks and tests (not for the `evo` command)
        link = ROOT / "evo_cli" / "kernels"
        if not link.exists():
            link.symlink_to("../kernels")
        self.add_path(str(ROOT))
        self.say(f"pip install: {status}; using {ROOT} on PYTHONPATH with evo_cli/kernels -> ../kernels")
        return "ok (PYTHONPATH)" if self.imports_here() else "FAILED"

    def add_path(self, path: str) -> None:
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (path, self.env.get("PYTHONPATH")) if p)

    def step(self, s: Step) -> None:
        left = self.deadline - time.monotonic()
        header = f"\n===== {s.name} ({time.strftime('%H:%M:%S')}, {left:.0f} s of the budget left)"
        if s.name == "fp8_info" and not self.importable("mmaemu"):
            return self.record(s, "skipped: mmaemu not installed (carry its wheel in .whl/)", 0.0, header)
        if left < s.est:
            return self.record(s, f"skipped: needs ~{s.est} s, {left:.0f} s left", 0.0, header)
        limit = min(s.timeout, left)
        self.say(f"{header}\n$ {s.shown()}  [limit {limit:.0f} s]")
        offset = self.log.tell()
        t0 = time.monotonic()
        status = self.setup(limit) if s.name == "setup" else self.run(s.cmd, limit, s.env)
        self.record(s, status, time.monotonic() - t0, None)
        # the step's own output, for the caller's terminal (the log keeps all of it)
        with open(self.out / "checklist.log") as f:
            f.seek(offset)
            lines = f.read().splitlines()
        print("\n".join([header.strip(), *lines[-40:]]), flush=True)

    def has_cuda(self) -> bool:
        probe = [PY, "-c", "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"]
        return subprocess.run(probe, capture_output=True, env=self.env).returncode == 0

    def importable(self, module: str) -> bool:
        return subprocess.run([PY, "-c", f"import {module}"], capture_output=True, env=self.env).returncode == 0

    def record(self, s: Step, status: str, seconds: float, header: str | None) -> None:
        if header:
            self.say(f"{header}: {status}")
            print(f"{header.strip()}: {status}", flush=True)
        else:
            self.say(f"----- {s.name}: {status} in {seconds:.0f} s")
        self.add_row(s.name, status, seconds, s.shown())

    def add_row(self, name: str, status: str, seconds: float, command: str) -> None:
        self.rows.append((name, status, seconds, command))
        with open(self.out / "summary.tsv", "w") as f:
            f.write("step\tstatus\tseconds\tcommand\n")
            f.writelines(f"{n}\t{st}\t{sec:.0f}\t{c}\n" for n, st, sec, c in self.rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "checklist-results"),
                    help="folder for checklist.log and summary.tsv (default: $OUT)")
    ap.add_argument("--budget", type=float, default=540,
                    help="seconds for the whole run, steps included (default 540: one 600 s command)")
    ap.add_argument("--only", nargs="+",
                    help="run these steps (in the checklist's order; optional ones only so); env and setup always run")
    ap.add_argument("--skip", nargs="+", default=[], help="leave these steps out")
    ap.add_argument("--smoke", action="store_true", help="CPU, toy sizes, Triton interpreter: checks the commands")
    ap.add_argument("--list", action="store_true", help="print the steps and exit")
    args = ap.parse_args()
    all_steps = steps(args.smoke)
    names = [s.name for s in all_steps]
    for n in (args.only or []) + args.skip:
        if n not in names:
            ap.error(f"unknown step {n!r}; steps: {', '.join(names)}")
    wanted = [s for s in all_steps if s.name not in args.skip and (
        s.name in ("env", "setup") or (s.name in args.only if args.only else not s.optional))]
    if args.list:
        for s in all_steps:
            note = ", ".join(t for t in ("optional: only with --only" if s.optional else "",
                                         s.note if s.cmd and s.name != "env" else "") if t)
            print(f"{s.name:16} ~{s.est:>3} s, limit {s.timeout:>3} s  {s.shown()}" + (f"  ({note})" if note else ""))
        return
    c = Checklist(Path(args.out), args.budget, args.smoke)
    c.say(f"\n##### gpu_checklist {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(s.name for s in wanted)}; "
          f"budget {args.budget:.0f} s{' (smoke: CPU, toy sizes)' if args.smoke else ''}")
    for s in wanted:
        c.step(s)
        if s.name == "setup" and c.rows[-1][1] == "FAILED":
            c.say("setup failed: nothing else can import evo_cli")
            break
        if s.name == "env" and not args.smoke and not c.has_cuda():
            # the real sizes on a CPU would only run into every limit
            c.say("no CUDA device: stopping (--smoke runs the steps on CPU at toy sizes)")
            print("no CUDA device: stopping (--smoke runs the steps on CPU at toy sizes)", flush=True)
            c.add_row("gpu", "FAILED: no CUDA device", 0.0, "torch.cuda.is_available()")
            break
    print("\n| step | status | seconds |\n|---|---|---|")
    for n, st, sec, _ in c.rows:
        print(f"| {n} | {st} | {sec:.0f} |")
    print(f"\nlog: {c.out / 'checklist.log'}; summary: {c.out / 'summary.tsv'}")
    sys.exit(0 if all(st.startswith(("ok", "skipped")) for _, st, _, _ in c.rows) else 1)


if __name__ == "__main__":
    main()
