"""Diarization on the development conversations: DER, naming errors, speed and memory.

First the held-out table (:mod:`_diarize_heldout`): every data-chosen constant of the
speech mask and the turns chosen on one conversation set (16 kHz or 8 kHz) and scored on
the other, DER split into missed speech, false alarm and confusion; the pyannote sample
recording scored without being told the number of speakers. Window embeddings are cached
in /tmp/speakerdb-diarize-cache (delete it to re-embed).

Then naming (``--skip-naming`` skips it): enrolls the known speakers
(conversations/enroll.jsonl) into a temporary SQLite database, diarizes every conversation
with ``SpeakerDB.diarize`` and scores it against its reference RTTM (collar 0.25 s on each
side; pyannote.metrics), split by conversations with and without overlapping turns.
Beside it, in the same run, a baseline: fixed 2 s segments, each labelled by
identification against the same database (the best enrolled speaker if the rule accepts
it, else one "unknown" label).

Speed and memory: a 10-minute recording (conversations concatenated, WAV) is diarized in a
fresh process (real-time factor including decoding, peak RSS), and so is a long one
(``--long-minutes``, default 120) to show that memory stays bounded.

    python benchmarks/diarize_devsets.py [--long-minutes 30] [--skip-speed] [--skip-naming]
    python benchmarks/diarize_devsets.py --speed-only --long-minutes 0   # the 10-minute figure
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA, ROOT, emit

CONV = DATA / "conversations"


def enroll(db_path: Path, model: object) -> object:
    from speakerdb import SpeakerDB

    db = SpeakerDB.open(db_path, model=model)
    by: dict[str, list[Path]] = {}
    for line in (CONV / "enroll.jsonl").read_text().splitlines():
        item = json.loads(line)
        by.setdefault(item["label"], []).append(CONV / item["audio_filepath"])
    for name, files in by.items():
        db.enroll(name, files)
    return db


def baseline_turns(db: object, path: Path, file_id: str) -> list:
    """Fixed 2 s segments labelled by identification (the best accepted name, else unknown)."""
    from speakerdb.diarize import RttmTurn
    from speakerdb.errors import AudioError

    samples, rate = sf.read(path, dtype="float32")
    step = 2 * rate
    pieces = [samples[i : i + step] for i in range(0, len(samples), step)]
    results = db.identify_many(pieces, top_k=1, sample_rate=rate)  # type: ignore[attr-defined]
    turns = []
    for i, result in enumerate(results):
        if isinstance(result, AudioError):
            continue  # no speech in this segment
        label = result.best or "unknown_1"
        turns.append(RttmTurn(file_id, 2.0 * i, min(2.0, len(pieces[i]) / rate), label))
    return turns


def accuracy(model: object) -> tuple[dict, list[dict]]:
    from speakerdb.diarize import read_rttm
    from speakerdb.diarize._evaluate import (
        read_diarization_manifest,
        score_diarization,
        total_score,
    )

    entries = read_diarization_manifest(CONV / "manifest.jsonl")
    rows = []
    scores: dict[str, dict[str, list]] = {"speakerdb": {}, "baseline": {}}
    with tempfile.TemporaryDirectory() as tmp:
        db = enroll(Path(tmp) / "dev.sqlite", model)
        try:
            for entry in entries:
                reference = read_rttm(entry.rttm)
                started = time.perf_counter()
                result = db.diarize(entry.audio)  # type: ignore[attr-defined]
                seconds = time.perf_counter() - started
                ours = score_diarization(
                    reference,
                    result.rttm_turns(entry.file_id),
                    known=entry.known,
                    duration=result.duration,
                )
                base = score_diarization(
                    reference,
                    baseline_turns(db, entry.audio, entry.file_id),
                    known=entry.known,
                    duration=result.duration,
                )
                group = "overlap" if entry.overlap else "no_overlap"
                for name, score in (("speakerdb", ours), ("baseline", base)):
                    scores[name].setdefault(group, []).append(score)
                    scores[name].setdefault("all", []).append(score)
                rows.append(
                    {
                        "file": entry.file_id,
                        "overlap": entry.overlap,
                        # From the RTTM: the manifest's num_speakers counts one absent speaker
                        "speakers_ref": len({t.speaker for t in reference}),
                        "speakers_found": result.num_speakers,
                        "names": [s.label for s in result.speakers],
                        "rtf_x": round(result.duration / seconds, 1),
                        **{
                            k: round(v, 4) if isinstance(v, float) else v
                            for k, v in ours.to_dict().items()
                        },
                        "baseline_der": round(base.der, 4),
                    }
                )
        finally:
            db.close()  # type: ignore[attr-defined]
    summary = {
        system: {group: total_score(items).to_dict() for group, items in groups.items()}
        for system, groups in scores.items()
    }
    return summary, rows


def long_file(path: Path, minutes: float) -> float:
    """A WAV of the conversations concatenated (repeated) to ``minutes``; returns seconds."""
    files = sorted(CONV.glob("conv*.flac"))
    target = int(minutes * 60 * 16000)
    written = 0
    with sf.SoundFile(path, "w", samplerate=16000, channels=1, subtype="PCM_16") as out:
        while written < target:
            for f in files:
                data, _ = sf.read(f, dtype="float32")
                data = data[: target - written]
                out.write(data)
                written += len(data)
                if written >= target:
                    break
    return written / 16000


_CHILD = """
import json, resource, sys, time
from speakerdb import load_model
from speakerdb.diarize import diarize
model = load_model(device="cpu")
base = resource.getrusage(resource.RUSAGE_SELF)
started = time.perf_counter()
result = diarize(sys.argv[1], model)
seconds = time.perf_counter() - started
end = resource.getrusage(resource.RUSAGE_SELF)
cpu = end.ru_utime + end.ru_stime - base.ru_utime - base.ru_stime
print(json.dumps({
    "seconds": seconds, "cpu_seconds": cpu, "duration": result.duration,
    "voices": result.num_speakers, "turns": len(result.turns),
    "peak_rss_mb": end.ru_maxrss / 1024, "rss_before_mb": base.ru_maxrss / 1024,
}))
"""


def speed(path: Path) -> dict:
    """Diarize ``path`` in a fresh process (model loaded before the clock starts); with the
    machine's 1-minute load average before and after (the machine is shared)."""
    load_before = os.getloadavg()[0]
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    record = json.loads(out.stdout.strip().splitlines()[-1])
    record["load_average"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    record["rtf_x"] = round(record["duration"] / record["seconds"], 1)
    # The machine is shared: CPU seconds over its 2 cores bound what an idle machine does.
    record["rtf_x_cpu_2cores"] = round(record["duration"] / (record["cpu_seconds"] / 2), 1)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--long-minutes", type=float, default=30.0)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-naming", action="store_true")
    parser.add_argument(
        "--speed-only", action="store_true", help="only the speed and memory figures"
    )
    args = parser.parse_args()
    import warnings

    warnings.filterwarnings("ignore")
    from _diarize_heldout import held_out, summary_lines

    from speakerdb import load_model

    record: dict = {"benchmark": "diarize_devsets"}
    lines: list[str] = []
    if not args.speed_only:
        model = load_model(device="cpu")
        heldout = held_out(model)
        record["held_out"] = heldout
        lines = summary_lines(heldout)
    summary: dict = {}
    rows: list[dict] = []
    if not args.skip_naming and not args.speed_only:
        summary, rows = accuracy(model)
        record.update({"accuracy": summary, "files": rows})
        lines.append("16 kHz conversations with the known speakers enrolled (library defaults):")
        lines.append(
            "file     ovl  spk ref/found  DER     miss    FA      conf    naming  base-DER  x RT"
        )
    for r in rows:
        lines.append(
            f"{r['file']:<8} {'yes' if r['overlap'] else 'no ':<4} {r['speakers_ref']}/"
            f"{r['speakers_found']:<10} {r['der']:6.2%}  {r['missed']:6.2%}  "
            f"{r['false_alarm']:6.2%}  {r['confusion']:6.2%}  {r['naming_error']:6.2%}  "
            f"{r['baseline_der']:7.2%}  {r['rtf_x']:5.1f}"
        )
    for system, groups in summary.items():
        for group, s in groups.items():
            unknown = s["unknown_named"]
            lines.append(
                f"{system:<9} {group:<10} DER {s['der']:6.2%} (missed {s['missed']:.2%}, FA "
                f"{s['false_alarm']:.2%}, confusion {s['confusion']:.2%})  naming error "
                f"{s['naming_error']:.2%}  unknown speech named "
                f"{'n/a' if unknown is None else f'{unknown:.2%}'}"
            )
    if not args.skip_speed:
        with tempfile.TemporaryDirectory() as tmp:
            ten = Path(tmp) / "ten_minutes.wav"
            long_file(ten, 10)
            record["ten_minutes"] = speed(ten)
            ten.unlink()
            if args.long_minutes > 0:
                longer = Path(tmp) / "long.wav"
                long_file(longer, args.long_minutes)
                record["long"] = speed(longer)
        t = record["ten_minutes"]
        lines.append(
            f"10-minute WAV: {t['rtf_x']} x real time including decoding "
            f"({t['seconds']:.1f} s wall, {t['cpu_seconds']:.1f} s CPU = "
            f"{t['rtf_x_cpu_2cores']} x on 2 idle cores), peak RSS {t['peak_rss_mb']:.0f} MB "
            f"(model loaded: {t['rss_before_mb']:.0f} MB); load average {t['load_average']}"
        )
        if "long" in record:
            g = record["long"]
            lines.append(
                f"{g['duration'] / 60:.0f}-minute WAV: {g['rtf_x']} x real time "
                f"({g['rtf_x_cpu_2cores']} x by CPU time), peak RSS "
                f"{g['peak_rss_mb']:.0f} MB (model loaded: {g['rss_before_mb']:.0f} MB)"
            )
    record["peak_rss_mb_self"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    emit(lines, record)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
