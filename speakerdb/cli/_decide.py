"""``speakerdb verify``, ``identify`` and ``compare``: the three decisions."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from speakerdb import write_private
from speakerdb.cli._common import (
    EXIT_ERROR,
    EXIT_OK,
    db_option,
    decision_options,
    device_option,
    emit_json,
    error_object,
    handles_errors,
    json_option,
    model_option,
    open_db,
    per_file,
    progress_bar,
    rule_text,
    show,
)
from speakerdb.decisions import DecisionOptions
from speakerdb.errors import SpeakerDBError, UsageError

_spoof_model_option = click.option(
    "--spoof-model",
    "spoof_model",
    metavar="PATH",
    envvar="SPEAKERDB_SPOOF_MODEL",
    default=None,
    type=click.Path(path_type=Path),
    help="Run this countermeasure checkpoint (AASIST / AASIST-L .pth) on every file, for this "
    "call, instead of the database's (`speakerdb spoof use`). Default: $SPEAKERDB_SPOOF_MODEL.",
)


@click.command()
@click.argument("name")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--server",
    metavar="URL",
    default=None,
    help="Ask a running `speakerdb serve` at URL instead (API key in $SPEAKERDB_API_KEY); "
    "--db, --model, --device and --cohort do not apply.",
)
@db_option
@model_option
@device_option
@decision_options
@_spoof_model_option
@json_option
@handles_errors
def verify(
    name: str,
    files: tuple[Path, ...],
    db_url: str | None,
    model_name: str | None,
    device: str | None,
    options: DecisionOptions,
    spoof_model: Path | None,
    as_json: bool,
    server: str | None,
) -> None:
    """Is each FILE the enrolled speaker NAME? (exit 0 only if every file is accepted)

    Accepted iff score >= threshold, the score being the calibrated log-likelihood ratio
    where a calibration applies, else the cosine; each answer shows the rule it used."""
    if server is not None:
        from speakerdb.cli._remote import remote_verify

        sys.exit(remote_verify(server, name, files, options, as_json))
    with open_db(db_url, model_name, device, read_only=True) as db:
        results = db.verify_many(name, list(files), options=options, spoof_model=spoof_model)

    def render(v: Any) -> str:
        verdict = v.decision or ("ACCEPTED" if v.accepted else "REJECTED")
        spoof = ""
        if v.spoof is not None and v.spoof["llr"] is not None:
            spoof = f"  spoof llr {v.spoof['llr']:.3f}"
        return (
            f"{verdict}  {show(v.speaker)}  {show(v.source)}  score {v.score:.4f}  "
            f"threshold {v.threshold:.4f}{rule_text(v)}{spoof}"
        )

    sys.exit(per_file(results, as_json, render, lambda v: v.accepted))


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--top-k",
    "-k",
    type=click.IntRange(1, 1000),
    default=5,
    show_default=True,
    help="How many candidates to list.",
)
@click.option(
    "--server",
    metavar="URL",
    default=None,
    help="Ask a running `speakerdb serve` at URL instead (API key in $SPEAKERDB_API_KEY); "
    "--db, --model, --device and --cohort do not apply.",
)
@db_option
@model_option
@device_option
@decision_options
@_spoof_model_option
@json_option
@handles_errors
def identify(
    files: tuple[Path, ...],
    top_k: int,
    db_url: str | None,
    model_name: str | None,
    device: str | None,
    options: DecisionOptions,
    spoof_model: Path | None,
    as_json: bool,
    server: str | None,
) -> None:
    """Who is speaking in each FILE? The best enrolled speaker if it reaches the threshold,
    else unknown. (exit 0 only if every file is a known speaker)

    Candidates are ranked and decided on the score the rule compares (the calibrated LLR
    where a calibration applies to all of them, else the cosine)."""
    if server is not None:
        from speakerdb.cli._remote import remote_identify

        sys.exit(remote_identify(server, files, top_k, options, as_json))
    with open_db(db_url, model_name, device, read_only=True) as db:
        results = db.identify_many(list(files), top_k, options=options, spoof_model=spoof_model)

    def render(r: Any) -> str:
        head = r.decision or (show(r.best) if r.best else "UNKNOWN")
        listing = (
            ", ".join(f"{show(m.name)} {m.score:.4f}" for m in r.matches) or "no speakers enrolled"
        )
        return (
            f"{head}  {show(r.source)}  threshold {r.threshold:.4f}  [{listing}]  "
            f"[{r.decision_rule.text}]"
        )

    sys.exit(per_file(results, as_json, render, lambda r: r.best is not None))


@click.command()
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
@decision_options
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
    options: DecisionOptions,
    db_url: str | None,
    as_json: bool,
) -> None:
    """Are A and B the same speaker? Or score every pair of --pairs.

    --db matters only for how it decides (its calibration, operating point or threshold:
    see `speakerdb calibrate`) and, with --norm asnorm and no --cohort, for its enrolled
    voiceprints as the cohort; it is only read, and without one (none at the default place
    either) the model's bundled calibration decides, as in a new database. With --pairs, each
    output line is 'score decision path_a path_b' (score: what the rule compared).
    """
    if pairs is None:
        if a is None or b is None:
            raise UsageError("usage: speakerdb compare A B (or --pairs FILE)")
        with open_db(db_url, model_name, device, read_only=True, missing_ok=True) as db:
            results = db.compare_batch([(a, b)], options=options)

        def render(c: Any) -> str:
            verdict = c.decision or ("SAME" if c.same_speaker else "DIFFERENT")
            return (
                f"{verdict}  score {c.score:.4f}  threshold {c.threshold:.4f}  "
                f"{show(c.a)}  {show(c.b)}{rule_text(c)}"
            )

        sys.exit(per_file(results, as_json, render, lambda c: c.same_speaker))
    if a is not None or b is not None:
        raise UsageError("give either A B or --pairs, not both")
    from speakerdb.enroll import read_pairs

    trials = read_pairs(pairs)
    with (
        open_db(db_url, model_name, device, read_only=True, missing_ok=True) as db,
        progress_bar("embedding") as bar,
    ):
        results = db.compare_batch([(t.a, t.b) for t in trials], progress=bar, options=options)
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
                lines.append(f"nan error {show(t.a)} {show(t.b)}")
                click.echo(f"error: {r.message}", err=True)
            else:
                verdict = "same" if r.same_speaker else "different"
                lines.append(f"{r.score:.6f} {verdict} {show(t.a)} {show(t.b)}")
        text = "\n".join(lines) + "\n"
        if out is not None:
            write_private(out, text)  # scores say who sounds like whom: 0600
        else:
            click.echo(text, nl=False)
    sys.exit(EXIT_ERROR if failures else EXIT_OK)
