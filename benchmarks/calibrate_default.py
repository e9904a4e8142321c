"""How the ge2e model's default thresholds were chosen (speakerdb.model._registry).

Verification compares a probe recording with a speaker's voiceprint: the normalised mean of
their enrollment recordings. So the calibration reproduces that use on the read-speech
development sets (LibriSpeech test-other, VCTK): for many random draws, each speaker is
enrolled from 3 random recordings and every other recording is a probe against every
voiceprint. The default threshold is the highest of the sets' thresholds at 1 % false accepts
of their impostor probes (``speakerdb.scoring.threshold_at_far``, as ``speakerdb eval`` and
``calibrate`` use it), rounded to two decimals: no development set lets more than about 1 % of
impostors through. The same for AS-norm scores, with the LibriSpeech singles as cohort.
The 1-second Arabic keyword set is reported but not used: at 1 s per recording no threshold
serves both (see docs/decisions.md).

    python benchmarks/calibrate_default.py [--draws 50]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speakerdb
from _common import DATA, emit
from speakerdb import scoring
from speakerdb.enroll._lists import read_manifest
from speakerdb.model._registry import GE2E_DEFAULT_ASNORM_THRESHOLD, GE2E_DEFAULT_THRESHOLD

CALIBRATION_SETS = ("librispeech", "vctk")
REPORT_SETS = ("librispeech", "vctk", "arabic-commands")
ENROLL_FILES = 3


def protocol_scores(model, name: str, cohort: np.ndarray, draws: int) -> dict[str, np.ndarray]:
    entries = read_manifest(DATA / name / "manifest.jsonl")
    vectors = model.embed_files([e.path for e in entries])
    labels = np.array([e.speaker for e in entries])
    speakers = sorted(set(labels))
    out: dict[str, list[float]] = {
        "target": [],
        "impostor": [],
        "target_asnorm": [],
        "impostor_asnorm": [],
    }
    rng = np.random.default_rng(0)
    for _ in range(draws):
        centroids, probes = [], []
        for s in speakers:
            rows = rng.permutation(np.nonzero(labels == s)[0])
            c = vectors[rows[:ENROLL_FILES]].astype(np.float64).mean(axis=0)
            centroids.append(c / np.linalg.norm(c))
            probes += [(s, i) for i in rows[ENROLL_FILES:]]
        centroids_arr = np.array(centroids)
        probe_vectors = vectors[[i for _, i in probes]]
        raw = scoring.cosine_scores(probe_vectors, centroids_arr)  # (probes, speakers)
        c_side = scoring.cosine_scores(centroids_arr, cohort)
        p_side = scoring.cosine_scores(probe_vectors, cohort)
        for j, s in enumerate(speakers):
            normed = scoring.as_norm(
                raw[:, j], np.repeat(c_side[j : j + 1], len(probes), 0), p_side
            )
            same = np.array([ps == s for ps, _ in probes])
            out["target"] += raw[same, j].tolist()
            out["impostor"] += raw[~same, j].tolist()
            out["target_asnorm"] += normed[same].tolist()
            out["impostor_asnorm"] += normed[~same].tolist()
    return {k: np.array(v) for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=50)
    parser.add_argument("--far", type=float, default=0.01)
    args = parser.parse_args()
    model = speakerdb.load_model(device="cpu")
    cohort = model.embed_files(
        [e.path for e in read_manifest(DATA / "librispeech" / "singles.jsonl")]
    )
    per_set = {name: protocol_scores(model, name, cohort, args.draws) for name in REPORT_SETS}
    per_set_raw = {
        n: scoring.threshold_at_far(per_set[n]["impostor"], args.far) for n in CALIBRATION_SETS
    }
    per_set_norm = {
        n: scoring.threshold_at_far(per_set[n]["impostor_asnorm"], args.far)
        for n in CALIBRATION_SETS
    }
    raw_t = round(max(per_set_raw.values()), 2)
    norm_t = round(max(per_set_norm.values()), 2)
    lines = [
        f"raw cosine: thresholds at {args.far:.0%} FAR "
        + ", ".join(f"{n} {t:.3f}" for n, t in per_set_raw.items())
        + f" -> {raw_t:.2f} (in use: {GE2E_DEFAULT_THRESHOLD:.2f})",
        "AS-norm:    "
        + ", ".join(f"{n} {t:.3f}" for n, t in per_set_norm.items())
        + f" -> {norm_t:.2f} (in use: {GE2E_DEFAULT_ASNORM_THRESHOLD:.2f})",
    ]
    record: dict = {
        "benchmark": "calibrate_default",
        "threshold": raw_t,
        "asnorm_threshold": norm_t,
        "sets": {},
    }
    for name, scores in per_set.items():
        row = {
            "far": float(np.mean(scores["impostor"] >= GE2E_DEFAULT_THRESHOLD)),
            "frr": float(np.mean(scores["target"] < GE2E_DEFAULT_THRESHOLD)),
            "asnorm_far": float(
                np.mean(scores["impostor_asnorm"] >= GE2E_DEFAULT_ASNORM_THRESHOLD)
            ),
            "asnorm_frr": float(np.mean(scores["target_asnorm"] < GE2E_DEFAULT_ASNORM_THRESHOLD)),
            "target_probes": int(scores["target"].size),
            "impostor_probes": int(scores["impostor"].size),
        }
        record["sets"][name] = row
        lines.append(
            f"  {name:<16} at the defaults: FAR {row['far']:.2%} FRR {row['frr']:.2%} | "
            f"AS-norm FAR {row['asnorm_far']:.2%} FRR {row['asnorm_frr']:.2%}"
        )
    emit(lines, record)


if __name__ == "__main__":
    main()
