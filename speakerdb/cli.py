"""The ``speakerdb`` command line: a thin click layer over :class:`speakerdb.SpeakerDB`.

Each command parses its arguments, calls the library, and prints text or (``--json``) one
JSON document on stdout. Exit status, like grep: 0 accepted / same speaker / known speaker,
1 rejected / different / unknown, 2 any error. Errors are one line, ``error: ...``, on stderr
(``--debug`` shows the traceback). Heavy modules (torch, SQLAlchemy) are imported only by the
commands that need them, so ``speakerdb --help`` starts quickly.
"""

from __future__ import annotations

import functools
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from speakerdb import __version__
from speakerdb.errors import AudioError, SpeakerDBError, UsageError

RECOMMENDED_SPEECH_SECONDS = 8.0  # kept equal to speakerdb.enroll.RECOMMENDED_SPEECH_SECONDS

if TYPE_CHECKING:
    from speakerdb.enroll.facade import SpeakerDB
    from speakerdb.enroll.reports import EnrollmentReport

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


def warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


def fail(exc: SpeakerDBError, as_json: bool) -> NoReturn:
    if as_json:
        emit_json({"error": error_object(exc)})
    raise Failure(exc.message)


# --- common options -----------------------------------------------------------------------------


def db_option(fn: F) -> F:
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
        help="Decision threshold (cosine score, -1..1). Default: the database's calibrated "
        "threshold, else the model's.",
    )(fn)


