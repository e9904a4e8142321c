"""Error rates of speakerdb on the development sets' trial lists, with and without AS-norm,
next to the reference figures of ../shared/data/README.md; FAR / FRR of the old fixed cosine
threshold 0.82 and of the default decision of a new database (the bundled calibration,
llr >= ln 99), with the Cllr of its LLRs. The bundled calibration was fitted on these very
sets: its figures here are in-sample (benchmarks/calibration_transfer.py measures transfer).

    python benchmarks/eval_devsets.py [--cohort librispeech/singles.jsonl] [--cohort-size 100]

The AS-norm cohort is a manifest of impostor recordings under ../shared/data (default: the
120 LibriSpeech speakers of singles.jsonl, none of whom appears in any trial list).
Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA, emit
from speakerdb import SpeakerDB
from speakerdb.enroll._lists import read_manifest, read_trials
from speakerdb.model._registry import GE2E_DEFAULT_THRESHOLD

REFERENCE = {  # ../shared/data/README.md: Resemblyzer 0.1.4 pipeline, cosine scoring
    "librispeech": {"eer": 0.0042, "threshold": 0.724, "min_dcf": 0.013},
    "vctk": {"eer": 0.0, "threshold": 0.861, "min_dcf": 0.0},
    "arabic-commands": {"eer": 0.1412, "threshold": 0.707, "min_dcf": 0.945},
    "telephone": {"eer": 0.0690, "threshold": 0.830, "min_dcf": 0.643},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohort", default="librispeech/singles.jsonl")
    parser.add_argument("--cohort-size", type=int, default=100)
    args = parser.parse_args()
    cohort = [e.path for e in read_manifest(DATA / args.cohort)]
    results: dict[str, dict] = {}
    fixed = GE2E_DEFAULT_THRESHOLD
    lines = [
        f"{'set':<16}{'trials':>7}  {'EER':>7} {'thr':>6} {'minDCF':>7}  "
        f"{f'FAR@{fixed:.2f}':>8} {f'FRR@{fixed:.2f}':>8}  {'FAR dflt':>8} {'FRR dflt':>8} "
        f"{'Cllr':>6}  {'AS-norm EER':>11} {'minDCF':>7}  {'reference EER':>13}"
    ]
    with tempfile.TemporaryDirectory() as folder, SpeakerDB.open(f"{folder}/eval.sqlite") as db:
        for name, ref in REFERENCE.items():
            trials = read_trials(DATA / name / "trials.txt", require_labels=True)
            raw = db.evaluate(trials)
            normed = db.evaluate(trials, norm="asnorm", cohort=cohort, cohort_size=args.cohort_size)
            tgt, non = raw.target_scores(), raw.nontarget_scores()  # cosines
            at_fixed = {"far": float(np.mean(non >= fixed)), "frr": float(np.mean(tgt < fixed))}
            results[name] = {
                "raw": raw.to_dict(),
                "asnorm": normed.to_dict(),
                "reference": ref,
                "fixed_threshold": at_fixed,
            }
            cllr = raw.calibrated.cllr if raw.calibrated is not None else float("nan")
            lines.append(
                f"{name:<16}{raw.trials:>7}  {raw.eer:>7.2%} {raw.threshold:>6.3f} "
                f"{raw.min_dcf:>7.3f}  {at_fixed['far']:>8.2%} {at_fixed['frr']:>8.2%}  "
                f"{raw.far_at_threshold_in_use:>8.2%} {raw.frr_at_threshold_in_use:>8.2%} "
                f"{cllr:>6.3f}  {normed.eer:>11.2%} {normed.min_dcf:>7.3f}  {ref['eer']:>13.2%}"
            )
    lines.append(f"default decision: {raw.decision_rule['text'] if raw.decision_rule else '?'}")
    emit(lines, {"benchmark": "eval_devsets", "cohort": args.cohort, "results": results})


if __name__ == "__main__":
    main()
