"""``speakerdb eval`` and ``calibrate``: error rates on labelled trials, and how a database
decides (its calibration, operating point or threshold)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
    operating_point_options,
    progress_bar,
    show,
    threshold_option,
)
from speakerdb.decisions import DecisionOptions, Scale
from speakerdb.errors import UsageError

if TYPE_CHECKING:
    from speakerdb import DecisionRule
    from speakerdb.enroll import EvaluationReport, Trial


def _load_trials(trials: Path | None, manifest: Path | None) -> tuple[list[Trial], str]:
    """The labelled trials of TRIALS or --manifest, and the sha256 of that file."""
    from speakerdb.enroll import read_manifest, read_trials, trials_from_manifest

    if (trials is None) == (manifest is None):
        raise UsageError("give either TRIALS or --manifest M.jsonl")
    if manifest is not None:
        return trials_from_manifest(read_manifest(manifest)), _sha256(manifest)
    assert trials is not None
    return read_trials(trials, require_labels=True), _sha256(trials)


def _sha256(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:  # read_trials has read it a moment ago; say so in one line anyway
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None


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
    ]
    rule = report.decision_rule["text"] if report.decision_rule else report.threshold_in_use
    lines.append(
        f"decision in use:  {rule} -> FAR {report.far_at_threshold_in_use:.2%}, "
        f"FRR {report.frr_at_threshold_in_use:.2%}"
    )
    c = report.calibrated
    if c is not None:
        lines.append(
            f"calibrated LLRs:  Cllr {c.cllr:.3f} bits (minCllr {c.min_cllr:.3f}); "
            f"actual DCF {c.act_dcf:.4f}, minimum DCF {c.min_dcf:.4f} (p_target "
            f"{c.p_target:g}); EER {c.eer:.2%}"
        )
    counts = report.trial_counts
    if counts is not None:
        ignored = counts.ignored()
        lines.insert(
            2,
            f"distinct:         {counts.trials} trials of {counts.lines} lines "
            f"({counts.target_trials} same speaker, {counts.nontarget_trials} different), "
            f"{counts.recordings} recordings, {counts.speakers} speakers"
            + (f"; {ignored}" if ignored else ""),
        )
    for failure in report.failed_files:
        lines.append(f"unusable: {show(failure['path'])}: {failure['reason']}")
    return lines


def _sasv(
    trials: Path | None,
    db_url: str | None,
    model_name: str | None,
    device: str | None,
    spoof_model: Path | None,
    as_json: bool,
    plot_out: Path | None = None,
) -> None:
    """``eval --sasv TRIALS [--plot PNG]``: the figures of ``SpeakerDB.evaluate_sasv``."""
    if trials is None:
        raise UsageError("usage: speakerdb eval --sasv TRIALS")
    if plot_out is not None:
        from speakerdb.enroll import plot_sasv  # fail early if matplotlib is missing
    with open_db(db_url, model_name, device, read_only=True) as db:
        evaluated = db.evaluate_sasv(trials, spoof_model=spoof_model)
    if plot_out is not None:
        plot_sasv(evaluated, plot_out)
    report = evaluated.to_dict()
    if as_json:
        emit_json(report)
        return

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.2f} %"

    rates = report["error_rates"]
    counts = ", ".join(f"{k} {v}" for k, v in report["trials"].items())
    click.echo(f"trials: {counts} (unscored {report['unscored']})")
    click.echo(f"SASV-EER     {pct(report['sasv_eer'])}")
    click.echo(f"spoof-EER    {pct(report['spoof_eer'])}")
    click.echo(f"speaker EER  {pct(report['speaker_eer'])}")
    click.echo(f"a-DCF        {report['a_dcf']:.4f} (minimum {report['min_a_dcf']:.4f})")
    click.echo(
        f"at the decision in use: target FRR {pct(rates['target_frr'])}, nontarget FAR "
        f"{pct(rates['nontarget_far'])}, spoof FAR {pct(rates['spoof_far'])}"
    )


def _trial_options(fn: F) -> F:
    fn = click.option(
        "--manifest",
        type=click.Path(path_type=Path),
        help="Instead of TRIALS: every pair of a NeMo manifest, labelled by speaker.",
    )(fn)
    return click.argument("trials", required=False, type=click.Path(path_type=Path))(fn)


@click.command("eval")
@_trial_options
@operating_point_options
@threshold_option
@click.option(
    "--scores",
    "scores_out",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write 'label score path_a path_b' per scored trial to this file (score: cosine, "
    "or the AS-norm z-score).",
)
@click.option(
    "--plot",
    "plot_out",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Draw the DET curve and score histograms to this PNG (with --sasv: the speaker, "
    "countermeasure and joint DET curves; needs speakerdb[plot]).",
)
@click.option(
    "--sasv",
    is_flag=True,
    help="TRIALS is a spoofing-aware list ('target|nontarget|spoof SPEAKER PATH' lines, "
    "speakers enrolled): SASV-EER, spoof-EER, speaker EER, a-DCF and each trial kind's error "
    "rate, with the database's countermeasure (or --spoof-model).",
)
@click.option(
    "--spoof-model",
    metavar="PATH",
    envvar="SPEAKERDB_SPOOF_MODEL",
    default=None,
    type=click.Path(path_type=Path),
    help="With --sasv: this countermeasure instead of the database's. "
    "Default: $SPEAKERDB_SPOOF_MODEL.",
)
@click.option(
    "--set-default",
    is_flag=True,
    help="Also fit a calibration on these trials and store it as this database's, at "
    "--prior or --far (as `speakerdb calibrate TRIALS` does).",
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
    prior: float | None,
    far: float | None,
    threshold: float | None,
    scores_out: Path | None,
    plot_out: Path | None,
    sasv: bool,
    spoof_model: Path | None,
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
    EER, minDCF, the score threshold at --far (default 1 %), and the decisions of the rule in
    use (with --prior / --far / --threshold as verify takes them): their FAR and FRR and,
    when calibrated, Cllr, minCllr and actual / minimum DCF at the operating point.
    Unusable files are reported, not fatal. With --sasv: spoofing-aware trials (see
    docs/spoofing.md)."""
    if sasv:
        _sasv(trials, db_url, model_name, device, spoof_model, as_json, plot_out)
        return
    rows, digest = _load_trials(trials, manifest)
    if plot_out is not None:
        from speakerdb.enroll import plot_evaluation  # fail early if matplotlib is missing
    files = cohort_files(cohort)
    # Only --set-default writes: otherwise the database is read, and not needed at all.
    with (
        open_db(
            db_url, model_name, device, read_only=not set_default, missing_ok=not set_default
        ) as db,
        progress_bar("embedding") as bar,
    ):
        if set_default:
            if threshold is not None:
                raise UsageError("--set-default stores an operating point: --prior or --far")
            report = db.calibrate(
                rows,
                prior=prior,
                far=far,
                norm=norm,
                cohort=files,
                cohort_size=cohort_size,
                progress=bar,
                trials_sha256=digest,
            ).report
        else:
            options = DecisionOptions.of(
                threshold, prior=prior, far=far, norm=norm, cohort=files, cohort_size=cohort_size
            )
            report = db.evaluate(rows, progress=bar, options=options)
    if scores_out is not None:
        from speakerdb.enroll import write_scores

        write_scores(report, scores_out)
    if plot_out is not None:
        plot_evaluation(report, plot_out)
    if as_json:
        emit_json(report.to_dict() | {"stored_as_default": set_default})
    else:
        for line in _evaluation_text(report):
            click.echo(line)
        if set_default:
            click.echo("stored this calibration as this database's")


