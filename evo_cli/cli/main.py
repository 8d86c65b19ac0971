"""The ``evo`` command: a click group whose commands parse options and call the Python API.

Errors the user can fix end with one line on stderr and a non-zero exit: 2 for a wrong command line
(click's usage errors and ``OptionError``, with a hint to ``--help``), 1 for anything else (``EvoError``:
inputs, models, outputs); an unexpected failure prints one line too (exit 1), and its traceback with ``-v``.
"""

from __future__ import annotations

import io
import logging
import os
import re
import signal
import sys
import threading

import click

from evo_cli._version import __version__
from evo_cli.errors import EvoError, OptionError

from .commands import COMMANDS


class _StdoutClosed(Exception):
    """The reader of our output went away (``evo models | head``): EPIPE, turned into this so that
    click's own EPIPE handling (exit 1) does not swallow it."""


class _EndOfFile(Exception):
    """An EOFError inside a command (a library reading a cut file: pandas on a truncated .gz), which
    click would take for Ctrl-D at a prompt ("interrupted", exit 130); evo never prompts."""

    def __init__(self, error: EOFError):
        super().__init__(str(error))
        self.error = error


class _Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a scheduler's time limit, ``docker stop``), raised where the run is so that it
    stops as Ctrl-C does: temporaries removed, the progress file named for --resume, one line, exit 143.
    A KeyboardInterrupt, so that every handler of Ctrl-C (click's, ``hint_on_interrupt``) takes it too."""


def _terminate(signum, frame):
    raise _Terminated()


# set by our SIGINT handler: Ctrl-C landing inside a third-party import (numba loading scipy, say) can
# leave a half-initialised module whose next use fails with another exception (a RecursionError in
# numpy's module __getattr__ was seen); that failure is the interruption, not a bug to report
_interrupted = {"seen": False}


def _interrupt(signum, frame):
    _interrupted["seen"] = True
    raise KeyboardInterrupt


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BrokenPipeError as err:
            raise _StdoutClosed() from err
        except EOFError as err:
            raise _EndOfFile(err) from err
        except OptionError as err:
            # found by the library, yet the command line's fault: a usage error as click's own (exit 2,
            # the same line and hint), whichever command found it
            name = ctx.invoked_subcommand
            command = self.get_command(ctx, name) if name else None
            sub = click.Context(command, info_name=name, parent=ctx) if command else ctx
            raise click.UsageError(str(err), ctx=sub) from None


# the verbosity the command line asked for (-v, -vv, -vq ... before or after the subcommand)
_verbosity = {"verbose": 0}


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="evo")
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug); tracebacks on errors.")
@click.option("-q", "--quiet", is_flag=True, help="Only errors on stderr; no progress bars.")
@click.pass_context
def cli(ctx, verbose, quiet):
    """Evo DNA language models: variant effects, likelihoods, embeddings and generation."""
    ctx.ensure_object(dict)
    ctx.obj.setdefault("verbose", verbose)
    ctx.obj.setdefault("quiet", quiet)
    configure_logging(ctx.obj)


def _name() -> str:
    """``evo``, or ``evo (rank N)`` on the ranks after the first of a torchrun run, whose lines would
    otherwise repeat rank 0's."""
    rank, world = os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1")
    return "evo" if rank == "0" or not world.isdigit() or int(world) < 2 else f"evo (rank {rank})"


def configure_logging(obj: dict) -> None:
    _verbosity["verbose"] = obj.get("verbose", 0)
    level = logging.ERROR if obj.get("quiet") else (logging.DEBUG if obj.get("verbose", 0) > 1 else
                                                     logging.INFO if obj.get("verbose") else logging.WARNING)
    logging.basicConfig(format=f"{_name()}: %(message)s", level=level, stream=sys.stderr, force=True)


for _command in COMMANDS:
    cli.add_command(_command)


# Spins of libgomp (torch's OpenMP on Linux) at the end of every parallel op before its threads sleep;
# its default, 300,000, lets a thread that waits for a busy core burn time slices the other threads
# need: with one other process running on a 2-core machine the quick start took 22-30 s of wall time
# instead of 3.7-4.3. 2,000 keeps the idle machine's times and ended those runs in 5.8-6 s
# (benchmarks/README.md, ninth round).
_GOMP_SPINCOUNT = "2000"


def _calm_openmp() -> None:
    """Bound OpenMP's spin-waiting, unless the user chose a wait policy; read when torch loads its
    OpenMP library, so before the first ``import torch`` (commands import it when they run)."""
    if "OMP_WAIT_POLICY" not in os.environ and "torch" not in sys.modules:
        os.environ.setdefault("GOMP_SPINCOUNT", _GOMP_SPINCOUNT)


