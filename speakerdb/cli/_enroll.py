"""``speakerdb enroll``: one speaker from files, or many from a NeMo manifest."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from speakerdb.cli._common import (
    EXIT_ERROR,
    db_option,
    device_option,
    emit_json,
    error_object,
    handles_errors,
    json_option,
    model_option,
    open_db,
    progress_bar,
    show,
    warn,
)
from speakerdb.cli._ray import ray_choice, ray_options
from speakerdb.enroll import RECOMMENDED_SPEECH_SECONDS, EnrollmentReport
from speakerdb.errors import EnrollmentRefusedError, UsageError

if TYPE_CHECKING:
    from speakerdb.enroll import ManifestSummary, RayOptions


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
        f"{show(report.speaker)}: {verb}, {report.accepted} accepted, "
        f"{report.duplicates} duplicate, {report.rejected} rejected"
        + (f", {report.refused} refused" if report.refused else "")
        + f"; {report.utterances} recordings, {report.total_speech_seconds:.1f} s of speech"
    )
    for item in report.inputs:
        if item.status == "duplicate":
            click.echo(f"  duplicate {show(item.source)}: already enrolled")
        elif item.status == "skipped":
            click.echo(f"  skipped {show(item.source)}: speaker exists (mode skip)")
    for warning in report.warnings:
        warn(warning.message)


def _report_rejections(reports: Sequence[EnrollmentReport]) -> None:
    for report in reports:
        for item in report.inputs:
            if item.status == "rejected":
                click.echo(f"error: {show(item.source)}: {item.message}", err=True)
            elif item.status == "refused" and item.reason == "voiceprint_mismatch":
                click.echo(
                    f"error: {show(item.source)} not added to {show(report.speaker)}: "
                    f"{item.message}",
                    err=True,
                )
        if report.refused:
            click.echo(
                f"error: refused to add {report.refused} recordings to {show(report.speaker)} "
                "(nothing stored): they do not all match its voiceprint; --force adds them "
                "anyway",
                err=True,
            )


@click.command()
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
@click.option(
    "--force",
    is_flag=True,
    help="Administrator's override: allow --mode overwrite, and add recordings to an "
    "enrolled speaker even when they do not match its voiceprint (otherwise such an "
    "append is refused and nothing is stored).",
)
@click.option(
    "--expires-after",
    metavar="PERIOD",
    help="Retention: erase the speaker this long from now (3y, 90d, 2w, 12h) with "
    "'speakerdb db expire'.",
)
@click.option(
    "--consent",
    metavar="TEXT",
    help="The consent given (who agreed to what): stored with the time and the OS user.",
)
@ray_options(
    "With --manifest: decode and embed; results are stored here as without it (a cluster "
    "needs a PostgreSQL --db, SQLite only with local)"
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
    force: bool,
    expires_after: str | None,
    consent: str | None,
    ray_address: str | None,
    ray_workers: int | None,
    ray_files_per_task: int,
    db_url: str | None,
    model_name: str | None,
    device: str | None,
    as_json: bool,
) -> None:
    """Enroll speaker NAME from FILE(s), or many speakers from --manifest.

    Unusable recordings are reported and skipped; if none is usable nothing changes.
    Recordings already enrolled for the speaker are recognised by their audio and not stored
    twice, so an interrupted --manifest run can simply be run again. Recordings added to an
    enrolled speaker must match its voiceprint (the database's verification rule), else
    nothing of the request is stored (exit 2) unless --force.
    """
    if manifest is not None:
        if name or files:
            raise UsageError("give either NAME FILE... or --manifest, not both")
        if meta or expires_after or consent:
            raise UsageError(
                "--meta, --expires-after and --consent apply to NAME FILE... enrollment only"
            )
        ray = ray_choice(ray_address, ray_workers, ray_files_per_task)
        _enroll_manifest(manifest, mode, force, db_url, model_name, device, as_json, ray)
        return
    if ray_address is not None:
        raise UsageError("--ray applies to --manifest enrollment only")
    if not name or not files:
        raise UsageError("usage: speakerdb enroll NAME FILE... (or --manifest M.jsonl)")
    metadata = _parse_meta(meta)
    refused: EnrollmentRefusedError | None = None
    with open_db(db_url, model_name, device) as db, progress_bar("embedding") as bar:
        try:
            report = db.enroll(
                name,
                list(files),
                mode=mode,
                metadata=metadata,
                progress=bar,
                force=force,
                expires_after=expires_after,
                consent=consent,
            )
        except EnrollmentRefusedError as exc:
            if not isinstance(exc.report, EnrollmentReport):
                raise
            refused, report = exc, exc.report
    _report_rejections([report])
    if as_json:
        document = report.to_dict()
        if refused is not None:
            document["error"] = error_object(refused)
        emit_json(document)
    else:
        _print_report(report)
    if (
        refused is not None
        or report.rejected
        or (report.accepted == 0 and not report.duplicates and mode != "skip")
    ):
        sys.exit(EXIT_ERROR)


def _enroll_manifest(
    manifest: Path,
    mode: str,
    force: bool,
    db_url: str | None,
    model_name: str | None,
    device: str | None,
    as_json: bool,
    ray: RayOptions | None = None,
) -> None:
    from speakerdb.enroll import read_manifest

    entries = read_manifest(manifest)
    with open_db(db_url, model_name, device) as db, progress_bar("enrolling") as bar:
        summary = db.enroll_manifest(entries, mode=mode, progress=bar, force=force, ray=ray)
    _report_rejections(summary.reports)
    if as_json:
        emit_json(summary.to_dict())
    else:
        _print_summary(summary)
    if summary.rejected or summary.refused:
        sys.exit(EXIT_ERROR)


def _print_summary(summary: ManifestSummary) -> None:
    for warning in summary.warnings:
        warn(warning.message)
    short = summary.little_speech
    if short:
        listed = ", ".join(show(s) for s in short[:10]) + (" ..." if len(short) > 10 else "")
        warn(
            f"{len(short)} speakers have less than {RECOMMENDED_SPEECH_SECONDS:.0f} s of speech "
            f"(less reliable verification): {listed}"
        )
    click.echo(
        f"{summary.files} files, {summary.speakers} speakers ({summary.created} new): "
        f"{summary.accepted} accepted, {summary.duplicates} already enrolled, "
        f"{summary.rejected} rejected"
        + (f", {summary.refused} refused (not matching)" if summary.refused else "")
    )