@click.command()
@_trial_options
@operating_point_options
@click.option(
    "--rule",
    type=click.Choice(["llr", "score"]),
    default="llr",
    show_default=True,
    help="llr: fit a calibration (score + quality measures -> LLR) on the trials; score: "
    "store a threshold on the score scale instead (the cosine rule of databases made before "
    "schema 0004), at --far (default 1 %) or --target eer.",
)
@click.option(
    "--target",
    type=click.Choice(["far", "eer"]),
    default="far",
    show_default=True,
    help="With --rule score: far = the lowest threshold with at most --far false accepts; "
    "eer = the threshold at the equal error rate.",
)
@click.option(
    "--bundled",
    is_flag=True,
    help="Decide with the model's bundled calibration (at --prior or --far; default p 0.01): "
    "how a database created before schema 0004 opts in.",
)
@click.option(
    "--reset",
    is_flag=True,
    help="Forget this database's calibration or threshold: back to the bundled calibration "
    "(the model's threshold in databases created before schema 0004 that never opted in).",
)
@click.option("--show", "show_only", is_flag=True, help="Print how this database decides.")
@click.option(
    "--from-enrollments",
    is_flag=True,
    help="Self-calibrate: fit on this database's own enrollments (each recording against "
    "its speaker's other recordings, and against other speakers) instead of TRIALS.",
)
@click.option(
    "--auto/--no-auto",
    default=None,
    help="With --from-enrollments: keep self-calibrating (fit once there are enough "
    "enrollments, re-fit when they change by a fifth or a recording is deleted; every "
    "answer's decision rule names the calibration and its fit date). --no-auto stops.",
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
    prior: float | None,
    far: float | None,
    rule: str,
    target: str,
    bundled: bool,
    reset: bool,
    show_only: bool,
    from_enrollments: bool,
    auto: bool | None,
    norm: str,
    cohort: Path | None,
    cohort_size: int,
    db_url: str | None,
    model_name: str | None,
    device: str | None,
    as_json: bool,
) -> None:
    """Decide how this database accepts: fit a calibration on your own labelled TRIALS
    ('1|0 path_a path_b' lines) and store it, with the operating point (--prior P, default
    0.01, or --far F) and what it was fitted on (counts, date, the list's sha256); verify,
    compare and identify use it from then on.

    \b
    speakerdb calibrate TRIALS [--prior P | --far F] [--norm asnorm]   fit and store
    speakerdb calibrate --bundled [--prior P | --far F]                opt in to the bundled one
    speakerdb calibrate --prior P | --far F                            move the operating point
    speakerdb calibrate --reset                                        back to the default
    speakerdb calibrate --from-enrollments [--auto] [--prior P | --far F]  self-calibrate
    speakerdb calibrate --from-enrollments --norm asnorm     self-calibrate AS-norm scores
    speakerdb calibrate --show                                         how it decides now
    """
    mode = _calibrate_mode(
        trials is not None or manifest is not None,
        bundled,
        reset,
        show_only,
        from_enrollments,
        operating_point=prior is not None or far is not None,
        auto=auto is not None,
    )
    if mode == "--from-enrollments":
        _self_calibrate(db_url, model_name, device, as_json, norm, prior, far, auto)
        return
    if mode == "--show":
        with open_db(db_url, model_name, device, read_only=True, missing_ok=True) as db:
            info = db.calibration_info(norm)
        if as_json:
            emit_json(info)
        else:
            _print_info(info)
        return
    if mode == "--reset":
        with open_db(db_url, model_name, device) as db:
            used = db.reset_calibration(norm)
        _done(as_json, used, "calibration removed", {"calibrated": False})
        return
    if mode == "--bundled":
        with open_db(db_url, model_name, device) as db:
            used = db.use_bundled_calibration(norm, prior=prior, far=far)
        _done(as_json, used, "deciding with the bundled calibration", {"calibrated": True})
        return
    if mode == "--prior/--far":
        with open_db(db_url, model_name, device) as db:
            used = db.set_operating_point(norm, prior=prior, far=far)
        _done(as_json, used, "operating point stored", {"calibrated": True})
        return
    rows, digest = _load_trials(trials, manifest)
    with open_db(db_url, model_name, device) as db, progress_bar("embedding") as bar:
        result = db.calibrate(
            rows,
            prior=prior,
            far=far,
            rule=rule,
            target=target,
            norm=norm,
            cohort=cohort_files(cohort),
            cohort_size=cohort_size,
            progress=bar,
            trials_sha256=digest,
        )
    if as_json:
        emit_json(
            result.to_dict()
            | {"calibrated": True, "normalization": Scale.of_norm(norm).normalization}
        )
        return
    for line in _evaluation_text(result.report):
        click.echo(line)
    if result.calibration is not None:
        fit = result.calibration.fit
        click.echo(
            f"stored a calibration fitted on {fit.target_trials} same-speaker / "
            f"{fit.nontarget_trials} different-speaker trials (sha256 {digest[:12]}); "
            f"decisions: {result.rule.text}"
        )
    else:
        click.echo(f"stored threshold {result.threshold:.4f} for this database")


