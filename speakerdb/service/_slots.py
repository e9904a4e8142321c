"""Live-session slots: the server-wide cap on sessions, shared by every worker process.

``speakerdb serve --workers N`` runs N processes. A count kept in each process let N x
``--max-sessions`` sessions in, a cap that was not one. A slot is instead one of
``capacity`` lock files in a directory every worker of the server uses: a session holds an
exclusive, non-blocking ``flock`` on one of them for as long as it runs. The kernel drops a
lock when its file is closed or its process dies, so a worker killed mid-session frees its
slots by itself: there is no shared count to repair after a crash.

``flock`` locks belong to an open file description, not to a process, so two opens of one
file in the same process exclude each other as well: one process with its own private
directory (a single worker, or an app mounted by other code) needs nothing else. POSIX
only, as the index file's lock (:mod:`speakerdb.storage._index_file`).
"""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
import tempfile
import threading
from pathlib import Path

__all__ = ["SESSION_SLOTS_ENV", "SessionSlot", "SessionSlots"]

# Set by ``speakerdb serve --workers N`` (a private directory of its own) for its workers.
SESSION_SLOTS_ENV = "SPEAKERDB_SESSION_SLOTS"


class SessionSlot:
    """One held slot; :meth:`release` (idempotent) gives it back."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the only descriptor drops the lock


class SessionSlots:
    """At most ``capacity`` slots held at once by everyone using ``folder``.

    folder: the shared directory (made by ``speakerdb serve``, mode 0700); None: a private
    one, made at the first :meth:`acquire` and removed by :meth:`close`. Thread-safe.
    """

    def __init__(self, capacity: int, folder: str | os.PathLike[str] | None = None) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._folder = Path(folder) if folder is not None else None
        self._private = folder is None
        self._lock = threading.Lock()

    def acquire(self) -> SessionSlot | None:
        """A free slot, or None when all ``capacity`` are held (by any process). Never
        blocks. Raises OSError when the directory cannot be used."""
        folder = self._directory()
        # From a random slot on: with k of n held the search opens n / (n - k) files on
        # average, not the k+1 of a search that always starts at the first.
        start = secrets.randbelow(self.capacity)
        for step in range(self.capacity):
            index = (start + step) % self.capacity
            fd = os.open(folder / f"slot-{index}", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            except BaseException:
                os.close(fd)
                raise
            return SessionSlot(fd)
        return None

    def close(self) -> None:
        """Remove the private directory (slots still held stay valid until released)."""
        with self._lock:
            folder, private = self._folder, self._private
            if private:
                self._folder = None
        if private and folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

    def _directory(self) -> Path:
        with self._lock:
            if self._folder is None:
                self._folder = Path(tempfile.mkdtemp(prefix="speakerdb-sessions-"))
            return self._folder
