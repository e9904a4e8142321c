"""Files of biometric data written for the user (embeddings, RTTM turns, trial scores):
readable by their owner only (0600), and replaced atomically.

The bytes go to a temporary file created 0600 in the target's folder, which is flushed to
disk and renamed over the target: a reader sees the old file or the new one, never part of
one, and a file that existed before -- whatever its mode, 0644 included -- is replaced by
a new one of mode 0600 rather than rewritten in place under its old mode. A symlink at the
target is replaced, not followed.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from speakerdb.errors import UsageError, printable

__all__ = ["PRIVATE_MODE", "write_private"]

PRIVATE_MODE = 0o600


def write_private(path: str | os.PathLike[str], data: bytes | str) -> Path:
    """Write ``data`` (str: as UTF-8) to ``path`` with mode 0600, atomically. Returns the
    path. Raises UsageError naming the file when it cannot be written (the target is left
    as it was)."""
    target = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    folder = target.parent if str(target.parent) else Path(".")
    temp: str | None = None
    try:
        # mkstemp creates the file 0600 (whatever the umask): no moment of a looser mode.
        fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(temp, PRIVATE_MODE)
        os.replace(temp, target)
        temp = None
    except OSError as exc:
        raise UsageError(f"cannot write {printable(target)}: {exc.strerror or exc}") from None
    finally:
        if temp is not None:
            with contextlib.suppress(OSError):
                os.unlink(temp)
    with contextlib.suppress(OSError):
        directory = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)  # the rename itself survives a crash
        finally:
            os.close(directory)
    return target