def _calibrate_mode(
    has_trials: bool,
    bundled: bool,
    reset: bool,
    show_only: bool,
    from_enrollments: bool,
    *,
    operating_point: bool,
    auto: bool,
) -> str:
    """The one mode of a calibrate call, each named by its flag, checked here once: TRIALS,
    --bundled, --reset, --show or --from-enrollments (at most one), else --prior/--far alone
    (move the operating point). --prior / --far also go with TRIALS, --bundled and
    --from-enrollments, as their operating point; --auto / --no-auto only with
    --from-enrollments."""
    chosen = {
        "TRIALS": has_trials,
        "--bundled": bundled,
        "--reset": reset,
        "--show": show_only,
        "--from-enrollments": from_enrollments,
    }
    modes = [name for name, on in chosen.items() if on]
    if len(modes) > 1:
        raise UsageError(f"give only one of {', '.join(modes)}")
    if auto and not from_enrollments:
        raise UsageError("--auto / --no-auto go with --from-enrollments")
    if modes:
        return modes[0]
    if not operating_point:
        raise UsageError("give TRIALS, --bundled, --prior/--far, --reset or --show")
    return "--prior/--far"


def _self_calibrate(
    db_url: str | None,
    model_name: str | None,
    device: str | None,
    as_json: bool,
    norm: str,
    prior: float | None,
    far: float | None,
    auto: bool | None,
) -> None:
    """calibrate --from-enrollments [--auto | --no-auto]."""
    key = Scale.of_norm(norm).normalization
    if key is not None and auto is not None:
        raise UsageError("auto self-calibration is for raw cosine scores (no --norm with --auto)")
    with open_db(db_url, model_name, device) as db:
        if auto is False:
            info = db.set_auto_calibration(False)
            _done(as_json, _rule(info), "auto self-calibration off", {"auto": False})
            return
        waiting = None
        if auto:
            db.set_auto_calibration(True)
        try:
            result = db.calibrate_from_enrollments(prior=prior, far=far, norm=key)
        except UsageError as exc:
            if not auto:
                raise
            waiting = exc.message
        if waiting is not None:
            # Auto mode is on: not enough yet is a state, not an error.
            rule = _rule(db.calibration_info(None))
            what = f"auto self-calibration on; not fitted yet ({waiting})"
            _done(as_json, rule, what, {"auto": True, "calibrated": False})
            return
    if as_json:
        emit_json(result.to_dict() | {"calibrated": True, "auto": bool(auto), "normalization": key})
        return
    for line in _evaluation_text(result.report):
        click.echo(line)
    assert result.calibration is not None
    click.echo(f"stored: {result.calibration.fit.note}" + ("; auto re-fit on" if auto else ""))
    click.echo(f"decisions: {result.rule.text}")


