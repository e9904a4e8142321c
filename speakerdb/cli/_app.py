"""The ``speakerdb`` group, its error contract, and the entry point."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import click

from speakerdb import __version__
from speakerdb.cli._common import EXIT_ERROR, EXIT_OK, Failure
from speakerdb.errors import SpeakerDBError

__all__ = ["cli", "main"]


class _Group(click.Group):
    """Runs a command and owns the error contract: one line ``error: ...`` on stderr and exit
    status 2 for any failure, a traceback only with ``--debug``."""

    def main(  # type: ignore[override]
        self, args: Sequence[str] | None = None, prog_name: str | None = None, **extra: Any
    ) -> NoReturn:
        argv = list(sys.argv[1:] if args is None else args)
        debug = "--debug" in argv[: argv.index("--")] if "--" in argv else "--debug" in argv
        extra.pop("standalone_mode", None)
        try:
            result = super().main(argv, prog_name or "speakerdb", standalone_mode=False, **extra)
        except Failure as exc:
            click.echo(f"error: {exc.message}", err=True)
            sys.exit(EXIT_ERROR)
        except click.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            click.echo(f"error: {exc.format_message()}{hint}", err=True)
            sys.exit(EXIT_ERROR)
        except click.ClickException as exc:
            click.echo(f"error: {exc.format_message()}", err=True)
            sys.exit(EXIT_ERROR)
        except click.exceptions.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(EXIT_ERROR)
        except SpeakerDBError as exc:
            if debug:
                raise
            click.echo(f"error: {exc.message}", err=True)
            sys.exit(EXIT_ERROR)
        except (KeyboardInterrupt, BrokenPipeError):
            sys.exit(EXIT_ERROR)
        except Exception as exc:
            if debug:
                raise
            text = " ".join(str(exc).split()) or type(exc).__name__
            click.echo(
                f"error: internal error ({type(exc).__name__}: {text}); run with --debug for "
                "the traceback",
                err=True,
            )
            sys.exit(EXIT_ERROR)
        sys.exit(result if isinstance(result, int) else EXIT_OK)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="speakerdb")
@click.option("--debug", is_flag=True, help="Show tracebacks of errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """speakerdb: a speaker enrollment database.

    Enroll speakers from recordings, verify that a recording is an enrolled speaker, compare
    two recordings, and identify who is speaking among everyone enrolled.

    Exit status: 0 accepted / same / known, 1 rejected / different / unknown, 2 error.
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def _register() -> None:
    from speakerdb.cli import (
        _audit,
        _db,
        _decide,
        _diarize,
        _embed,
        _enroll,
        _evaluate,
        _keys,
        _listen,
        _models,
        _serve,
        _speakers,
        _spoof,
        _watchlist,
    )

    for command in (
        _enroll.enroll,
        _decide.verify,
        _decide.identify,
        _listen.listen,
        _decide.compare,
        _embed.embed,
        _evaluate.eval_command,
        _evaluate.calibrate,
        _diarize.diarize,
        _diarize.eval_diarization,
        _speakers.speakers,
        _db.db,
        _models.models,
        _spoof.spoof,
        _keys.keys,
        _audit.audit,
        _watchlist.watchlist,
        _serve.serve,
    ):
        cli.add_command(command)


_register()


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point (``speakerdb`` and ``python -m speakerdb``)."""
    cli.main(args=list(sys.argv[1:] if argv is None else argv), prog_name="speakerdb")
