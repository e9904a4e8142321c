"""The acceptance scenario of verification and identification, through the real SpeakerDB on a
real SQLite file, with the default decision of a new database (the bundled calibration,
llr >= ln 99) and, from the same answers' cosines, the old fixed threshold 0.82:

5 speakers (LibriSpeech test-other) enrolled from 3 random recordings each; every other
recording of theirs verified against its own speaker (genuine) and against the 4 others
(cross-speaker), and identified among the 5; the 120 never-enrolled LibriSpeech voices of
singles.jsonl identified (they should come out unknown). Repeated over random draws.

    python benchmarks/enrollment_protocol.py [--draws 5] [--set librispeech]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA, emit
from speakerdb import SpeakerDB, load_model
from speakerdb.enroll._lists import read_manifest
from speakerdb.model._registry import GE2E_DEFAULT_THRESHOLD

FIXED = GE2E_DEFAULT_THRESHOLD
RULES = ("default", "cosine")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--set", default="librispeech")
    parser.add_argument("--enroll", type=int, default=3, help="recordings per enrolled speaker")
    args = parser.parse_args()
    entries = read_manifest(DATA / args.set / "manifest.jsonl")
    singles_path = DATA / args.set / "singles.jsonl"
    unknown = [e.path for e in read_manifest(singles_path)] if singles_path.exists() else []
    speakers = sorted({e.speaker for e in entries})
    model = load_model(device="cpu")
    counts = {
        rule: {"genuine": [0, 0], "cross": [0, 0], "top1": [0, 0], "unknown": [0, 0]}
        for rule in RULES
    }

    def count(key: str, default_ok: bool, cosine_ok: bool) -> None:
        for rule, ok in (("default", default_ok), ("cosine", cosine_ok)):
            counts[rule][key][0] += int(ok)
            counts[rule][key][1] += 1

    def best_by_cosine(result) -> str | None:
        top = max(result.matches, key=lambda m: m.cosine, default=None)
        return top.name if top is not None and top.cosine >= FIXED else None

    rng = np.random.default_rng(0)
    for _ in range(args.draws):
        with (
            tempfile.TemporaryDirectory() as folder,
            SpeakerDB.open(f"{folder}/p.sqlite", model=model) as db,
        ):
            probes: list[tuple[str, Path]] = []
            for name in speakers:
                files = [e.path for e in entries if e.speaker == name]
                order = rng.permutation(len(files))
                db.enroll(name, [files[i] for i in order[: args.enroll]])
                probes += [(name, files[i]) for i in order[args.enroll :]]
            for claimed in speakers:
                for result, (owner, _) in zip(
                    db.verify_many(claimed, [p for _, p in probes]), probes, strict=True
                ):
                    genuine = owner == claimed
                    by_cosine = result.cosine >= FIXED
                    count(
                        "genuine" if genuine else "cross",
                        result.accepted == genuine,
                        by_cosine == genuine,
                    )
                    rule = result.decision_rule.text
            for result, (owner, _) in zip(
                db.identify_many([p for _, p in probes]), probes, strict=True
            ):
                count("top1", result.best == owner, best_by_cosine(result) == owner)
            for result in db.identify_many(unknown):
                count("unknown", result.best is None, best_by_cosine(result) is None)
    rates = {
        rule: {k: (v[0] / v[1] if v[1] else None) for k, v in by_key.items()}
        for rule, by_key in counts.items()
    }
    labels = {
        "genuine": "other recordings of enrolled speakers accepted",
        "cross": "cross-speaker probes rejected",
        "top1": "identified as the right speaker (top-1, above threshold)",
        "unknown": "never-enrolled voices answered unknown",
    }
    lines = [f"{args.set}, {args.draws} draws; default: {rule}; cosine: >= {FIXED}"]
    for key, label in labels.items():
        if rates["default"][key] is None:
            continue
        cells = "  ".join(
            f"{r}: {rates[r][key]:7.2%} ({counts[r][key][0]}/{counts[r][key][1]})" for r in RULES
        )
        lines.append(f"  {label}: {cells}")
    emit(
        lines,
        {
            "benchmark": "enrollment_protocol",
            "set": args.set,
            "default_rule": rule,
            "fixed_threshold": FIXED,
            "rates": rates,
            "counts": counts,
        },
    )


if __name__ == "__main__":
    main()
