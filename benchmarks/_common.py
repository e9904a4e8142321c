"""Shared bits of the benchmark scripts: timing statistics and the dev-data location."""

from __future__ import annotations

import json
import os
import resource
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SPEAKERDB_TEST_DATA", ROOT.parent / "shared" / "data")).resolve()


def percentiles_ms(seconds: list[float] | np.ndarray) -> dict[str, float]:
    values = np.asarray(seconds, dtype=np.float64) * 1000.0
    return {
        "p50_ms": round(float(np.percentile(values, 50)), 4),
        "p99_ms": round(float(np.percentile(values, 99)), 4),
        "mean_ms": round(float(values.mean()), 4),
    }


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def emit(summary_lines: list[str], record: dict) -> None:
    """Print the readable summary, then the JSON record as the last line of stdout."""
    for line in summary_lines:
        print(line)
    print(json.dumps(record))
    sys.stdout.flush()
