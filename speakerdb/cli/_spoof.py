"""``speakerdb spoof``: spoofing countermeasure scores of recordings."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from speakerdb.cli._common import (
    EXIT_ERROR,
    EXIT_NO,
    EXIT_OK,
    db_option,
    emit_json,
    error_object,
    handles_errors,
    json_option,
    open_db,
    show,
)
from speakerdb.errors import UsageError


@click.group()
def spoof() -> None:
    """Spoofing countermeasures (AASIST, AASIST-L): is a recording bona fide speech or an
    attack (speech synthesis, voice conversion, copy-synthesis)?"""


def _spoof_model_option(fn: Any) -> Any:
    return click.option(
        "--model",
        "model_path",
        metavar="PATH",
        envvar="SPEAKERDB_SPOOF_MODEL",
        required=True,
        help="Countermeasure checkpoint (AASIST or AASIST-L .pth; a .conf beside it gives "
        "its configuration). Default: $SPEAKERDB_SPOOF_MODEL.",
    )(fn)


@spoof.command("score")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@_spoof_model_option
@json_option
@handles_errors
def score(files: tuple[Path, ...], model_path: str, as_json: bool) -> None:
    """Countermeasure scores of FILE(s), one line (or JSON object) per file.

    score: the model's bona fide logit (the original AASIST score; higher = more bona fide);
    raw: bona fide minus spoof logit; llr: the calibrated bona fide-vs-spoof log-likelihood
    ratio (where a calibration ships for these weights) and detected: llr below the
    calibration's threshold (null for recordings under 2 s, too short to judge). Exit
    status: 0 none detected, 1 an attack detected, 2 a file could not be scored.
    """
    from speakerdb import load_countermeasure

    cm = load_countermeasure(model_path)
    results = cm.score(list(files))
    status = EXIT_OK
    documents: list[dict[str, Any]] = []
    for r in results:
        if r.error is not None:
            status = EXIT_ERROR
            documents.append({"source": r.source, "error": error_object(r.error)})
            if not as_json:
                click.echo(f"error: {r.error.message}", err=True)
            continue
        doc = r.to_dict()
        doc["model"] = cm.identity.label
        documents.append(doc)
        if r.detected and status == EXIT_OK:
            status = EXIT_NO
        if not as_json:
            llr = "-" if r.llr is None else f"{r.llr:.3f}"
            if r.detected is None:
                verdict = "uncalibrated" if r.llr is None else "too short to judge"
            else:
                verdict = "SPOOF_DETECTED" if r.detected else "bona fide"
            click.echo(
                f"{show(r.source)}\tscore={r.score:.4f}\traw={r.llr_input:.4f}\tllr={llr}\t"
                f"bandwidth={r.bandwidth_hz:.0f}Hz\t{verdict}"
            )
    if as_json:
        emit_json(documents[0] if len(documents) == 1 else documents)
    if status != EXIT_OK:
        sys.exit(status)


def _describe(record: Any, as_json: bool, verb: str) -> None:
    if as_json:
        emit_json({"countermeasure": None if record is None else record.to_dict()})
    elif record is None:
        click.echo("no countermeasure")
    else:
        click.echo(
            f"{verb}{record.family}/{record.variant} sha256 {record.weights_sha256} "
            f"from {show(record.source)}"
        )


@spoof.command("use")
@click.argument("path", type=click.Path(path_type=Path))
@db_option
@json_option
@handles_errors
def use(path: Path, db_url: str | None, as_json: bool) -> None:
    """Record the countermeasure at PATH (AASIST / AASIST-L .pth) as the database's.

    The file is loaded and checked first; a file it refuses changes nothing.
    """
    with open_db(db_url) as db:
        _describe(db.use_countermeasure(path), as_json, "countermeasure: ")


@spoof.command("show")
@db_option
@json_option
@handles_errors
def show_countermeasure(db_url: str | None, as_json: bool) -> None:
    """Show the countermeasure the database records (family, variant, sha256, file) and
    which spoof calibration decides: the database's own (`spoof calibrate`) or the bundled."""
    with open_db(db_url, read_only=True) as db:
        record = db.countermeasure()
        own = db.countermeasure_calibration()
    if as_json:
        emit_json(
            {
                "countermeasure": None if record is None else record.to_dict(),
                "calibration": _calibration_summary(own),
            }
        )
        return
    _describe(record, False, "countermeasure: ")
    if record is None and own is None:
        return
    if own is None:
        click.echo("spoof calibration: bundled (where one ships for the weights)")
    else:
        summary = _calibration_summary(own)
        click.echo(
            f"spoof calibration: database, fitted {summary['fitted']} on "
            f"{summary['note']} ({summary['mode']}); threshold {summary['threshold']:.3f}"
        )


