"""Start-up cost of the command line, measured side by side in one run (median of N):

* ``speakerdb --help``                     (must not import torch)
* ``python -c "import torch, torchaudio"`` (the floor any torch program pays)
* ``speakerdb verify NAME FILE``           (a real verification in a fresh process)

  python benchmarks/cli_startup.py [--runs 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA, emit

SPEAKERDB = [sys.executable, "-m", "speakerdb"]


def wall(cmd: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, check=False, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    vctk = DATA / "vctk"
    enroll = sorted((vctk / "p225").glob("*.wav"))[:3]
    probe = sorted((vctk / "p225").glob("*.wav"))[5]
    with tempfile.TemporaryDirectory() as folder:
        db = str(Path(folder) / "startup.sqlite")
        subprocess.run(
            [*SPEAKERDB, "enroll", "p225", *map(str, enroll), "--db", db],
            check=True,
            capture_output=True,
        )
        verify_cmd = [*SPEAKERDB, "verify", "p225", str(probe), "--db", db]
        help_s = wall([*SPEAKERDB, "--help"], args.runs)
        torch_s = wall([sys.executable, "-c", "import torch, torchaudio"], args.runs)
        verify_s = wall(verify_cmd, args.runs)
    record = {
        "benchmark": "cli_startup",
        "runs": args.runs,
        "help_s": round(help_s, 3),
        "import_torch_torchaudio_s": round(torch_s, 3),
        "verify_s": round(verify_s, 3),
        "verify_over_torch_import": round(verify_s / torch_s, 2),
        "verify_minus_torch_import_s": round(verify_s - torch_s, 3),
    }
    emit(
        [
            f"median of {args.runs} runs, fresh processes:",
            f"  speakerdb --help                  {help_s * 1000:7.0f} ms",
            f"  python -c 'import torch, torchaudio' {torch_s * 1000:4.0f} ms",
            f"  speakerdb verify NAME FILE        {verify_s * 1000:7.0f} ms "
            f"({verify_s / torch_s:.2f}x the torch import; "
            f"{1000 * (verify_s - torch_s):.0f} ms more)",
        ],
        record,
    )


if __name__ == "__main__":
    main()
