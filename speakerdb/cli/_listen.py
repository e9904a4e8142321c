"""``speakerdb listen``: a live session on raw PCM from stdin, or on a file played as if live."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import click

from speakerdb.cli._common import (
    EXIT_ERROR,
    EXIT_NO,
    EXIT_OK,
    db_option,
    device_option,
    emit_json,
    handles_errors,
    json_option,
    model_option,
    open_db,
    operating_point_options,
    threshold_option,
)
from speakerdb.decisions import DecisionOptions
from speakerdb.errors import SpeakerDBError, UsageError

CHUNK_SECONDS = 0.1  # what a telephony stack hands on at a time: 100 ms frames


@click.command()
@click.argument("args", nargs=-1, metavar="[NAME] [FILE|-]")
@click.option("--identify", is_flag=True, help="Identify among everyone enrolled (no NAME).")
@click.option(
    "--rate",
    type=int,
    default=None,
    help="Sample rate (Hz) of raw PCM input. Required for stdin; with a FILE, reads the "
    "file as raw PCM instead of decoding it.",
)
@click.option(
    "--format",
    "pcm_format",
    type=click.Choice(["s16le", "f32le"]),
    default="s16le",
    show_default=True,
    help="Raw PCM sample format (mono, little-endian).",
)
@click.option(
    "--realtime",
    is_flag=True,
    help="Play a FILE at the pace of its audio, as if it arrived live.",
)
@db_option
@model_option
@device_option
@threshold_option
@operating_point_options
@json_option
@handles_errors
def listen(
    args: tuple[str, ...],
    identify: bool,
    rate: int | None,
    pcm_format: str,
    realtime: bool,
    db_url: str | None,
    model_name: str | None,
    device: str | None,
    threshold: float | None,
    prior: float | None,
    far: float | None,
    as_json: bool,
) -> None:
    """Verify NAME (or --identify) live while audio arrives, from FILE or stdin (- or none).

    Prints one line per event (--json: one JSON object per line): progress (speech seconds
    so far), decision (ACCEPT / REJECT, IDENTIFIED / UNKNOWN, with the LLR and the rule,
    early when the evidence is strong), speaker_change (another voice took over), error
    (bad input; the session goes on), and the summary at the end. Exit status from the
    final decision: 0 accepted / identified, 1 rejected / unknown, 2 error.

        arecord -f S16_LE -r 8000 | speakerdb listen alice --rate 8000 --format s16le
    """
    from speakerdb.live import ErrorEvent

    name, source = _arguments(args, identify)
    if source == "-" and rate is None:
        raise UsageError("raw PCM on stdin needs --rate (and --format, default s16le)")
    chunks = _chunks(source, rate, pcm_format)
    failed = False
    with open_db(db_url, model_name, device, read_only=True) as db:
        options = DecisionOptions(threshold, prior, far)
        session = db.session(speaker=name, options=options)
        started = time.monotonic()
        try:
            for chunk, chunk_rate in chunks:
                if realtime:
                    # Wall-clock pacing lives here only: the library never looks at a clock.
                    ahead = session.time - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
                try:
                    events: list[Any] = session.feed(chunk, sample_rate=chunk_rate)
                except SpeakerDBError as exc:
                    events = [ErrorEvent(session.time, exc.code, exc.message)]
                for event in events:
                    failed = failed or isinstance(event, ErrorEvent)
                    _print(event, as_json)
                if session.closed or any(getattr(e, "fatal", False) for e in events):
                    break
        except SpeakerDBError as exc:  # the input itself failed (a corrupt file mid-way)
            _print(ErrorEvent(session.time, exc.code, exc.message, fatal=True), as_json)
            failed = True
        summary = session.close()
    _print(summary, as_json)
    if failed:
        sys.exit(EXIT_ERROR)
    sys.exit(EXIT_OK if summary.accepted else EXIT_NO)


def _arguments(args: tuple[str, ...], identify: bool) -> tuple[str | None, str]:
    if identify:
        if len(args) > 1:
            raise UsageError("listen --identify takes at most one FILE (no NAME)")
        return None, args[0] if args else "-"
    if not args:
        raise UsageError("listen needs the NAME of the speaker to verify (or --identify)")
    if len(args) > 2:
        raise UsageError("listen takes a NAME and at most one FILE")
    return args[0], args[1] if len(args) == 2 else "-"


def _chunks(source: str, rate: int | None, pcm_format: str) -> Iterator[tuple[Any, int]]:
    from speakerdb.live import PcmDecoder, file_chunks

    if rate is None:
        return file_chunks(Path(source), CHUNK_SECONDS)
    decoder = PcmDecoder(pcm_format, rate)
    if source == "-":
        return _raw(sys.stdin.buffer, decoder)
    try:
        handle = Path(source).open("rb")  # noqa: SIM115 - closed by the generator
    except OSError as exc:
        raise UsageError(f"cannot read {source}: {exc.strerror}") from None
    return _raw(handle, decoder, close=True)


def _raw(handle: BinaryIO, decoder: Any, close: bool = False) -> Iterator[tuple[Any, int]]:
    size = max(1, int(decoder.sample_rate * CHUNK_SECONDS)) * decoder.dtype.itemsize
    try:
        while True:
            data = handle.read(size)
            if not data:
                return
            yield decoder.decode(data), decoder.sample_rate
    finally:
        if close:
            handle.close()


def _print(event: Any, as_json: bool) -> None:
    if as_json:
        emit_json(event.to_dict())
        return
    click.echo(_text(event))
    sys.stdout.flush()


def _text(event: Any) -> str:
    kind = event.type
    if kind == "summary":
        segments = ", ".join(
            f"{s.start:.1f}-{s.end:.1f} s {s.speaker or s.decision}" for s in event.segments
        )
        return (
            f"summary: {event.decision} after {event.speech_seconds:.1f} s of speech in "
            f"{event.duration:.1f} s; segments: {segments or 'none'}"
        )
    at = f"{event.time:7.2f} s  "
    if kind == "progress":
        return f"{at}progress  {event.speech_seconds:.1f} s of speech, {event.status}"
    if kind == "decision":
        llr = f"llr {event.llr:.2f}, " if event.llr is not None else ""
        who = f" {event.speaker}" if event.speaker else ""
        spoof = event.spoof or {}
        cm = f"; spoof llr {spoof['llr']:.2f}" if spoof.get("llr") is not None else ""
        return (
            f"{at}decision  {event.decision}{who} ({llr}{event.decision_rule.text}; "
            f"{event.speech_seconds:.1f} s of speech{cm})"
        )
    if kind == "speaker_change":
        return (
            f"{at}speaker_change  the voice no longer matches {event.previous} "
            f"(since {event.window_start:.2f} s)"
        )
    return f"{at}error  {event.message}"


__all__ = ["listen"]
