"""What every command shares: output (text, one JSON document, errors), common options,
the error contract, opening the database, progress bars."""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, cast

import click

from speakerdb.errors import AudioError, SpeakerDBError, UsageError, printable

if TYPE_CHECKING:
    from speakerdb import ProgressBar
    from speakerdb.enroll import SpeakerDB

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK, EXIT_NO, EXIT_ERROR = 0, 1, 2


class Failure(click.ClickException):
    """An error already reported; exits with status 2."""

    exit_code = EXIT_ERROR


# --- output -------------------------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def _clean(value: Any) -> Any:
    """Non-finite floats become null: JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def emit_json(document: Any) -> None:
    click.echo(json.dumps(_clean(document), default=_json_default, ensure_ascii=False, indent=None))


def error_object(exc: SpeakerDBError) -> dict[str, Any]:
    body: dict[str, Any] = {"code": exc.code, "message": exc.message}
    if isinstance(exc, AudioError):
        body["source"] = exc.source
    return body


def show(path: object) -> str:
    """A path (or name) for one line of text output: control characters escaped."""
    return printable(str(path))


def warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


def fail(exc: SpeakerDBError, as_json: bool) -> NoReturn:
    if as_json:
        emit_json({"error": error_object(exc)})
    raise Failure(exc.message)


def per_file(
    results: Sequence[Any], as_json: bool, render: Callable[[Any], str], ok: Callable[[Any], bool]
) -> int:
    """Print one result per file (a list in JSON when several), return the exit status."""
    documents = []
    status = EXIT_OK
    for result in results:
        if isinstance(result, SpeakerDBError):
            documents.append(
                {"source": getattr(result, "source", None), "error": error_object(result)}
            )
            if not as_json:
                click.echo(f"error: {result.message}", err=True)
            status = EXIT_ERROR
            continue
        documents.append(result.to_dict())
        if not as_json:
            click.echo(render(result))
        if not ok(result) and status == EXIT_OK:
            status = EXIT_NO
    if as_json:
        emit_json(documents[0] if len(documents) == 1 else documents)
    return status


# --- common options -----------------------------------------------------------------------------


_TENANT = "speakerdb.tenant"


def _remember_tenant(context: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        context.meta[_TENANT] = value


def tenant_option(fn: F) -> F:
    """``--tenant NAME`` ($SPEAKERDB_TENANT): the tenant :func:`open_db` opens the database
    in (kept in the click context, not passed to the command)."""
    return click.option(
        "--tenant",
        metavar="NAME",
        envvar="SPEAKERDB_TENANT",
        expose_value=False,
        callback=_remember_tenant,
        help="Tenant (domain) to act in: its speakers, keys, calibration, settings and audit "
        "log only. Default: $SPEAKERDB_TENANT, else default.",
    )(fn)


def chosen_tenant() -> str | None:
    """The ``--tenant`` given to the running command, if any."""
    context = click.get_current_context(silent=True)
    if context is None:
        return None
    value = context.meta.get(_TENANT)
    return None if value is None else str(value)


def db_option(fn: F) -> F:
    fn = tenant_option(fn)
    return click.option(
        "--db",
        "db_url",
        metavar="URL",
        envvar="SPEAKERDB_URL",
        help="Database: a SQLite file path, sqlite:///FILE or postgresql+psycopg://USER@HOST/DB. "
        "Default: $SPEAKERDB_URL, else ~/.local/share/speakerdb/speakerdb.sqlite.",
    )(fn)


def json_option(fn: F) -> F:
    return click.option(
        "--json", "as_json", is_flag=True, help="Print one JSON document on stdout."
    )(fn)


def device_option(fn: F) -> F:
    return click.option(
        "--device",
        metavar="DEVICE",
        default=None,
        help="Torch device for the model: cpu, cuda, cuda:1 ... Default: CUDA if available.",
    )(fn)


def threshold_option(fn: F) -> F:
    return click.option(
        "--threshold",
        type=float,
        default=None,
        metavar="T",
        help="Decision threshold on the scale of the rule in use: an LLR when a calibration "
        "applies (see `speakerdb calibrate --show`), else a cosine score (-1..1) or, with "
        "--norm asnorm, a z-score. Overrides --prior and --far.",
    )(fn)


def operating_point_options(fn: F) -> F:
    """--prior and --far: a calibrated decision at another operating point, for one call."""
    fn = click.option(
        "--far",
        type=click.FloatRange(0, 1, min_open=True, max_open=True),
        default=None,
        metavar="F",
        help="Decide at the LLR threshold where the calibration's impostor trials were "
        "accepted at rate F (e.g. 0.01). Default: the database's operating point.",
    )(fn)
    return click.option(
        "--prior",
        type=click.FloatRange(0, 1, min_open=True, max_open=True),
        default=None,
        metavar="P",
        help="Decide at the Bayes threshold of target prior P with unit costs, "
        "llr >= ln((1-P)/P) (0.01 -> 4.6). Default: the database's operating point. "
        "A database deciding on cosine scores uses the bundled calibration for this call.",
    )(fn)


def rule_text(result: Any) -> str:
    """The end of a decision's text line: raw cosine, LLR and the rule."""
    llr = f"  llr {result.llr:.3f}" if result.llr is not None else ""
    cos = f"  cosine {result.cosine:.4f}" if result.cosine is not None else ""
    return f"{cos}{llr}  [{result.decision_rule.text}]"


