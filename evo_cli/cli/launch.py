"""The ``evo`` console script's entry point: imports the command line inside a handler of Ctrl-C.

Importing ``evo_cli.cli.main`` (click and every command's module) takes a noticeable part of a second on a
loaded machine; a Ctrl-C during it, before ``main`` could handle anything, printed a KeyboardInterrupt
traceback. Only the standard library is imported here, before that handler starts.
"""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from evo_cli.cli.main import main as run

        run()
    except KeyboardInterrupt:  # during the import (run handles Ctrl-C itself once it runs)
        sys.stderr.write("evo: interrupted\n")
        sys.exit(130)