def model_option(fn: F) -> F:
    return click.option(
        "--model",
        "model_name",
        default=None,
        metavar="NAME",
        help="Embedding model (default: the database's, else ge2e).",
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


def _cohort_files(cohort: Path | None) -> list[Path] | None:
    if cohort is None:
        return None
    from speakerdb.enroll.lists import read_manifest

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

    return wrapper  # type: ignore[return-value]


def open_db(
    db_url: str | None, model_name: str | None = None, device: str | None = None
) -> SpeakerDB:
    from speakerdb.enroll.facade import SpeakerDB

    return SpeakerDB.open(db_url, model=model_name, device=device)


def progress_bar(total: int, label: str) -> Any:
    from speakerdb.progress import ProgressBar

    return ProgressBar(total, label)


# --- the group ----------------------------------------------------------------------------------


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


# --- enroll -------------------------------------------------------------------------------------


def _parse_meta(items: Sequence[str]) -> dict[str, Any] | None:
    if not items:
        return None
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--meta expects KEY=VALUE, got {item!r}")
        out[key.strip()] = value
    return out


def _print_report(report: EnrollmentReport) -> None:
    verb = "created" if report.created else "updated" if report.changed else "unchanged"
    click.echo(
        f"{report.speaker}: {verb}, {report.accepted} accepted, {report.duplicates} duplicate, "
        f"{report.rejected} rejected; {report.utterances} recordings, "
        f"{report.total_speech_seconds:.1f} s of speech"
    )
    for item in report.inputs:
        if item.status == "duplicate":
            click.echo(f"  duplicate {item.source}: already enrolled")
        elif item.status == "skipped":
            click.echo(f"  skipped {item.source}: speaker exists (mode skip)")
    for message in report.warnings:
        warn(message)


def _little_speech(report: EnrollmentReport) -> bool:
    return 0 < report.total_speech_seconds < RECOMMENDED_SPEECH_SECONDS


def _report_rejections(reports: Sequence[EnrollmentReport]) -> None:
    for report in reports:
        for item in report.inputs:
            if item.status == "rejected":
                click.echo(f"error: {item.source}: {item.message}", err=True)


@cli.command()
@click.argument("name", required=False)
@click.argument("files", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--manifest",
    type=click.Path(path_type=Path),
    help="NeMo manifest (JSON lines with "
    "audio_filepath and label/speaker): enroll many speakers in one run.",
)
@click.option(
    "--mode",
    type=click.Choice(["append", "overwrite", "skip"]),
    default="append",
    show_default=True,
    help="append: add recordings (create if new); overwrite: replace "
    "them; skip: leave an existing speaker untouched.",
)
@click.option(
    "--meta",
    multiple=True,
    metavar="KEY=VALUE",
    help="Metadata to store with the speaker (repeatable).",
)
@db_option
@model_option
@device_option
@json_option
@handles_errors
def enroll(
    name: str | None,
    files: tuple[Path, ...],
    manifest: Path | None,
    mode: str,
    meta: tuple[str, ...],
    db_url: str | None,
    model_name: str | None,
    device: str | None,
    as_json: bool,
) -> None:
    """Enroll speaker NAME from FILE(s), or many speakers from --manifest.

    Unusable recordings are reported and skipped; if none is usable nothing changes.
    Recordings already enrolled for the speaker are recognised by their audio and not stored
    twice, so an interrupted --manifest run can simply be run again.
    """
    if manifest is not None:
        if name or files:
            raise UsageError("give either NAME FILE... or --manifest, not both")
        if meta:
            raise UsageError("--meta applies to NAME FILE... enrollment only")
        _enroll_manifest(manifest, mode, db_url, model_name, device, as_json)
        return
    if not name or not files:
        raise UsageError("usage: speakerdb enroll NAME FILE... (or --manifest M.jsonl)")
    metadata = _parse_meta(meta)
    with open_db(db_url, model_name, device) as db, progress_bar(len(files), "embedding") as bar:
        report = db.enroll(name, list(files), mode=mode, metadata=metadata, progress=bar)
    _report_rejections([report])
    if as_json:
        emit_json(report.to_dict())
    else:
        _print_report(report)
    if report.rejected or (report.accepted == 0 and not report.duplicates and mode != "skip"):
        sys.exit(EXIT_ERROR)


def _enroll_manifest(
    manifest: Path,
    mode: str,
    db_url: str | None,
    model_name: str | None,
    device: str | None,
    as_json: bool,
) -> None:
    from speakerdb.enroll.lists import read_manifest

    entries = read_manifest(manifest)
    with open_db(db_url, model_name, device) as db, progress_bar(len(entries), "enrolling") as bar:
        reports = db.enroll_manifest(entries, mode=mode, progress=bar)
    _report_rejections(reports)
    totals = {
        "speakers": len(reports),
        "files": len(entries),
        "accepted": sum(r.accepted for r in reports),
        "duplicates": sum(r.duplicates for r in reports),
        "rejected": sum(r.rejected for r in reports),
        "created": sum(1 for r in reports if r.created),
    }
    if as_json:
        emit_json({"summary": totals, "speakers": [r.to_dict() for r in reports]})
    else:
        short = [r.speaker for r in reports if r.changed and _little_speech(r)]
        for report in reports:
            if report.changed:
                for message in report.warnings:
                    if report.speaker not in short or "recommended" not in message:
                        warn(message)
        if short:
            listed = ", ".join(short[:10]) + (" ..." if len(short) > 10 else "")
            warn(
                f"{len(short)} speakers have less than "
                f"{RECOMMENDED_SPEECH_SECONDS:.0f} s of speech "
                f"(less reliable verification): {listed}"
            )
        click.echo(
            f"{totals['files']} files, {totals['speakers']} speakers ({totals['created']} new): "
            f"{totals['accepted']} accepted, {totals['duplicates']} already enrolled, "
            f"{totals['rejected']} rejected"
        )
    if totals["rejected"]:
        sys.exit(EXIT_ERROR)


# --- verify / identify / compare ----------------------------------------------------------------


def _per_file(
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


@cli.command()
@click.argument("name")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@db_option
@model_option
@device_option
@threshold_option
@norm_options
@json_option
@handles_errors
def verify(
    name: str,
    files: tuple[Path, ...],
    db_url: str | None,
    model_name: str | None,
    device: str | None,
    threshold: float | None,
    norm: str,
    cohort: Path | None,
    cohort_size: int,
    as_json: bool,
) -> None:
    """Is each FILE the enrolled speaker NAME? (exit 0 only if every file is accepted)"""
    with open_db(db_url, model_name, device) as db:
        results = db.verify_many(
            name,
            list(files),
            threshold,
            norm=norm,
            cohort=_cohort_files(cohort),
            cohort_size=cohort_size,
        )

    def render(v: Any) -> str:
        verdict = "ACCEPTED" if v.accepted else "REJECTED"
        return (
            f"{verdict}  {v.speaker}  {v.source}  score {v.score:.4f}  threshold {v.threshold:.4f}"
        )

    sys.exit(_per_file(results, as_json, render, lambda v: v.accepted))


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--top-k",
    "-k",
    type=click.IntRange(1, 1000),
    default=5,
    show_default=True,
    help="How many candidates to list.",
)
@db_option
@model_option
@device_option
@threshold_option
@norm_options
@json_option
@handles_errors
def identify(
    files: tuple[Path, ...],
    top_k: int,
    db_url: str | None,
    model_name: str | None,
    device: str | None,
    threshold: float | None,
    norm: str,
    cohort: Path | None,
    cohort_size: int,
    as_json: bool,
) -> None:
    """Who is speaking in each FILE? The best enrolled speaker if it reaches the threshold,
    else unknown. (exit 0 only if every file is a known speaker)"""
    with open_db(db_url, model_name, device) as db:
        results = db.identify_many(
            list(files),
            top_k,
            threshold,
            norm=norm,
            cohort=_cohort_files(cohort),
            cohort_size=cohort_size,
        )

    def render(r: Any) -> str:
        head = f"{r.best}" if r.best else "UNKNOWN"
        listing = ", ".join(f"{m.name} {m.score:.4f}" for m in r.matches) or "no speakers enrolled"
        return f"{head}  {r.source}  threshold {r.threshold:.4f}  [{listing}]"

    sys.exit(_per_file(results, as_json, render, lambda r: r.best is not None))


@cli.command()
@click.argument("a", required=False, type=click.Path(path_type=Path))
@click.argument("b", required=False, type=click.Path(path_type=Path))
@click.option(
    "--pairs",
    type=click.Path(path_type=Path),
    help="File of pairs: 'path_a path_b' or VoxCeleb '1|0 path_a path_b' lines, paths "
    "relative to the file's folder.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    help="With --pairs: write the score lines to this file instead of stdout.",
)
@model_option
@device_option
@threshold_option
@norm_options
@db_option
@json_option
@handles_errors
def compare(
    a: Path | None,
    b: Path | None,
    pairs: Path | None,
    out: Path | None,
    model_name: str | None,
    device: str | None,
    threshold: float | None,
    norm: str,
    cohort: Path | None,
    cohort_size: int,
    db_url: str | None,
    as_json: bool,
) -> None:
    """Are A and B the same speaker? Or score every pair of --pairs.

    --db matters only for its calibrated threshold (see `speakerdb calibrate`) and, with
    --norm asnorm and no --cohort, for its enrolled voiceprints as the cohort; no speaker is
    written. With --pairs, each output line is 'score decision path_a path_b'.
    """
    if pairs is None:
        if a is None or b is None:
            raise UsageError("usage: speakerdb compare A B (or --pairs FILE)")
        with open_db(db_url, model_name, device) as db:
            results = db.compare_batch(
                [(a, b)],
                threshold,
                norm=norm,
                cohort=_cohort_files(cohort),
                cohort_size=cohort_size,
            )

        def render(c: Any) -> str:
            verdict = "SAME" if c.same_speaker else "DIFFERENT"
            return f"{verdict}  score {c.score:.4f}  threshold {c.threshold:.4f}  {c.a}  {c.b}"

        sys.exit(_per_file(results, as_json, render, lambda c: c.same_speaker))
    if a is not None or b is not None:
        raise UsageError("give either A B or --pairs, not both")
    from speakerdb.enroll.lists import read_pairs

    trials = read_pairs(pairs)
    with open_db(db_url, model_name, device) as db:
        distinct = len({str(p) for t in trials for p in (t.a, t.b)})
        with progress_bar(distinct, "embedding") as bar:
            results = db.compare_batch(
                [(t.a, t.b) for t in trials],
                threshold,
                progress=bar,
                norm=norm,
                cohort=_cohort_files(cohort),
                cohort_size=cohort_size,
            )
    failures = [r for r in results if isinstance(r, SpeakerDBError)]
    if as_json:
        emit_json(
            [
                {"a": str(t.a), "b": str(t.b), "label": t.label, "error": error_object(r)}
                if isinstance(r, SpeakerDBError)
                else {**r.to_dict(), "label": t.label}
                for t, r in zip(trials, results, strict=True)
            ]
        )
    else:
        lines = []
        for t, r in zip(trials, results, strict=True):
            if isinstance(r, SpeakerDBError):
                lines.append(f"nan error {t.a} {t.b}")
                click.echo(f"error: {r.message}", err=True)
            else:
                lines.append(
                    f"{r.score:.6f} {'same' if r.same_speaker else 'different'} {t.a} {t.b}"
                )
        text = "\n".join(lines) + "\n"
        if out is not None:
            out.write_text(text)
        else:
            click.echo(text, nl=False)
    sys.exit(EXIT_ERROR if failures else EXIT_OK)


# --- embed --------------------------------------------------------------------------------------


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Where to write the (N, 256) float32 array (.npy), row i for FILE i.",
)
@model_option
@device_option
@json_option
@handles_errors
def embed(
    files: tuple[Path, ...], out: Path, model_name: str | None, device: str | None, as_json: bool
) -> None:
    """Write the voiceprints of FILE(s) to a .npy array (unit-norm rows, in order)."""
    import numpy as np

    from speakerdb.model.registry import DEFAULT_MODEL, load_model

    model = load_model(model_name or DEFAULT_MODEL, device)
    with progress_bar(len(files), "embedding") as bar:
        results = model.embed(list(files), progress=bar)
    failed = [r for r in results if r.error is not None]
    for r in failed:
        assert r.error is not None
        if not as_json:
            click.echo(f"error: {r.error.message}", err=True)
    if not failed:
        np.save(out, np.stack([r.vector for r in results]).astype(np.float32))
    if as_json:
        emit_json(
            {
                "out": str(out) if not failed else None,
                "model": model.identity.label,
                "files": [
                    {"source": r.source, "sha256": r.sha256, "speech_seconds": r.speech_seconds}
                    if r.error is None
                    else {"source": r.source, "error": error_object(r.error)}
                    for r in results
                ],
            }
        )
    elif not failed:
        click.echo(f"wrote {len(results)} x {model.dimension} voiceprints to {out}")
    if failed:
        sys.exit(EXIT_ERROR)


