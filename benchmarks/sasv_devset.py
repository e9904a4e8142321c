"""``eval --sasv`` on the development SASV trials (spoof/sasv_trials.txt).

Enrolls every speaker of spoof/enroll.jsonl into a temporary SQLite database (before the
countermeasure is recorded, so enrollment is not screened), records the countermeasure, and
prints the SASV figures of :meth:`SpeakerDB.evaluate_sasv`. The bundled spoof calibration
was fitted on every development set, these attacks included: the figures are NOT held out
(docs/spoofing.md gives the held-out per-set figures).

    python benchmarks/sasv_devset.py --model ../shared/models/aasist/AASIST.pth
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA, emit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="AASIST .pth")
    args = parser.parse_args()
    from speakerdb import SpeakerDB

    spoof = DATA / "spoof"
    speakers: dict[str, list[Path]] = {}
    for line in (spoof / "enroll.jsonl").read_text().splitlines():
        item = json.loads(line)
        speakers.setdefault(item["label"], []).append((spoof / item["audio_filepath"]).resolve())
    with tempfile.TemporaryDirectory() as tmp, SpeakerDB.open(f"{tmp}/db.sqlite") as db:
        for name, files in speakers.items():
            db.enroll(name, files)
        db.use_countermeasure(args.model)
        report = db.evaluate_sasv(spoof / "sasv_trials.txt")
    r = report.to_dict()

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f} %"

    rates = r["error_rates"]
    emit(
        [
            f"SASV dev trials {r['trials']} (unscored {r['unscored']}), {args.model.name}",
            f"SASV-EER {pct(r['sasv_eer'])}  spoof-EER {pct(r['spoof_eer'])}  "
            f"speaker EER {pct(r['speaker_eer'])}",
            f"a-DCF {r['a_dcf']:.3f} (min {r['min_a_dcf']:.3f})",
            f"at the decision in use: target FRR {pct(rates['target_frr'])}, nontarget FAR "
            f"{pct(rates['nontarget_far'])}, spoof FAR {pct(rates['spoof_far'])}",
        ],
        {"benchmark": "sasv_devset", "model": args.model.name, **r},
    )


if __name__ == "__main__":
    main()
