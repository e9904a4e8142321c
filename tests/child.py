"""Run a piece of work in a fresh interpreter and read what it reports: for tests of inputs
that must not hang or take unbounded memory, so that a regression fails one test (the child
is killed at its time or memory bound) instead of hanging or exhausting the test run."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import textwrap

from helpers import ROOT

_REPORT = """
import json as _json
# VmHWM: this process image's own peak. (ru_maxrss would include the peak of the pytest
# process it was forked from: Linux carries it across exec.)
with open("/proc/self/status") as _status:
    _hwm = next(line for line in _status if line.startswith("VmHWM:"))
RESULT["peak_mb"] = int(_hwm.split()[1]) / 1024
print(_json.dumps(RESULT))
"""


def run_child(
    script: str,
    *args: str,
    timeout: float = 300,
    address_space_gb: float = 12,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
) -> dict:
    """Run ``script`` (which sets a dict ``RESULT``) with ``args`` as sys.argv[1:]; return
    RESULT plus the child's own peak resident memory in MB as ``peak_mb``.

    timeout: seconds before the child is killed (a hang guard, not a latency bound: the
    test fails with TimeoutExpired). address_space_gb: the child's RLIMIT_AS, so that a
    runaway allocation ends in MemoryError instead of pressing on the shared machine
    (importing torch alone maps about 5 GB of address space)."""
    limit = int(address_space_gb * (1 << 30))

    def bound() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script) + _REPORT, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        cwd=cwd,
        timeout=timeout,
        preexec_fn=bound,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
