"""``speakerdb diarize`` and ``speakerdb eval-diarization``: who spoke when, by name."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from speakerdb.cli._common import (
    EXIT_ERROR,
    EXIT_OK,
    chosen_tenant,
    device_option,
    emit_json,
    error_object,
    handles_errors,
    json_option,
    model_option,
    operating_point_options,
    progress_bar,
    show,
    tenant_option,
    threshold_option,
    warn,
)
from speakerdb.cli._ray import ray_choice, ray_options
from speakerdb.errors import SpeakerDBError, UsageError

if TYPE_CHECKING:
    from speakerdb.diarize import Diarization, DiarizationEntry, DiarizationScore
    from speakerdb.enroll import RayOptions, SpeakerDB

__all__ = ["diarize", "eval_diarization"]


def _db_option(fn: Any) -> Any:
    # Unlike other commands, no default database: without --db (or $SPEAKERDB_URL) the
    # voices keep anonymous labels.
    fn = tenant_option(fn)
    return click.option(
        "--db",
        "db_url",
        metavar="URL",
        envvar="SPEAKERDB_URL",
        default=None,
        help="Database whose enrolled speakers name the voices (SQLite path or SQLAlchemy "
        "URL; default $SPEAKERDB_URL). Without one the voices are speaker_1, speaker_2...",
    )(fn)


def _count_options(fn: Any) -> Any:
    fn = click.option(
        "--max-speakers", type=click.IntRange(1, 1000), default=None, help="At most N voices."
    )(fn)
    fn = click.option(
        "--min-speakers", type=click.IntRange(1, 1000), default=None, help="At least N voices."
    )(fn)
    return click.option(
        "--num-speakers",
        type=click.IntRange(1, 1000),
        default=None,
        help="Exactly N voices (default: estimated).",
    )(fn)


def _open(db_url: str | None, model_name: str | None, device: str | None) -> SpeakerDB:
    from speakerdb.enroll import SpeakerDB

    if db_url is None:
        return SpeakerDB(None, model_name, device)
    # Read-only: diarizing never changes a database; a missing one is an error.
    return SpeakerDB.open(
        db_url, model=model_name, device=device, read_only=True, tenant=chosen_tenant()
    )


@click.command()
@click.argument("file", required=False, type=click.Path(path_type=Path))
@click.option(
    "--manifest",
    type=click.Path(path_type=Path),
    default=None,
    metavar="M.jsonl",
    help="Diarize every recording of a NeMo diarization manifest (needs --out-dir).",
)
@click.option(
    "--out-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="With --manifest: write one RTTM per recording here (<name>.rttm, mode 0600; "
    "recordings sharing a base name get <name>-<digest of the path>.rttm).",
)
@click.option(
    "--rttm",
    "rttm_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Also write the turns of FILE as RTTM to this file (mode 0600).",
)
@_count_options
@_db_option
@model_option
@device_option
@threshold_option
@operating_point_options
@click.option(
    "--cluster-threshold",
    type=click.FloatRange(-1, 1),
    default=None,
    metavar="C",
    help="Cluster by a fixed cosine instead of finding the number of voices per recording "
    "(spectral clustering, the default): the least average cosine between two groups of "
    "windows to call them one voice (0.60 suits ge2e on 16 kHz speech). Higher finds more.",
)
@click.option(
    "--norm",
    type=click.Choice(["auto", "none", "asnorm"]),
    default="auto",
    show_default=True,
    help="How voices are scored against the enrolled speakers: asnorm = AS-norm against "
    "the other enrolled speakers, decided by the database's calibration of AS-norm scores; "
    "none = raw cosines and the database's rule; auto = asnorm when the database has fitted "
    "its own calibration of AS-norm scores (calibrate --from-enrollments --norm asnorm), "
    "else none.",
)
@ray_options("Find the voices of the manifest's recordings", files_per_task=1)
@json_option
@handles_errors
def diarize(
    file: Path | None,
    manifest: Path | None,
    out_dir: Path | None,
    rttm_path: Path | None,
    num_speakers: int | None,
    min_speakers: int | None,
    max_speakers: int | None,
    db_url: str | None,
    model_name: str | None,
    device: str | None,
    threshold: float | None,
    prior: float | None,
    far: float | None,
    cluster_threshold: float | None,
    norm: str,
    ray_address: str | None,
    ray_workers: int | None,
    ray_files_per_task: int,
    as_json: bool,
) -> None:
    """Who spoke when in FILE, by name: one line per turn.

    Voices that match an enrolled speaker (the database's decision rule, one voice per
    speaker) carry the speaker's name; the others are unknown_1, unknown_2... Without a
    database every voice is speaker_N. Exit status 0, or 2 on error. With --ray the voices
    of the manifest's recordings are found on a Ray cluster and named here.
    """
    if (file is None) == (manifest is None):
        raise UsageError("give one recording FILE or --manifest M.jsonl")
    if ray_address is not None and manifest is None:
        raise UsageError("--ray applies to --manifest diarization only")
    if manifest is not None and out_dir is None:
        raise UsageError("--manifest needs --out-dir for the RTTM files")
    if manifest is not None and rttm_path is not None:
        raise UsageError("--rttm is for one FILE; with --manifest use --out-dir")
    options: dict[str, Any] = {
        "num_speakers": num_speakers,
        "min_speakers": min_speakers,
        "max_speakers": max_speakers,
        "threshold": threshold,
        "prior": prior,
        "far": far,
        "norm": norm,
    }
    if cluster_threshold is not None:
        options["cluster_threshold"] = cluster_threshold
    from speakerdb.diarize import DiarizationSettings

    DiarizationSettings(num_speakers, min_speakers, max_speakers).check()
    with _open(db_url, model_name, device) as db:
        if file is not None:
            result = _run(db, file, options)
            if rttm_path is not None:
                from speakerdb.diarize import write_rttm

                write_rttm(rttm_path, result.rttm_turns())
            if as_json:
                emit_json(result.to_dict())
            else:
                _print(result)
            for note in result.notes:
                warn(note)
            sys.exit(EXIT_OK)
        from speakerdb.diarize import output_ids, read_diarization_manifest

        assert manifest is not None and out_dir is not None
        entries = read_diarization_manifest(manifest)
        ids = output_ids(entries)  # refuses a manifest listing a recording twice, up front
        _note_renamed(entries, ids)
        out_dir.mkdir(parents=True, exist_ok=True)
        documents: list[dict[str, Any]] = []
        status = EXIT_OK
        ray = ray_choice(ray_address, ray_workers, ray_files_per_task)
        outcomes = _outcomes(db, entries, options, ray)
        for entry, file_id, outcome in zip(entries, ids, outcomes, strict=True):
            if isinstance(outcome, SpeakerDBError):
                status = EXIT_ERROR
                documents.append({"source": str(entry.audio), "error": error_object(outcome)})
                if not as_json:
                    click.echo(f"error: {outcome.message}", err=True)
                continue
            result = outcome
            from speakerdb.diarize import write_rttm

            target = out_dir / f"{file_id}.rttm"
            write_rttm(target, result.rttm_turns(file_id))
            document = result.to_dict()
            document["rttm"] = str(target)
            document["file_id"] = file_id
            documents.append(document)
            for note in result.notes:
                warn(f"{show(entry.audio)}: {note}")
            if not as_json:
                names = ", ".join(s.label for s in result.speakers)
                click.echo(
                    f"{show(entry.audio)}: {len(result.turns)} turns ({names}) -> {show(target)}"
                )
        if as_json:
            emit_json(documents)
        sys.exit(status)


def _outcomes(
    db: SpeakerDB,
    entries: Sequence[DiarizationEntry],
    options: dict[str, Any],
    ray: RayOptions | None,
) -> Iterator[Diarization | SpeakerDBError]:
    """Each recording's diarization or error, in the manifest's order."""
    if ray is None:
        for entry in entries:
            try:
                yield _run(db, entry.audio, options)
            except SpeakerDBError as exc:
                yield exc
        return
    with progress_bar("diarizing") as bar:
        paths = [str(entry.audio) for entry in entries]
        for _, result in db.diarize_on_ray(paths, ray, progress=bar, **options):
            yield result


def _note_renamed(entries: Sequence[DiarizationEntry], ids: Sequence[str]) -> None:
    """Say which recordings share a base name and what their RTTMs are called instead."""
    renamed = [(e, i) for e, i in zip(entries, ids, strict=True) if i != e.file_id]
    if renamed:
        warn(
            f"{len(renamed)} recordings share a base name with another: their RTTMs are "
            "named after the base name and a digest of the path: "
            + ", ".join(f"{show(e.audio)} -> {show(i)}.rttm" for e, i in renamed[:10])
            + (" ..." if len(renamed) > 10 else "")
        )


def _run(db: SpeakerDB, audio: Path, options: dict[str, Any]) -> Diarization:
    bar = progress_bar(f"diarizing {audio.name}")
    try:
        return db.diarize(
            audio, progress=lambda done, total: bar(int(done), max(1, int(total))), **options
        )
    finally:
        bar.close()


def _clock(seconds: float) -> str:
    minutes, rest = divmod(seconds, 60.0)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}:{minutes:02d}:{rest:06.3f}" if hours else f"{minutes}:{rest:06.3f}"


def _print(result: Diarization) -> None:
    for turn in result.turns:
        score = f"  (score {turn.score:.2f})" if turn.score is not None else ""
        click.echo(f"{_clock(turn.start)}  {_clock(turn.end)}  {show(turn.label)}{score}")
    click.echo("")
    for s in result.speakers:
        line = f"{show(s.label)}: {s.speech_seconds:.1f} s in {s.turns} turns"
        if s.name is not None and s.score is not None:
            line += f", named at score {s.score:.3f}"
        elif s.matches:
            best = s.matches[0]
            line += f", best match {show(best.name)} at {best.score:.3f} (not accepted)"
        if s.note:
            line += f"; {s.note}"
        click.echo(line)
    if result.decision_rule is not None:
        click.echo(f"rule: {result.decision_rule.text}; model {result.model}")
    else:
        click.echo(f"no database: anonymous voices; model {result.model}")


@click.command("eval-diarization")
@click.option(
    "--manifest",
    type=click.Path(path_type=Path),
    required=True,
    metavar="M.jsonl",
    help="NeMo diarization manifest with audio_filepath and rttm_filepath (the reference).",
)
@click.option(
    "--collar",
    type=click.FloatRange(0, 5),
    default=0.25,
    show_default=True,
    help="Seconds forgiven on each side of every reference boundary.",
)
@click.option(
    "--hyp-dir",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    default=None,
    help="Score the RTTM files here (<name>.rttm, e.g. from `diarize --out-dir`) instead of "
    "diarizing now.",
)
@click.option(
    "--oracle-speakers",
    is_flag=True,
    help="Diarize with the manifest's num_speakers (default: estimate the number).",
)
@_db_option
@model_option
@device_option
@json_option
@handles_errors
def eval_diarization(
    manifest: Path,
    collar: float,
    hyp_dir: Path | None,
    oracle_speakers: bool,
    db_url: str | None,
    model_name: str | None,
    device: str | None,
    as_json: bool,
) -> None:
    """Diarization error rate (missed, false alarm, confusion) and naming errors of the
    recordings of a manifest against their reference RTTM.

    Naming error: the share of reference speech labelled with a wrong enrolled name;
    unknown named: the share of never-enrolled speakers' speech given a name (manifests
    listing `known` speakers per recording, like speakerdb's conversations, say who is
    enrolled; otherwise every named reference speaker counts as known).
    """
    from speakerdb.diarize import (
        output_ids,
        read_diarization_manifest,
        read_rttm,
        score_diarization,
        total_score,
    )

    entries = read_diarization_manifest(manifest)
    ids = output_ids(entries) if hyp_dir is not None else [e.file_id for e in entries]
    for entry in entries:
        if entry.rttm is None:
            raise UsageError(f"{show(entry.audio)} has no rttm_filepath in the manifest")
    scores: list[tuple[DiarizationEntry, DiarizationScore]] = []
    db = None if hyp_dir is not None else _open(db_url, model_name, device)
    try:
        for entry, file_id in zip(entries, ids, strict=True):
            assert entry.rttm is not None
            reference = read_rttm(entry.rttm)
            if hyp_dir is not None:
                hypothesis = read_rttm(hyp_dir / f"{file_id}.rttm")
                duration = None
            else:
                assert db is not None
                count = {"num_speakers": entry.num_speakers} if oracle_speakers else {}
                result = _run(db, entry.audio, count)
                hypothesis = result.rttm_turns(file_id)
                duration = result.duration
            scores.append(
                (
                    entry,
                    score_diarization(
                        reference, hypothesis, collar=collar, known=entry.known, duration=duration
                    ),
                )
            )
    finally:
        if db is not None:
            db.close()
    groups: dict[str, list[DiarizationScore]] = {"all": [s for _, s in scores]}
    if all(e.overlap is not None for e, _ in scores):
        groups["no_overlap"] = [s for e, s in scores if not e.overlap]
        groups["overlap"] = [s for e, s in scores if e.overlap]
    summary = {name: total_score(group).to_dict() for name, group in groups.items() if group}
    files = [
        {"file": file_id, "overlap": e.overlap, **s.to_dict()}
        for file_id, (e, s) in zip(ids, scores, strict=True)
    ]
    if as_json:
        emit_json({"collar": collar, "summary": summary, "files": files})
        sys.exit(EXIT_OK)
    click.echo(f"{'file':<16} {'DER':>7} {'missed':>7} {'FA':>7} {'conf':>7} {'naming':>7}")
    for row in files + [{"file": f"[{k}]", **v} for k, v in summary.items()]:
        click.echo(
            f"{show(row['file']):<16} {row['der']:7.2%} {row['missed']:7.2%} "
            f"{row['false_alarm']:7.2%} {row['confusion']:7.2%} {row['naming_error']:7.2%}"
        )
    for name, row in summary.items():
        unknown, unnamed = row["unknown_named"], row["known_unnamed"]
        parts = []
        if unknown is not None:
            parts.append(f"unknown speakers' speech given a name {unknown:.2%}")
        if unnamed is not None:
            parts.append(f"known speakers' speech not under their name {unnamed:.2%}")
        if parts:
            click.echo(f"{name}: {'; '.join(parts)}")
    click.echo(f"collar {collar} s on each side of reference boundaries (pyannote.metrics DER)")
    sys.exit(EXIT_OK)
