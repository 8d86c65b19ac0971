"""The ``evo`` command: a click group whose commands parse options and call the Python API.

Errors the user can fix (``EvoError``, usage errors) end with one line on stderr and a non-zero exit;
an unexpected failure prints one line too, and its traceback with ``-v``.
"""

from __future__ import annotations

import logging
import sys

import click

from evo_cli._version import __version__
from evo_cli.errors import EvoError

from .commands import COMMANDS


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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


def configure_logging(obj: dict) -> None:
    level = logging.ERROR if obj.get("quiet") else (logging.DEBUG if obj.get("verbose", 0) > 1 else
                                                     logging.INFO if obj.get("verbose") else logging.WARNING)
    logging.basicConfig(format="evo: %(message)s", level=level, stream=sys.stderr, force=True)


for _command in COMMANDS:
    cli.add_command(_command)


def main(argv=None) -> None:
    verbose = any(a in ("-v", "-vv", "--verbose") for a in (argv if argv is not None else sys.argv[1:]))
    try:
        cli.main(args=argv, prog_name="evo", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("evo: aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except EvoError as e:
        click.echo(f"evo: error: {e}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("evo: interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(141)
    except Exception as e:  # a bug or an environment failure: one line unless -v
        if verbose:
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        click.echo(f"evo: error: {type(e).__name__}: {msg} (run with -v for the traceback)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