# --- eval / calibrate ---------------------------------------------------------------------------


def _load_trials(trials: Path | None, manifest: Path | None) -> list[Any]:
    from speakerdb.enroll.evaluation import trials_from_manifest
    from speakerdb.enroll.lists import read_manifest, read_trials

    if (trials is None) == (manifest is None):
        raise UsageError("give either TRIALS or --manifest M.jsonl")
    if manifest is not None:
        return trials_from_manifest(read_manifest(manifest))
    assert trials is not None
    return read_trials(trials, require_labels=True)


def _evaluation_text(report: Any) -> list[str]:
    lines = [
        f"model {report.model}"
        + (f", scores normalised with {report.normalization}" if report.normalization else ""),
        f"trials: {report.trials} scored ({report.target_trials} same speaker, "
        f"{report.nontarget_trials} different), {report.skipped_trials} skipped",
        f"EER:              {report.eer:.2%} at threshold {report.threshold:.4f}",
        f"minDCF (p=0.01):  {report.min_dcf:.4f} at threshold {report.min_dcf_threshold:.4f}",
        f"minDCF (p=0.05):  {report.min_dcf_p05:.4f}",
        f"threshold at {report.far:.2%} FAR: {report.threshold_at_far:.4f} "
        f"(FRR there {report.frr_at_far:.2%})",
        f"threshold in use: {report.threshold_in_use:.4f} -> "
        f"FAR {report.far_at_threshold_in_use:.2%}, FRR {report.frr_at_threshold_in_use:.2%}",
    ]
    for failure in report.failed_files:
        lines.append(f"unusable: {failure['path']}: {failure['reason']}")
    return lines


