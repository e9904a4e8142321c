"""Live-session slots: the server-wide cap on sessions, shared by every worker process.

``speakerdb serve --workers N`` runs N processes. A count kept in each process let N x
``--max-sessions`` sessions in, a cap that was not one. A slot is instead one of
``capacity`` lock files in a directory every worker of the server uses (``serve`` makes it,
mode 0700, and names it in :data:`SESSION_SLOTS_ENV`): a session holds an exclusive,
non-blocking ``flock`` on one of them for as long as it runs. The kernel drops a lock when
its file is closed or its process dies, so a worker killed mid-session frees its slots by
itself: there is no shared count to repair after a crash. ``flock`` locks belong to an open
file description, so two opens of one file exclude each other within one process too.

The directory is checked once, when the slots are made (a directory of this user's, no
access for anyone else, not a symbolic link), and held open: the slot files are opened
relative to it (``O_NOFOLLOW``, regular files only), and a shared lock on it for the
process's lifetime tells age-based temporary-file cleaners (systemd-tmpfiles) to leave it
alone; an unlinked slot file would let a second holder in. It must be on a local file
system (NFS emulates ``flock`` with per-process locks). POSIX only, as the index file's
lock (:mod:`speakerdb.storage._index_file`).

One process without a shared directory (a single worker, an app mounted by other code)
counts its sessions in memory.
"""

from __future__ import annotations

import fcntl
import functools
import os
import secrets
import stat
import threading
from collections.abc import Callable

from speakerdb.errors import ConfigurationError

__all__ = ["SESSION_SLOTS_ENV", "SessionSlot", "SessionSlots"]

# Set by ``speakerdb serve --workers N`` (a private directory of its own) for its workers.
SESSION_SLOTS_ENV = "SPEAKERDB_SESSION_SLOTS"


class SessionSlot:
    """One held slot; :meth:`release` (idempotent; also on leaving a ``with`` block) gives
    it back."""

    def __init__(self, release: Callable[[], None]) -> None:
        self._release: Callable[[], None] | None = release

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()

    def __enter__(self) -> SessionSlot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class SessionSlots:
    """At most ``capacity`` slots held at once: by every process using ``folder`` (see the
    module docstring), or by this process alone when ``folder`` is None. Thread-safe.

    Raises ConfigurationError when ``folder`` is not a private directory of this user's.
    """

    def __init__(self, capacity: int, folder: str | os.PathLike[str] | None = None) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._lock = threading.Lock()
        self._held: set[int] = set()  # slot indices this process holds (shared directory)
        self._count = 0  # slots held (no shared directory)
        self._dir: int | None = None if folder is None else _open_private_directory(folder)

    def acquire(self) -> SessionSlot | None:
        """A free slot, or None when all ``capacity`` are held. Never blocks (a few system
        calls per slot tried). Raises OSError when the directory can no longer be used."""
        with self._lock:
            if self._dir is None:
                if self._count >= self.capacity:
                    return None
                self._count += 1
                return SessionSlot(self._give_back_count)
            free = [i for i in range(self.capacity) if i not in self._held]
            # From a random slot on: with k of n held elsewhere the search opens about
            # n / (n - k) files, not the k + 1 of one that always starts at the first.
            start = secrets.randbelow(len(free)) if free else 0
            for index in free[start:] + free[:start]:
                fd = self._locked_slot_file(index)
                if fd is not None:
                    self._held.add(index)
                    return SessionSlot(functools.partial(self._give_back_file, index, fd))
            return None

    def close(self) -> None:
        """Stop using the directory (slots still held stay valid until released)."""
        with self._lock:
            folder, self._dir = self._dir, None
        if folder is not None:
            os.close(folder)

    def _locked_slot_file(self, index: int) -> int | None:
        """Slot ``index``'s file, open and exclusively locked; None when another holds it."""
        assert self._dir is not None
        flags = os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(f"slot-{index}", flags, 0o600, dir_fd=self._dir)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(f"session slot {index} is not a regular file")
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _give_back_file(self, index: int, fd: int) -> None:
        os.close(fd)  # closing the only descriptor drops the lock
        with self._lock:
            self._held.discard(index)

    def _give_back_count(self) -> None:
        with self._lock:
            self._count -= 1


def _open_private_directory(folder: str | os.PathLike[str]) -> int:
    """``folder`` opened (not following a symbolic link) and share-locked; raises
    ConfigurationError unless it is a directory owned by this user with no access for
    others."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigurationError(f"cannot use the session slot directory: {exc}") from None
    try:
        info = os.fstat(fd)
        if info.st_uid != os.geteuid() or stat.S_IMODE(info.st_mode) & 0o077:
            raise ConfigurationError(
                "the session slot directory must belong to this user and be private (0700)"
            )
        fcntl.flock(fd, fcntl.LOCK_SH)  # "in use": temporary-file cleaners skip it
    except BaseException:
        os.close(fd)
        raise
    return fd
