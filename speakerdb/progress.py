"""A small progress bar on stderr for long work (decoding and embedding many files).

Drawn only when stderr is a terminal, so logs and pipes stay clean; ``--json`` output on
stdout is never touched.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["ProgressBar"]


class ProgressBar:
    """Callable with the count of items done so far; ``close()`` ends the line."""

    def __init__(
        self, total: int, label: str, stream: TextIO | None = None, force: bool = False
    ) -> None:
        self.total = max(total, 0)
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = force or _isatty(self.stream)
        self._started = time.monotonic()
        self._last_draw = 0.0
        self._done = 0
        self._drawn = False

    def __call__(self, done: int) -> None:
        self._done = done
        now = time.monotonic()
        if self.enabled and (now - self._last_draw >= 0.1 or done >= self.total):
            self._last_draw = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        width = 30
        fraction = self._done / self.total if self.total else 1.0
        filled = round(width * min(fraction, 1.0))
        elapsed = now - self._started
        rate = self._done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self._done) / rate if rate > 0 else 0.0
        self.stream.write(
            f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] "
            f"{self._done}/{self.total} {elapsed:5.1f}s eta {eta:5.1f}s"
        )
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