def _evaluation_options(fn: F) -> F:
    fn = click.option(
        "--far",
        type=click.FloatRange(0, 1, max_open=True),
        default=0.01,
        show_default=True,
        help="False-accept rate whose threshold is reported.",
    )(fn)
    fn = click.option(
        "--manifest",
        type=click.Path(path_type=Path),
        help="Instead of TRIALS: every pair of a NeMo manifest, labelled by speaker.",
    )(fn)
    return click.argument("trials", required=False, type=click.Path(path_type=Path))(fn)


@cli.command("eval")
@_evaluation_options
@click.option(
    "--scores",
    "scores_out",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write 'label score path_a path_b' per scored trial to this file.",
)
@click.option(
    "--plot",
    "plot_out",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Draw the DET curve and score histograms to this PNG (needs speakerdb[plot]).",
)
@click.option(
    "--set-default",
    is_flag=True,
    help="Also store the threshold at --far as this database's default (see calibrate).",
)
@norm_options
@db_option
@model_option
@device_option
@json_option
@handles_errors
def eval_command(
    trials: Path | None,
    manifest: Path | None,
    far: float,
    scores_out: Path | None,
    plot_out: Path | None,
    set_default: bool,
    norm: str,
    cohort: Path | None,
    cohort_size: int,
    db_url: str | None,
    model_name: str | None,
    device: str | None,
    as_json: bool,
) -> None:
    """Measure the model on labelled TRIALS ('1|0 path_a path_b' lines, VoxCeleb style):
    EER, minDCF, thresholds. Unusable files are reported, not fatal."""
    rows = _load_trials(trials, manifest)
    if plot_out is not None:
        from speakerdb.enroll.plot import plot_evaluation  # fail early if matplotlib is missing
    with open_db(db_url, model_name, device) as db:
        distinct = len({str(p) for t in rows for p in (t.a, t.b)})
        with progress_bar(distinct, "embedding") as bar:
            if set_default:
                _, report = db.calibrate(
                    rows, far, "far", norm, _cohort_files(cohort), cohort_size, bar
                )
            else:
                report = db.evaluate(rows, far, norm, _cohort_files(cohort), cohort_size, bar)
    if scores_out is not None:
        from speakerdb.enroll.evaluation import write_scores

        write_scores(report, scores_out)
    if plot_out is not None:
        plot_evaluation(report, plot_out)
    if as_json:
        emit_json(report.to_dict() | {"stored_as_default": set_default})
    else:
        for line in _evaluation_text(report):
            click.echo(line)
        if set_default:
            click.echo(f"stored {report.threshold_at_far:.4f} as this database's threshold")