def _rule(info: dict[str, Any]) -> DecisionRule:
    from speakerdb import DecisionRule

    fields = {k: v for k, v in info["decision_rule"].items() if k != "text"}
    return DecisionRule(**fields)


def _done(as_json: bool, rule: DecisionRule, what: str, extra: dict[str, Any]) -> None:
    if as_json:
        emit_json({"threshold": rule.threshold, "decision_rule": rule.to_dict(), **extra})
    else:
        click.echo(f"{what}; decisions: {rule.text}")


def _print_info(info: dict[str, Any]) -> None:
    click.echo(f"model {info['model']}; decisions: {info['decision_rule']['text']}")
    stored = info["stored"]
    if stored is None:
        default = info["default"]
        click.echo(
            "nothing stored: the default applies ("
            + {
                "bundled": "the bundled calibration",
                "auto": "the bundled calibration until there is enough to self-calibrate",
            }.get(default, "the model's threshold")
            + ")"
        )
    else:
        click.echo(
            f"stored {stored['created_at']}: {stored['kind']}"
            + (f" ({stored['source']})" if stored["source"] else "")
            + (f", {stored['note']}" if stored["note"] else "")
        )
    fit = info["fit"]
    if fit is not None:
        source = info["calibration"]
        click.echo(
            f"{source} calibration fitted on {fit['target_trials']} same-speaker / "
            f"{fit['nontarget_trials']} different-speaker trials, {fit['created']}"
            + (
                f", trial list sha256 {fit['trials_sha256']}"
                if source == "database"
                else (f" ({fit['note']})" if fit["note"] else "")
            )
        )
    own = info.get("self_calibration")
    if own is not None:
        now, needs = own["enrollments"], own["needs"]
        click.echo(
            f"self-calibration: auto {'on' if own['auto'] else 'off'}; enrollments: "
            f"{now['eligible']} speakers with 2+ recordings, {now['speakers']} speakers, "
            f"{now['recordings']} recordings -> "
            + ("enough" if own["enough"] else "not enough")
            + f" (needs {needs['speakers_with_2_recordings']} speakers with 2+ distinct "
            f"recordings and {needs['speakers']} speakers)"
        )
