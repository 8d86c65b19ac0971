"""Run by ``torchrun`` in test_distributed.py: several evo commands, one after another, in one launch
(process start-up dominates a tiny run). argv[1]: a JSON file, a list of steps ``{"argv": [...]}``;
a step with ``"stop_after": n`` stops the job once each of two ranks has stored n chunks: rank 0
then hangs, and rank 1 kills itself, so that torchrun stops rank 0."""

import json
import os
import signal
import sys
import time

from evo_cli.cli.main import main
from evo_cli.io.partial import Checkpoint, sidecar_path


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


for step in json.load(open(sys.argv[1])):
    if "stop_after" in step:
        stop_after(step["stop_after"])
    main(step["argv"])
