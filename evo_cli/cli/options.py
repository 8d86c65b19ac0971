"""Options shared by the model commands, and helpers every command uses."""

from __future__ import annotations

import contextlib
import functools
import shlex
import sys
import time
from typing import Any, Iterable

import click

# evo_cli.kernels.BACKENDS, spelled out here because importing evo_cli.kernels imports torch, which
# would cost every command (even `evo --help`) a second; tests check that the two agree
KERNEL_BACKENDS = ("auto", "triton", "numba", "torch")
FP8_MODES = ("auto", "emulate", "native", "off")  # evo_cli.kernels.FP8_MODES, for the same reason


def model_options(f):
    """``--model --device --dtype --kernels --fp8`` plus ``-v/-q``, on every command that runs a model.

    ``--fp8`` is not passed to the command: ``load_model_cli`` reads it from the click context."""

    @click.option("-m", "--model", "model", required=True, metavar="NAME|PATH",
                  help="Published model name (see `evo models`) or a checkpoint file / directory.")
    @click.option("--device", default="auto", show_default=True, metavar="auto|cpu|cuda[:N][,...]",
                  callback=check_device,
                  help="Where to run; auto picks the first GPU (the first few when one cannot hold the model), "
                       "else the CPU. A comma-separated list (cuda:0,cuda:1) splits the model's blocks over them.")
    @click.option("--devices-per-rank", type=click.IntRange(min=1), default=None, metavar="K", expose_value=False,
                  callback=_set_devices_per_rank,
                  help="Split the model over K GPUs per process; under torchrun local rank r gets cuda:rK..cuda:rK+K-1.")
    @click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16"]), default="auto", show_default=True,
                  help="Weights and activations; auto is float32 on CPU, bfloat16 on GPUs.")
    @click.option("--kernels", type=click.Choice(KERNEL_BACKENDS), default=None,
                  help="Fused ops: Triton on GPUs, numba on CPUs, or plain PyTorch (torch) [default: $EVO_KERNELS or auto].")
    @click.option("--fp8", type=click.Choice(FP8_MODES), default=None,
                  help="FP8 projections of Evo 2 1B/20B/40B: native on sm_89/sm_90 GPUs, emulate (mmaemu) "
                       "anywhere, off [default: $EVO_FP8 or auto].")
    @verbosity_options
    @functools.wraps(f)
    def wrapper(*args, fp8=None, **kwargs):
        click.get_current_context().meta["evo.fp8"] = fp8
        return f(*args, **kwargs)

    return wrapper


def check_device(_ctx, _param, value):
    """Parse-time check of ``--device`` (one device or a comma-separated list) against the devices this
    torch has (a usage error naming them)."""
    if value in (None, "auto"):
        return value
    from evo_cli.errors import InputError
    from evo_cli.runtime import resolve_devices

    try:
        resolve_devices(value)
    except InputError as err:
        raise click.BadParameter(str(err)) from None
    return value


def parse_regions(_ctx, _param, values):
    """Click callback: ``--region`` texts -> ``Region`` objects; one that does not parse is a usage error."""
    from evo_cli.errors import InputError
    from evo_cli.io.vcf import parse_region

    try:
        return tuple(parse_region(v) for v in values)
    except InputError as err:
        raise click.BadParameter(str(err)) from None


region_option = click.option(
    "--region", "regions", multiple=True, metavar="CHR:START-END", callback=parse_regions,
    help="Only variants in this region (chr, chr:start or chr:start-end; 1-based, inclusive; repeatable).")


def _set_devices_per_rank(ctx, _param, value):
    # kept beside -v/-q rather than passed to every command: only load_model_cli needs it
    if value is not None:
        ctx.ensure_object(dict)["devices_per_rank"] = value


def verbosity_options(f):
    """``-v/-q`` accepted after the subcommand too (``evo score -q ...``)."""

    def set_verbose(ctx, _param, value):
        if value:
            ctx.ensure_object(dict)["verbose"] = max(ctx.obj.get("verbose", 0), value)
            _reconfigure(ctx)

    def set_quiet(ctx, _param, value):
        if value:
            ctx.ensure_object(dict)["quiet"] = True
            _reconfigure(ctx)

    f = click.option("-v", "--verbose", count=True, expose_value=False, callback=set_verbose,
                     help="More logging (-vv for debug); tracebacks on errors.")(f)
    return click.option("-q", "--quiet", is_flag=True, expose_value=False, callback=set_quiet,
                        help="Only errors on stderr; no progress bars.")(f)


def _reconfigure(ctx):
    from .main import configure_logging

    configure_logging(ctx.obj)


def _long_flag(opts: list[str]) -> str:
    return next((o for o in opts if o.startswith("--")), opts[0])


def command_line(ctx: click.Context | None = None, *, skip: Iterable[str] = (),
                 values: dict[str, Any] | None = None) -> str:
    """The command line that reruns this invocation: ``evo <command>`` and every option that has a
    value (defaults included, so the record does not depend on a later version's defaults), spelled
    with its first long flag and quoted for a POSIX shell.

    Boolean flags appear bare when on (a ``--x/--no-x`` pair as either form when it has a value),
    repeated options once per value, options without a value (None, empty) not at all. ``skip``:
    parameter names to leave out (e.g. ``resume``); ``values``: parameter values to record instead
    of the parsed ones (e.g. resolved layer names), and of options the command does not receive
    (``--devices-per-rank``), which are recorded only when given here."""
    ctx = ctx or click.get_current_context()
    given = values or {}
    values = {**ctx.params, **given}
    args = ["evo", ctx.info_name]
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or param.name in skip or not (param.expose_value or param.name in given):
            continue
        value = values.get(param.name)
        if param.is_flag and not param.count:
            if param.secondary_opts and value is not None:
                args.append(_long_flag(param.opts if value else param.secondary_opts))
            elif value and not param.secondary_opts:
                args.append(_long_flag(param.opts))
            continue
        for v in (value if param.multiple else [value]) if value is not None else []:
            args += [_long_flag(param.opts), str(v)]
    return shlex.join(args)