@cli.command()
@_evaluation_options
@click.option(
    "--target",
    type=click.Choice(["far", "eer"]),
    default="far",
    show_default=True,
    help="far: the lowest threshold with at most --far false accepts; eer: the "
    "threshold at the equal error rate.",
)
@click.option(
    "--reset", is_flag=True, help="Forget the calibrated threshold (model default again)."
)
@norm_options
@db_option
@model_option
@device_option
@json_option
@handles_errors
def calibrate(
    trials: Path | None,
    manifest: Path | None,
    far: float,
    target: str,
    reset: bool,
    norm: str,
    cohort: Path | None,
    cohort_size: int,
    db_url: str | None,
    model_name: str | None,
    device: str | None,
    as_json: bool,
) -> None:
    """Choose this database's decision threshold on your own labelled TRIALS and store it;
    verify, compare and identify use it from then on (unless --threshold is given)."""
    if reset:
        with open_db(db_url, model_name, device) as db:
            db.reset_calibration(norm)
            used = db.default_threshold(norm)
        if as_json:
            emit_json(
                {
                    "threshold": used,
                    "calibrated": False,
                    "normalization": None if norm == "none" else norm,
                }
            )
        else:
            click.echo(f"calibration removed; the model's threshold {used:.4f} applies")
        return
    rows = _load_trials(trials, manifest)
    with open_db(db_url, model_name, device) as db:
        distinct = len({str(p) for t in rows for p in (t.a, t.b)})
        with progress_bar(distinct, "embedding") as bar:
            threshold, report = db.calibrate(
                rows, far, target, norm, _cohort_files(cohort), cohort_size, bar
            )
    if as_json:
        emit_json({"threshold": threshold, "calibrated": True} | report.to_dict())
    else:
        for line in _evaluation_text(report):
            click.echo(line)
        click.echo(f"stored threshold {threshold:.4f} for this database")


