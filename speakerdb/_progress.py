"""Progress bars on stderr for long work, drawn by click's progress bar.

Drawn only when stderr is a terminal, so logs, pipes and ``--json`` output stay clean. The
library reports progress as ``callback(done, total)``; :class:`ProgressBar` is such a
callback.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from click._termui_impl import ProgressBar as ClickBar

__all__ = ["ProgressBar"]


class ProgressBar:
    """``bar(done, total)`` draws; ``close()`` (or leaving the ``with`` block) ends the line.

    The bar appears at the first call, when the total is known. Nothing is drawn when
    ``stream`` (default stderr) is not a terminal, unless ``force``.
    """

    def __init__(self, label: str, stream: TextIO | None = None, force: bool = False) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = force or _isatty(self.stream)
        self._bar: ClickBar[int] | None = None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            import click

            self._bar = click.progressbar(
                length=max(total, 1),
                label=self.label,
                file=self.stream,
                show_eta=True,
                show_pos=True,
            )
            self._bar.__enter__()
        self._bar.update(done - self._bar.pos)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
