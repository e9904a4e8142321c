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


DEFAULT_PG_URL = os.environ.get(
    "SPEAKERDB_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def run_in_new_process(code: str, timeout: float = 1800) -> dict:
    """Run Python ``code`` (dedented) in a fresh interpreter and return the JSON object of the
    last line it prints, floats rounded to 3 places. Raises CalledProcessError on failure."""
    import subprocess
    import textwrap

    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )
    record = json.loads(out.stdout.strip().splitlines()[-1])
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in record.items()}


def run_arm(script: str, code: str, args: list[str], index_dir: Path) -> dict:
    """Run ``script --child ARGS`` in a fresh interpreter on the speakerdb checkout ``code``
    (its PYTHONPATH and working directory; index files under ``index_dir``), for benchmarks
    that compare the code before with this code; returns the JSON object of the last line
    it prints. Raises CalledProcessError on failure."""
    import subprocess

    env = {**os.environ, "PYTHONPATH": code, "SPEAKERDB_INDEX_DIR": str(index_dir)}
    out = subprocess.run(
        [sys.executable, script, "--child", *args],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        cwd=code,
    ).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def create_scratch_pg(base_url: str, prefix: str) -> tuple[str, tuple[object, str]] | None:
    """A new empty PostgreSQL database on the server of ``base_url``: (its URL, a handle for
    :func:`drop_scratch_pg`), or None (with a note on stderr) when the server is unreachable."""
    try:
        import uuid

        from sqlalchemy import create_engine, text
        from sqlalchemy.engine import make_url

        admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = make_url(base_url).set(database=name).render_as_string(hide_password=False)
        return url, (admin, name)
    except Exception as exc:
        print(f"PostgreSQL unavailable ({type(exc).__name__}: {exc}); skipping it", file=sys.stderr)
        return None


def drop_scratch_pg(handle: tuple[object, str]) -> None:
    from sqlalchemy import text

    admin, name = handle
    with admin.connect() as conn:  # type: ignore[attr-defined]
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()  # type: ignore[attr-defined]