# --- speakers -----------------------------------------------------------------------------------


@cli.group()
def speakers() -> None:
    """List, show, rename and delete enrolled speakers."""


@speakers.command("list")
@db_option
@json_option
@handles_errors
def speakers_list(db_url: str | None, as_json: bool) -> None:
    """List enrolled speakers with their number of recordings."""
    with open_db(db_url) as db:
        records = db.speakers()
    if as_json:
        emit_json([r.to_dict() | {"utterances": r.utterances} for r in records])
        return
    for r in records:
        click.echo(f"{r.name}\t{r.utterances} recordings\t{r.speech_seconds:.1f} s speech")
    if not records:
        click.echo("no speakers enrolled", err=True)


@speakers.command("show")
@click.argument("name")
@db_option
@json_option
@handles_errors
def speakers_show(name: str, db_url: str | None, as_json: bool) -> None:
    """Show one speaker, with every enrolled recording."""
    with open_db(db_url) as db:
        record = db.speaker(name)
        recordings = db.utterances(name)
    if as_json:
        emit_json(record.to_dict() | {"recordings": [u.to_dict() for u in recordings]})
        return
    click.echo(f"{record.name} (id {record.id}, {record.status})")
    click.echo(
        f"  enrolled {record.created_at:%Y-%m-%d %H:%M:%S} UTC, "
        f"updated {record.updated_at:%Y-%m-%d %H:%M:%S} UTC"
    )
    click.echo(f"  {record.utterances} recordings, {record.speech_seconds:.1f} s of speech")
    if record.metadata:
        click.echo(f"  metadata: {json.dumps(record.metadata, ensure_ascii=False)}")
    for u in recordings:
        click.echo(f"  - {u.source or '<array>'}  {u.speech_seconds:.1f} s  sha256 {u.sha256[:12]}")


@speakers.command("rename")
@click.argument("old")
@click.argument("new")
@db_option
@json_option
@handles_errors
def speakers_rename(old: str, new: str, db_url: str | None, as_json: bool) -> None:
    """Rename speaker OLD to NEW (the voiceprint is kept)."""
    with open_db(db_url) as db:
        record = db.rename(old, new)
    if as_json:
        emit_json(record.to_dict())
    else:
        click.echo(f"renamed {old} to {record.name}")


