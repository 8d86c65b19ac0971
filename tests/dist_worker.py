"""Run by ``torchrun`` in test_distributed.py: several evo commands, one after another, in one launch
(process start-up dominates a tiny run). argv[1]: a JSON file, a list of steps ``{"argv": [...]}``.

A step with ``"stop_after": n`` stops the job once each of two ranks has stored n chunks: rank 0
then hangs, and rank 1 kills itself, so that torchrun stops rank 0. Run with ``--max-restarts 1``,
torchrun then restarts both ranks: they go on from that step (its argv should have ``--resume``),
after rank 0 has copied the progress files to the step's ``"copy_to"`` folder.

A step with ``"fail": "open"`` or ``"fail": "take"`` makes rank 1 alone meet a bad input: as it
opens the run's progress (before the run starts), or as it asks for its first chunk; with
``"fail": "seed"``, rank 0 as it draws the seed of a ``generate`` without ``--seed``."""

import json
import os
import shutil
import signal
import sys
import time
from types import SimpleNamespace

from evo_cli import distributed, generation
from evo_cli.cli.main import main
from evo_cli.errors import InputError
from evo_cli.io.partial import Checkpoint, progress_files, sidecar_path


def stop_after(n: int) -> None:
    append = Checkpoint.append

    def append_then_stop(self, chunk, records):
        append(self, chunk, records)
        self.appended = getattr(self, "appended", 0) + 1
        if self.appended < n:
            return
        if self.rank == 1:
            # rank 0's file: a settings line, then one line per chunk
            while not (sidecar_path(self.output).exists()
                       and sidecar_path(self.output).read_bytes().count(b"\n") >= n + 1):
                time.sleep(0.02)
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(600)

    Checkpoint.append = append_then_stop


def fail_on_one_rank(where: str) -> None:
    rank = "0" if where == "seed" else "1"
    if os.environ["RANK"] != rank:
        return

    def fail(*args, **kwargs):
        raise InputError(f"a bad input only rank {rank} sees")

    if where == "seed":
        generation.secrets = SimpleNamespace(randbits=fail)
    elif where == "open":
        Checkpoint.__init__ = fail
    else:
        distributed.Share.take = fail


steps = json.load(open(sys.argv[1]))
if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")):
    steps = steps[next(i for i, s in enumerate(steps) if "stop_after" in s):]
    if os.environ["RANK"] == "0":
        os.makedirs(steps[0]["copy_to"])
        for path in progress_files(steps[0]["argv"][steps[0]["argv"].index("-o") + 1]):
            shutil.copy(path, steps[0]["copy_to"])
    del steps[0]["stop_after"]
for step in steps:
    if "stop_after" in step:
        stop_after(step["stop_after"])
    if "fail" in step:
        fail_on_one_rank(step["fail"])
    main(step["argv"])