def full_command(model, **values) -> str:
    """``command_line`` for a run of the loaded ``model``: every option with its value, the runtime
    choices resolved (``--kernels``, ``--fp8``) as well as ``values``; ``--resume`` is left out, since
    a resumed run writes the same bytes as an uninterrupted one."""
    from evo_cli.runs import kernel_backend

    return command_line(values={"kernels": kernel_backend(model), "fp8": getattr(model, "fp8", None),
                                "devices_per_rank": _devices_per_rank(), **values}, skip=("resume",))


def _devices_per_rank() -> int | None:
    """``--devices-per-rank`` as given (``_set_devices_per_rank`` keeps it on the root context), or None."""
    ctx = click.get_current_context(silent=True)
    return ctx.find_root().obj.get("devices_per_rank") if ctx and ctx.find_root().obj else None


def is_quiet() -> bool:
    ctx = click.get_current_context(silent=True)
    return bool(ctx and ctx.find_root().obj and ctx.find_root().obj.get("quiet"))


def load_model_cli(model, device, dtype, kernels, state_tokens: int | None = None):
    """Load a model with a spinner on stderr (nothing with -q); ``--devices-per-rank`` and ``--fp8`` from
    the context. Launched by torchrun, first join the job (``distributed.py``): the model goes on this
    rank's device(s), and only rank 0 reports.

    state_tokens: the longest KV cache the run will hold (positions x batch rows), so that a model
    split over several devices is balanced for it."""
    from evo_cli import distributed, load_model
    from evo_cli.runtime import fit_threads_to_cpus, keep_freed_memory

    keep_freed_memory()
    fit_threads_to_cpus()
    ctx = click.get_current_context(silent=True)
    per_rank = _devices_per_rank()
    fp8 = ctx.meta.get("evo.fp8") if ctx else None
    device = distributed.setup(device, per_rank)
    if ctx is not None and not distributed.is_leader():
        ctx.find_root().obj["quiet"] = True
        _reconfigure(ctx.find_root())
    with status(f"loading {model}"):
        extra = {} if state_tokens is None else {"state_tokens": max(1, state_tokens)}
        return load_model(model, device=device, dtype=dtype, kernels=kernels, devices_per_rank=per_rank, fp8=fp8,
                          **extra)


@contextlib.contextmanager
def status(message: str):
    if is_quiet() or not sys.stderr.isatty():
        yield
        return
    from rich.console import Console

    with Console(stderr=True).status(message):
        yield


# on a non-terminal stderr (a batch job's log) rich draws the bar only when it ends: a plain line this often
PROGRESS_LINE_SECONDS = 60.0


@contextlib.contextmanager
def progress_bar(description: str, total: int | None, unit: str):
    """A rich progress bar on stderr with a rate in ``unit``/s; yields ``advance(n)``.

    Silent with -q; on a non-terminal stderr rich prints only the final state, so a line
    ``evo: <description> done/total unit (pct%), rate`` is written every ``PROGRESS_LINE_SECONDS``."""
    if is_quiet():
        yield lambda n=1: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    done = "{task.completed:,.0f}/{task.total:,.0f} " if total is not None else "{task.completed:,.0f} "
    columns = [TextColumn("{task.description}"), BarColumn(), TextColumn(done + unit),
               TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn()]
    console = Console(stderr=True)
    with Progress(*columns, console=console, transient=False) as prog:
        task = prog.add_task(description, total=total, rate="")
        calls = [0]
        last_line = [time.monotonic()]

        def advance(n=1):
            prog.advance(task, n)
            calls[0] += 1
            # rich's windowed speed, not completed / elapsed: work restored by --resume arrives at once;
            # a run done in one step has no window, and its one step is its own work
            t = prog.tasks[task]
            speed = t.speed if calls[0] > 1 else (t.completed / t.elapsed if t.elapsed else None)
            if speed is not None:
                prog.update(task, rate=f"{speed:,.1f} {unit}/s")
            now = time.monotonic()
            if not console.is_terminal and now - last_line[0] >= PROGRESS_LINE_SECONDS:
                last_line[0] = now
                done = f"{t.completed:,.0f}/{t.total:,.0f} {unit} ({t.percentage:.1f}%)" if total is not None \
                    else f"{t.completed:,.0f} {unit}"
                echo(f"{description} {done}" + (f", {speed:,.1f} {unit}/s" if speed is not None else ""))

        yield advance


def echo(message: str) -> None:
    """``evo: message`` on stderr, unless -q."""
    if not is_quiet():
        click.echo(f"evo: {message}", err=True)


@contextlib.contextmanager
def hint_on_interrupt(output):
    """On Ctrl-C, say where an interrupted run's progress is kept (``io/partial.py``) and how to resume."""
    try:
        yield
    except KeyboardInterrupt:
        from evo_cli.io.partial import progress_files

        files = progress_files(output) if output != "-" else []
        if files:
            echo(f"progress is kept in {files[0]}: add --resume to the same command to continue")
        raise