@speakers.command("delete")
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@db_option
@json_option
@handles_errors
def speakers_delete(name: str, yes: bool, db_url: str | None, as_json: bool) -> None:
    """Delete speaker NAME and every voiceprint of it (SQL rows and index)."""
    with open_db(db_url) as db:
        db.speaker(name)  # not found -> error before asking
        if not yes:
            if not sys.stdin.isatty():
                raise UsageError(f"refusing to delete {name!r} without --yes (no terminal to ask)")
            click.confirm(f"Delete speaker {name!r} and all its voiceprints?", abort=True)
        record = db.delete(name)
    if as_json:
        emit_json({"deleted": record.to_dict()})
    else:
        click.echo(f"deleted {record.name} ({record.utterances} recordings)")


# --- db -----------------------------------------------------------------------------------------


@cli.group()
def db() -> None:
    """Database maintenance: upgrade the schema, check consistency, rebuild the index."""


@db.command("upgrade")
@db_option
@json_option
@handles_errors
def db_upgrade(db_url: str | None, as_json: bool) -> None:
    """Upgrade the database schema to this version of speakerdb (creates a fresh one)."""
    from speakerdb.storage.engine import create_database_engine
    from speakerdb.storage.location import resolve_location
    from speakerdb.storage.migrate import schema_status, upgrade

    location = resolve_location(db_url)
    engine = create_database_engine(location)
    try:
        with engine.connect() as conn:
            before = schema_status(conn).current
        after = upgrade(engine, location.display).current
    except SpeakerDBError:
        raise
    except Exception as exc:  # SQLAlchemy errors while connecting or migrating
        from speakerdb.storage.engine import store_error

        raise store_error(exc, f"cannot upgrade {location.display}") from None  # type: ignore[arg-type]
    finally:
        engine.dispose()
    if as_json:
        emit_json({"database": location.display, "from": before, "to": after})
    elif before == after:
        click.echo(f"{location.display}: already at revision {after}")
    else:
        click.echo(f"{location.display}: upgraded from {before or 'nothing'} to revision {after}")


@db.command("check")
@db_option
@json_option
@handles_errors
def db_check(db_url: str | None, as_json: bool) -> None:
    """Check the database: counts, schema, model, and the index against SQL.

    Exit 0 when consistent, 1 when not.
    """
    with open_db(db_url) as handle:
        report = handle.check()
    if as_json:
        emit_json(report.to_dict())
    else:
        click.echo(f"database:   {handle.store.location.display}")
        click.echo(f"revision:   {report.revision} (this speakerdb: {report.head_revision})")
        click.echo(f"model:      {report.model['label'] if report.model else 'none yet'}")
        click.echo(f"speakers:   {report.speakers}")
        click.echo(f"recordings: {report.utterances}")
        if report.index:
            click.echo(
                "index:      "
                + ", ".join(f"{k} {v}" for k, v in report.index.items() if v is not None)
            )
        for problem in report.problems:
            click.echo(f"PROBLEM: {problem}")
        click.echo("consistent" if report.consistent else "NOT consistent")
    sys.exit(EXIT_OK if report.consistent else EXIT_NO)


@db.command("rebuild-index")
@click.option(
    "--kind",
    type=click.Choice(["auto", "flat", "ivf"]),
    default=None,
    help="Force an index kind (stored in the database); default: keep the current setting.",
)
@db_option
@json_option
@handles_errors
def db_rebuild_index(kind: str | None, db_url: str | None, as_json: bool) -> None:
    """Rebuild the vector index from SQL and write its file."""
    with open_db(db_url) as handle:
        status = handle.rebuild_index(kind)
    if as_json:
        emit_json(status.__dict__)
    else:
        click.echo(
            f"rebuilt {status.params} index of {status.vectors} speakers "
            f"at {status.path or 'memory'}"
        )


db.add_command(db_rebuild_index, "reindex")


# --- entry point --------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point (``speakerdb`` and ``python -m speakerdb``)."""
    cli.main(args=list(sys.argv[1:] if argv is None else argv), prog_name="speakerdb")
