"""Naming in diarization with the bundled calibration and with the database's own.

For each conversation set (conversations/ at 16 kHz, conversations-8k/ at 8 kHz): a temporary
SQLite database enrolls the known speakers (the set's enroll.jsonl, 3 recordings each) and
``--others`` further single-recording voices (librispeech singles never heard in any
conversation; for the 8 kHz set passed through a phone line here: 8 kHz, 300-3400 Hz,
mu-law), so that it has the speakers a self-calibration needs. Every conversation is
diarized with the bundled calibration, then the database self-calibrates
(``SpeakerDB.calibrate_from_enrollments``) and every conversation is diarized again; the
phase "self asnorm" self-calibrates AS-norm scores (``norm="asnorm"``) and names with
``diarize(norm="asnorm")`` (each voice's candidates normalised against the other enrolled
speakers).

Scored per 10 ms frame where exactly one reference speaker talks:
- named known: a known speaker's frames given his name (goal >= 90 % / 80 % at 16 / 8 kHz);
- wrong name: frames given another enrolled speaker's name, over all such frames (<= 2 %);
- unknown named: an unknown speaker's frames given any enrolled name (<= 1 %).
The self-calibration never saw the conversations (its trials are the enrollment recordings).

    SPEAKERDB_TEST_DATA=../shared/data python benchmarks/self_calibration_naming.py
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy import signal

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA, emit

SETS = ("conversations", "conversations-8k")
FRAME = 0.01


def phone_copy(path: Path, out: Path) -> Path:
    """The recording as a phone line carries it: 8 kHz, 300-3400 Hz band, mu-law (255)."""
    samples, rate = sf.read(str(path), dtype="float64", always_2d=True)
    mono = samples.mean(axis=1)
    narrow = signal.resample_poly(mono, 8000, rate)
    sos = signal.butter(6, [300, 3400], btype="bandpass", fs=8000, output="sos")
    band = signal.sosfilt(sos, narrow)
    band = band / max(1e-9, float(np.max(np.abs(band)))) * 0.7
    mu = 255.0
    code = np.round(np.sign(band) * np.log1p(mu * np.abs(band)) / np.log1p(mu) * 127) / 127
    line = np.sign(code) * ((1 + mu) ** np.abs(code) - 1) / mu
    sf.write(str(out), line.astype(np.float32), 8000, subtype="PCM_16")
    return out


def reference_frames(rttm: Path, n: int) -> list[set[str]]:
    frames: list[set[str]] = [set() for _ in range(n)]
    for line in rttm.read_text().splitlines():
        parts = line.split()
        if len(parts) < 8 or parts[0] != "SPEAKER":
            continue
        start, length, who = float(parts[3]), float(parts[4]), parts[7]
        for i in range(int(start / FRAME), min(n, int((start + length) / FRAME))):
            frames[i].add(who)
    return frames


def score(turns, rttm: Path, duration: float, known: set[str], enrolled: set[str]) -> dict:
    n = int(duration / FRAME) + 1
    ref = reference_frames(rttm, n)
    hyp: list[str | None] = [None] * n
    for t in turns:
        for i in range(int(t.start / FRAME), min(n, int(t.end / FRAME))):
            hyp[i] = t.name
    out = {"known": 0, "named_known": 0, "wrong": 0, "speech": 0, "unknown": 0, "unknown_named": 0}
    for who, name in zip(ref, hyp, strict=True):
        if len(who) != 1:
            continue
        (speaker,) = who
        out["speech"] += 1
        if speaker in known:
            out["known"] += 1
            out["named_known"] += int(name == speaker)
        else:
            out["unknown"] += 1
            out["unknown_named"] += int(name is not None)
        out["wrong"] += int(name is not None and name != speaker and name in enrolled)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--others", type=int, default=20, help="extra single-recording voices")
    parser.add_argument(
        "--forms",
        default="affine,full,asnorm",
        help="self-calibration forms to measure (SELF_FORM, or asnorm: AS-norm scores)",
    )
    args = parser.parse_args()
    forms = [f for f in args.forms.split(",") if f]

    import speakerdb
    from speakerdb import SpeakerDB
    from speakerdb.enroll import _enrollment_trials as et

    model = speakerdb.load_model(device="cpu")
    record: dict = {"benchmark": "self_calibration_naming", "sets": {}}
    lines = [
        "naming: share of frames (10 ms, one reference speaker): named known / wrong name "
        "/ unknown named"
    ]
    heard: set[str] = set()
    for name in SETS:
        for line in (DATA / name / "manifest.jsonl").read_text().splitlines():
            item = json.loads(line)
            heard |= set(item["known"]) | set(item["unknown"])
    singles = [
        (json.loads(line)["label"], DATA / "librispeech" / json.loads(line)["audio_filepath"])
        for line in (DATA / "librispeech" / "singles.jsonl").read_text().splitlines()
    ]
    others = [(label, path) for label, path in singles if label not in heard][: args.others]
    for name in SETS:
        base = DATA / name
        with tempfile.TemporaryDirectory() as tmp:
            db = SpeakerDB.open(Path(tmp) / "naming.sqlite", model=model)
            groups: dict[str, list[str]] = {}
            for line in (base / "enroll.jsonl").read_text().splitlines():
                item = json.loads(line)
                groups.setdefault(item["label"], []).append(str(base / item["audio_filepath"]))
            for label, path in others:
                if name.endswith("8k"):
                    path = phone_copy(path, Path(tmp) / f"{label}.wav")
                groups[f"other-{label}"] = [str(path)]
            for speaker, files in groups.items():
                db.enroll(speaker, files)
            enrolled = set(groups)
            conversations = [
                json.loads(line) for line in (base / "manifest.jsonl").read_text().splitlines()
            ]
            totals: dict[str, dict[str, int]] = {}
            note = ""
            for phase in ("bundled", *(f"self {form}" for form in forms)):
                norm = "asnorm" if phase == "self asnorm" else None
                if phase == "self asnorm":
                    fitted = db.calibrate_from_enrollments(norm="asnorm")
                    note = fitted.calibration.fit.note if fitted.calibration else ""
                elif phase != "bundled":
                    default_form = et.SELF_FORM
                    et.SELF_FORM = phase.split()[1]  # the library's default, for this fit
                    try:
                        fitted = db.calibrate_from_enrollments()
                    finally:
                        et.SELF_FORM = default_form
                    note = fitted.calibration.fit.note if fitted.calibration else ""
                sums = dict.fromkeys(
                    ("known", "named_known", "wrong", "speech", "unknown", "unknown_named"), 0
                )
                for conv in conversations:
                    result = db.diarize(base / conv["audio_filepath"], norm=norm)
                    got = score(
                        result.turns,
                        base / conv["rttm_filepath"],
                        result.duration,
                        set(conv["known"]),
                        enrolled,
                    )
                    for k, v in got.items():
                        sums[k] += v
                totals[phase] = sums
            db.close()
        figures = {
            phase: {
                "named_known": s["named_known"] / max(1, s["known"]),
                "wrong_name": s["wrong"] / max(1, s["speech"]),
                "unknown_named": s["unknown_named"] / max(1, s["unknown"]),
            }
            for phase, s in totals.items()
        }
        record["sets"][name] = {"figures": figures, "frames": totals, "fit": note}
        for phase, f in figures.items():
            lines.append(
                f"{name:18} {phase:12} {100 * f['named_known']:6.1f} % "
                f"{100 * f['wrong_name']:6.2f} % {100 * f['unknown_named']:6.2f} %"
            )
        lines.append(f"{'':18} self fit: {note}")
    emit(lines, record)


if __name__ == "__main__":
    main()
