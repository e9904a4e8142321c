"""``speakerdb eval`` and ``calibrate``: error rates on labelled trials, and thresholds."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from speakerdb.cli._common import (
    F,
    cohort_files,
    db_option,
    device_option,
    emit_json,
    handles_errors,
    json_option,
    model_option,
    norm_options,
    open_db,
    progress_bar,
    show,
)
from speakerdb.errors import UsageError

if TYPE_CHECKING:
    from speakerdb.enroll._evaluation import EvaluationReport
    from speakerdb.enroll._lists import Trial


def _load_trials(trials: Path | None, manifest: Path | None) -> list[Trial]:
    from speakerdb.enroll._evaluation import trials_from_manifest
    from speakerdb.enroll._lists import read_manifest, read_trials

    if (trials is None) == (manifest is None):
        raise UsageError("give either TRIALS or --manifest M.jsonl")
    if manifest is not None:
        return trials_from_manifest(read_manifest(manifest))
    assert trials is not None
    return read_trials(trials, require_labels=True)


def _evaluation_text(report: EvaluationReport) -> list[str]:
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
        lines.append(f"unusable: {show(failure['path'])}: {failure['reason']}")
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


@click.command("eval")
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
        from speakerdb.enroll._plot import plot_evaluation  # fail early if matplotlib is missing
    files = cohort_files(cohort)
    # Only --set-default writes: otherwise the database is read, and not needed at all.
    with (
        open_db(
            db_url, model_name, device, read_only=not set_default, missing_ok=not set_default
        ) as db,
        progress_bar("embedding") as bar,
    ):
        if set_default:
            _, report = db.calibrate(
                rows,
                far=far,
                target="far",
                norm=norm,
                cohort=files,
                cohort_size=cohort_size,
                progress=bar,
            )
        else:
            report = db.evaluate(
                rows, far=far, norm=norm, cohort=files, cohort_size=cohort_size, progress=bar
            )
    if scores_out is not None:
        from speakerdb.enroll._evaluation import write_scores

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


@click.command()
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
    with open_db(db_url, model_name, device) as db, progress_bar("embedding") as bar:
        threshold, report = db.calibrate(
            rows,
            far=far,
            target=target,
            norm=norm,
            cohort=cohort_files(cohort),
            cohort_size=cohort_size,
            progress=bar,
        )
    if as_json:
        emit_json(
            {
                "threshold": threshold,
                "calibrated": True,
                "target": target,
                "normalization": None if norm == "none" else norm,
                "evaluation": report.to_dict(),
            }
        )
    else:
        for line in _evaluation_text(report):
            click.echo(line)
        click.echo(f"stored threshold {threshold:.4f} for this database")