def _calibration_summary(own: dict[str, Any] | None) -> dict[str, Any]:
    if own is None:
        return {"source": "bundled"}
    fit = own.get("fit") or {}
    return {
        "source": "database",
        "fitted": own.get("fitted"),
        "note": fit.get("note"),
        "mode": fit.get("mode", "fitted on bona fide speech and attacks"),
        "threshold": own.get("threshold"),
        "groups": fit.get("groups"),
        "weights_sha256": (own.get("countermeasure") or {}).get("weights_sha256"),
    }


@spoof.command("calibrate")
@click.argument("recordings", required=False, type=click.Path(path_type=Path))
@click.option(
    "--max-flag-rate",
    type=float,
    default=None,
    help="Share of any bona fide group allowed to be flagged at the threshold (default 0.05).",
)
@click.option(
    "--spoof-model",
    "spoof_model",
    metavar="PATH",
    envvar="SPEAKERDB_SPOOF_MODEL",
    type=click.Path(path_type=Path),
    help="Calibrate this checkpoint instead of the database's countermeasure.",
)
@click.option(
    "--bona-fide-only",
    is_flag=True,
    help="RECORDINGS are real speech of your channel only (any speaker manifest): adapt the "
    "bundled calibration to them instead of fitting one.",
)
@click.option("--reset", is_flag=True, help="Remove the database's own spoof calibration.")
@db_option
@json_option
@handles_errors
def calibrate_spoof(
    recordings: Path | None,
    max_flag_rate: float | None,
    bona_fide_only: bool,
    spoof_model: Path | None,
    reset: bool,
    db_url: str | None,
    as_json: bool,
) -> None:
    """Fit the countermeasure's calibration on your own channel's RECORDINGS and store it.

    RECORDINGS: an SASV trial list (`<target|nontarget|spoof> <speaker> <path>`; target and
    nontarget probes are bona fide speech) or a JSON-lines manifest (`{"audio_filepath",
    "spoof": true|false, "attack": NAME}`), paths relative to the file. At least 20 usable
    bona fide recordings and 20 attacks (2 s or longer). With --bona-fide-only, at least 20
    recordings of one band (narrowband / wideband) of real speech and no attacks: each band's
    offset is moved so that at most --max-flag-rate of it is flagged, the bundled slope kept.
    The stored calibration replaces the bundled one wherever these weights run (verify,
    identify, compare, enroll, sessions); --reset removes it.
    """
    if reset == (recordings is not None):
        raise UsageError("spoof calibrate takes RECORDINGS or --reset (one of them)")
    if reset and bona_fide_only:
        raise UsageError("--bona-fide-only goes with RECORDINGS, not --reset")
    with open_db(db_url) as db:
        if reset:
            had = db.reset_countermeasure_calibration()
            if as_json:
                emit_json({"calibration": {"source": "bundled"}, "removed": had})
            else:
                click.echo(
                    "spoof calibration: bundled" + (" (removed the database's)" if had else "")
                )
            return
        assert recordings is not None
        fit = db.calibrate_countermeasure(
            recordings,
            spoof_model=spoof_model,
            max_flag_rate=max_flag_rate,
            bona_fide_only=bona_fide_only,
        )
    report = fit.to_dict()
    if as_json:
        emit_json(report)
        return
    adapted = " (the bundled one adapted to bona fide speech)" if bona_fide_only else ""
    click.echo(f"spoof calibration stored{adapted}: threshold {fit.calibration.threshold:.3f}")
    for name, count in fit.groups.items():
        click.echo(f"  {name}: {count} recordings, {fit.flagged[name]:.1%} flagged")
    if fit.skipped:
        click.echo(f"  left out: {len(fit.skipped)} recordings (undecodable or under 2 s)")


@spoof.command("off")
@db_option
@json_option
@handles_errors
def off(db_url: str | None, as_json: bool) -> None:
    """Stop recording a countermeasure in the database (prints the one there was)."""
    with open_db(db_url) as db:
        previous = db.clear_countermeasure()
    if as_json:
        emit_json(
            {"countermeasure": None, "previous": None if previous is None else previous.to_dict()}
        )
    else:
        click.echo(
            "countermeasure off"
            + ("" if previous is None else f" (was {previous.family}/{previous.variant})")
        )
