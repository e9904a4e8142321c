"""verify throughput with and without the database's countermeasure.

Enrolls speaker 1998 (spoof/enroll.jsonl) into a temporary SQLite database, then verifies the
same probes (the dev set's SASV trials for that claim: bona fide and attacks, cut to
``--probes``) once without a countermeasure and once with one (``spoof use``), in the same
process after a warm-up of each on two other probes (the countermeasure remembers the scores
of audio it has seen: warming up on the timed probes would time remembered answers), and
reports files per second, their ratio (the issue's goal: >= 0.5) and the load average.

    python benchmarks/spoof_verify_throughput.py --model ../shared/models/aasist/AASIST.pth
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA, emit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="AASIST .pth")
    parser.add_argument("--probes", type=int, default=12)
    args = parser.parse_args()
    from speakerdb import SpeakerDB

    spoof = DATA / "spoof"
    enroll = [
        (spoof / json.loads(line)["audio_filepath"]).resolve()
        for line in (spoof / "enroll.jsonl").read_text().splitlines()
        if json.loads(line)["label"] == "1998"
    ]
    trials = [
        (spoof / line.split()[2]).resolve()
        for line in (spoof / "sasv_trials.txt").read_text().splitlines()
        if line.split()[1] == "1998" and line.split()[0] in ("target", "spoof")
    ]
    probes, warm_up = trials[: args.probes], trials[args.probes : args.probes + 2]
    if len(warm_up) < 2:
        parser.error(f"--probes: at most {len(trials) - 2} (two more are the warm-up)")
    load_before = os.getloadavg()[0]
    timings = {}
    with tempfile.TemporaryDirectory() as tmp, SpeakerDB.open(f"{tmp}/db.sqlite") as db:
        db.enroll("1998", enroll)
        for label in ("without", "with"):
            if label == "with":
                db.use_countermeasure(args.model)
            db.verify_many("1998", warm_up)  # model loads, first-call costs
            started = time.perf_counter()
            results = db.verify_many("1998", probes)
            timings[label] = time.perf_counter() - started
        detected = sum(1 for r in results if getattr(r, "decision", None) == "SPOOF_DETECTED")
    rate = {k: len(probes) / v for k, v in timings.items()}
    load = (load_before + os.getloadavg()[0]) / 2
    ratio = rate["with"] / rate["without"]
    emit(
        [
            f"verify of {len(probes)} probes (speaker 1998, bona fide and attacks)",
            f"without countermeasure: {rate['without']:.2f} files/s",
            f"with countermeasure:    {rate['with']:.2f} files/s ({detected} SPOOF_DETECTED)",
            f"ratio: {ratio:.2f} (goal >= 0.5); load average ~{load:.1f} on {os.cpu_count()} CPUs",
        ],
        {
            "benchmark": "spoof_verify_throughput",
            "probes": len(probes),
            "files_per_s_without": round(rate["without"], 3),
            "files_per_s_with": round(rate["with"], 3),
            "ratio": round(ratio, 3),
            "spoof_detected": detected,
            "load_average": round(load, 2),
        },
    )


if __name__ == "__main__":
    main()