def model_option(fn: F) -> F:
    return click.option(
        "--model",
        "model_name",
        default=None,
        metavar="NAME|PATH",
        help="Embedding model: a built-in name (ge2e) or the path of a NeMo .nemo archive, "
        "a SpeechBrain model folder or a WeSpeaker ONNX file. Default: the database's own "
        "model, else $SPEAKERDB_MODEL, else ge2e.",
    )(fn)


def norm_options(fn: F) -> F:
    fn = click.option(
        "--cohort",
        type=click.Path(path_type=Path),
        default=None,
        metavar="M.jsonl",
        help="With --norm: impostor recordings (a NeMo manifest) to normalise against. "
        "Default: the enrolled speakers' voiceprints.",
    )(fn)
    fn = click.option(
        "--cohort-size",
        type=click.IntRange(2, 100_000),
        default=100,
        show_default=True,
        help="With --norm: the N most similar cohort voiceprints used per side.",
    )(fn)
    return click.option(
        "--norm",
        type=click.Choice(["none", "asnorm"]),
        default="none",
        show_default=True,
        help="Score normalisation: asnorm = adaptive symmetric normalisation against an "
        "impostor cohort (scores become z-scores with thresholds of their own).",
    )(fn)


def decision_options(fn: F) -> F:
    """--threshold, --prior, --far, --norm, --cohort-size and --cohort, read once into one
    :class:`~speakerdb.decisions.DecisionOptions` that the command gets as ``options``
    (validated here: a bad combination is an error before anything else is done)."""

    @functools.wraps(fn)
    def build(*args: Any, **kwargs: Any) -> Any:
        from speakerdb.decisions import DecisionOptions

        given = {key: kwargs.pop(key) for key in _DECISION_FLAGS}
        if given["cohort"] is not None and kwargs.get("server") is not None:
            raise UsageError("--cohort names local files: it does not go with --server")
        options = DecisionOptions.of(
            given["threshold"],
            prior=given["prior"],
            far=given["far"],
            norm=given["norm"],
            cohort=cohort_files(given["cohort"]),
            cohort_size=given["cohort_size"],
        )
        return fn(*args, options=options, **kwargs)

    wrapped = cast(F, handles_errors(build))  # functools.wraps loses F's signature
    return threshold_option(operating_point_options(norm_options(wrapped)))


_DECISION_FLAGS = ("threshold", "prior", "far", "norm", "cohort", "cohort_size")


def cohort_files(cohort: Path | None) -> list[Path] | None:
    if cohort is None:
        return None
    from speakerdb.enroll import read_manifest

    return [entry.path for entry in read_manifest(cohort)]


def handles_errors(fn: F) -> F:
    """Turn library errors into `error: ...` and exit status 2 (JSON error on stdout too)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SpeakerDBError as exc:
            context = click.get_current_context(silent=True)
            if context is not None and (context.find_root().obj or {}).get("debug"):
                raise
            fail(exc, bool(kwargs.get("as_json")))

    return wrapper  # type: ignore[return-value]  # functools.wraps loses F's signature


def open_db(
    db_url: str | None,
    model_name: str | None = None,
    device: str | None = None,
    *,
    read_only: bool = False,
    missing_ok: bool = False,
) -> SpeakerDB:
    """The database of a command. Commands that only read pass ``read_only`` (nothing is
    created, migrated or written; a missing database is an error), and those that can work
    without a database (compare, eval) also ``missing_ok``."""
    from speakerdb.enroll import SpeakerDB

    return SpeakerDB.open(
        db_url,
        model=model_name,
        device=device,
        read_only=read_only,
        missing_ok=missing_ok,
        tenant=chosen_tenant(),
    )


def progress_bar(label: str) -> ProgressBar:
    """A ``(done, total)`` callback drawing a bar on stderr when it is a terminal."""
    from speakerdb import ProgressBar

    return ProgressBar(label)