def main(argv=None) -> None:
    _verbosity["verbose"] = 0
    _interrupted["seen"] = False
    _calm_openmp()
    # SIGTERM left at its default would end the process on the spot, without a word and leaving its
    # temporaries; one set to be ignored (nohup-like launchers) stays ignored
    main_thread = threading.current_thread() is threading.main_thread()
    catch = main_thread and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    if catch:
        signal.signal(signal.SIGTERM, _terminate)
    # Python's own Ctrl-C handler, replaced by one that also records the interruption (an ignored SIGINT,
    # as in a background job, stays ignored)
    catch_int = main_thread and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    if catch_int:
        signal.signal(signal.SIGINT, _interrupt)
    try:
        _run(argv)
        sys.stdout.flush()  # a closed pipe shows here for output still in the buffer
    except (_StdoutClosed, BrokenPipeError):
        _quiet_stdout()
        sys.exit(141)  # 128 + SIGPIPE, what a shell reports for a writer killed by a closed pipe
    except _Terminated:  # after the command, flushing stdout
        click.echo(f"{_name()}: terminated", err=True)
        sys.exit(143)
    finally:
        if catch:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if catch_int:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def _run(argv) -> None:
    try:
        cli.main(args=argv, prog_name="evo", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.Abort as e:
        # click turns Ctrl-C (and EOF at a prompt) into Abort
        if isinstance(e.__cause__, _Terminated):
            click.echo(f"{_name()}: terminated", err=True)
            sys.exit(143)  # 128 + SIGTERM, what a shell reports for a process that SIGTERM ended
        interrupted = isinstance(e.__cause__, (KeyboardInterrupt, EOFError))
        click.echo(f"{_name()}: interrupted" if interrupted else f"{_name()}: aborted", err=True)
        sys.exit(130)
    except click.exceptions.NoArgsIsHelpError as e:  # `evo` alone: the help text
        e.show()
        sys.exit(e.exit_code)
    except click.UsageError as e:
        # one line, as for every other error, with where to look
        hint = f" (see `{e.ctx.command_path} --help`)" if e.ctx is not None else ""
        click.echo(f"{_name()}: error: {' '.join(e.format_message().split())}{hint}", err=True)
        sys.exit(e.exit_code)
    except click.ClickException as e:  # click's other errors: the same one line as ours, not "Error: ..."
        click.echo(f"{_name()}: error: {' '.join(e.format_message().split())}", err=True)
        sys.exit(e.exit_code)
    except EvoError as e:
        click.echo(f"{_name()}: error: {e}", err=True)
        sys.exit(1)
    except KeyboardInterrupt as e:  # outside a command (click turns those into Abort)
        terminated = isinstance(e, _Terminated)
        click.echo(f"{_name()}: terminated" if terminated else f"{_name()}: interrupted", err=True)
        sys.exit(143 if terminated else 130)
    except _StdoutClosed:
        raise
    except Exception as e:  # a bug or an environment failure: one line unless -v
        if _interrupted["seen"] and not _verbosity["verbose"]:  # a failure that Ctrl-C caused (see _interrupt)
            click.echo(f"{_name()}: interrupted", err=True)
            sys.exit(130)
        if _verbosity["verbose"]:
            raise
        if isinstance(e, _EndOfFile):
            e = e.error
        if (oom := _out_of_memory(e)) is not None:
            click.echo(f"{_name()}: error: out of memory{oom}: use shorter sequences or windows, a smaller --batch-size, "
                       "or a device with more memory", err=True)
            sys.exit(1)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        click.echo(f"{_name()}: error: {type(e).__name__}: {msg} (run with -v for the traceback)", err=True)
        sys.exit(1)


def _out_of_memory(e: Exception) -> str | None:
    """None unless ``e`` is a failed allocation (host or GPU); else how much it asked for, when it says."""
    torch = sys.modules.get("torch")
    text = str(e)
    if not (isinstance(e, MemoryError) or (torch is not None and isinstance(e, torch.OutOfMemoryError))
            or (isinstance(e, RuntimeError) and "can't allocate memory" in text)):
        return None
    asked = re.search(r"allocate (\d+) bytes", text) or re.search(r"allocate ([\d.]+ [KMGT]iB)", text)
    if asked is None:
        return ""
    size = asked.group(1)
    if not size.isdigit():
        return f" (an allocation of {size} failed)"
    # a host allocation that failed under a memory limit may be small: "0.0 GiB" would say nothing
    n = int(size)
    for unit, b in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= b:
            return f" (an allocation of {n / b:,.1f} {unit} failed)"
    return f" (an allocation of {n} bytes failed)"


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush does not fail again."""
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())
        os.close(fd)
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        pass


if __name__ == "__main__":
    main()
