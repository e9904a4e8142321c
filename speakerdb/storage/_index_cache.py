"""Keeps a process's in-memory vector index in step with SQL, through the change log.

SQL is the truth; the index (and its file) is a cache of the speakers' centroids. The cache
remembers the last change sequence number it applied. Catching up reads the changes with a
higher number, joined to the speakers' current centroids, in one statement, and applies them:
upsert the current centroid, or remove the id when the speaker is gone. Applying a change
means "make the index say what SQL says now", so applying one twice is harmless -- which is
what makes a full rebuild safe without a snapshot: read the counter first, the centroids
second, and catch up from that counter.

Writers take the counter's row lock for their whole transaction, so change numbers become
visible in increasing order and a reader that has seen change N has seen every change < N.

Deletion wins over any stale cache: a process saves its index only under the folder lock of
the file (:func:`~speakerdb.storage._index_file.folder_lock`), after catching up with SQL
inside that lock. A delete commits first and rewrites the file under the same lock after, so
whichever of the two writes last, the file never holds a speaker whose delete had committed
before the write began, and no process replaces the file with an index older than its own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from sqlalchemy import select
from sqlalchemy.engine import Connection, Engine

from speakerdb._identity import ModelIdentity
from speakerdb.errors import StoreError
from speakerdb.storage._engine import read_transaction
from speakerdb.storage._index_file import (
    Expected,
    IndexFile,
    IndexFileHeader,
    folder_lock,
    read_index_file,
    write_index_file,
)
from speakerdb.storage._index_policy import choose_params, needs_rebuild
from speakerdb.storage._records import vectors_from_bytes
from speakerdb.storage._rows import change_seq
from speakerdb.storage._schema import Change, Speaker
from speakerdb.storage._vector_index import IndexParams, VectorIndex

__all__ = ["IndexCache", "IndexStatus", "read_all_centroids", "read_file_as_stored"]

log = logging.getLogger(__name__)

# Rewriting the file costs O(index size); a few changes are cheaper to replay from SQL.
SAVE_MIN_CHANGES = 1
SAVE_FRACTION_WHEN_LARGE = 0.01
LARGE_INDEX = 100_000
MAINTENANCE_RETRY_S = 60.0
REBUILD_NICE = 10  # 19 starved the rebuild for minutes on a loaded 2-core machine


def read_all_centroids(
    conn: Connection, dimension: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    rows = conn.execute(select(Speaker.id, Speaker.centroid).order_by(Speaker.id)).all()
    ids = np.array([r.id for r in rows], dtype=np.int64)
    return ids, vectors_from_bytes([r.centroid for r in rows], dimension)


def read_file_as_stored(
    engine: Engine,
    path: Path,
    instance_id: str,
    model: ModelIdentity,
    key: bytes,
    database: str = "",
) -> IndexFile | str:
    """The index file at ``path`` as it is on disk (not caught up), checked against the
    database's current change counter and identity; see :func:`read_index_file`."""
    with read_transaction(engine) as conn:
        seq = change_seq(conn)
    return read_index_file(path, Expected(instance_id, model.key, key, seq, database))


@dataclass(frozen=True)
class IndexStatus:
    """How the index file stood when this process loaded it."""

    path: str | None
    file_state: str  # "current", "stale", "missing", "memory-only", or why it was unusable
    file_seq: int | None
    applied_seq: int
    vectors: int
    params: str


class IndexCache:
    """The speaker-centroid index of one database, for one process. Thread-safe."""

    def __init__(
        self,
        engine: Engine,
        path: Path | None,
        instance_id: str,
        model: ModelIdentity,
        key: bytes,
        index_kind: str = "auto",
        device: str | None = None,
        background: bool = False,
        database: str = "",
    ) -> None:
        self._engine = engine
        self.path = path
        self._instance_id = instance_id
        self._database = database
        self._key = key
        self._model = model
        self._index_kind = index_kind
        self._device = device
        self._lock = threading.RLock()
        self._index: VectorIndex | None = None
        self._applied_seq = 0
        self._saved_seq: int | None = None
        self._unsaved_changes = 0
        self._unsaved_deletes = 0
        self.file_state = "not loaded"
        self.file_seq: int | None = None
        # Background maintenance (see _start_maintenance): the thread running it, when it
        # last failed, and how many rebuilds it has swapped in.
        self._background = background
        self._maintenance: threading.Thread | None = None
        self._maintenance_failed_at: float | None = None
        self.background_rebuilds = 0
        self._generation = 0  # bumped by every rebuild in the foreground

    # --- public -------------------------------------------------------------------------------

    def index(self) -> VectorIndex:
        """The index, caught up with every change committed before this call."""
        with read_transaction(self._engine) as conn, self.synced(conn) as index:
            return index

    @contextlib.contextmanager
    def synced(self, conn: Connection, seq: int | None = None) -> Iterator[VectorIndex]:
        """Hold the index, caught up through ``conn`` (the caller's read transaction), for the
        duration of the block; other threads of this process wait meanwhile. ``seq``: the
        change sequence the caller has just read through ``conn`` (saves reading it again:
        a round trip to a database server)."""
        with self._lock:
            if self._index is None:
                self._load()
            else:
                self._catch_up(conn, seq)
            assert self._index is not None
            yield self._index

    @property
    def applied_seq(self) -> int:
        return self._applied_seq

    def status(self) -> IndexStatus:
        with self._lock:
            index = self.index()
            return IndexStatus(
                path=str(self.path) if self.path else None,
                file_state=self.file_state,
                file_seq=self.file_seq,
                applied_seq=self._applied_seq,
                vectors=len(index),
                params=index.params.describe(),
            )

    def rebuild(self, kind: str | None = None) -> VectorIndex:
        """Rebuild from SQL (optionally forcing an index kind) and save the file."""
        with self._lock:
            if kind is not None:
                self._index_kind = kind
            self._rebuild("requested")
            self.save(force=True)
            assert self._index is not None
            return self._index

    def save(self, force: bool = False, only_if_present: bool = False) -> bool:
        """Write the index file if it is behind the index in memory (or ``force``).

        Under the folder lock, the index first catches up with SQL (so a speaker deleted
        by anyone meanwhile leaves it), then replaces the file. ``only_if_present``: only
        rewrite a file that exists when the lock is taken (after a delete: a file written
        by anyone before the delete committed must lose the speaker; no file, nothing to
        erase), loading the index first if this process has none. Raises StoreError when
        the file cannot be written (the caller may ignore it: the file is a cache)."""
        with self._lock:
            if self.path is None:
                return False
            if not only_if_present and (
                self._index is None or (not force and not self._worth_saving())
            ):
                return False
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                with folder_lock(self.path.parent):
                    if only_if_present and not self.path.exists():
                        return False
                    if self._index is None:
                        self._load()
                    with read_transaction(self._engine) as conn:
                        self._catch_up(conn)
                    assert self._index is not None
                    index = self._index
                    header = IndexFileHeader(
                        instance_id=self._instance_id,
                        model_key=list(self._model.key),
                        dimension=self._model.dimension,
                        applied_seq=self._applied_seq,
                        kind=index.params.kind,
                        nlist=index.params.nlist,
                        nprobe=index.params.nprobe,
                        count=len(index),
                        trained_on=index.params.trained_on,
                        database=self._database,
                    )
                    write_index_file(self.path, header, index, self._key)
            except OSError as exc:
                raise StoreError(
                    f"cannot write the index file {self.path}: {exc.strerror or exc}"
                ) from None
            self._saved_seq = self._applied_seq
            self._unsaved_changes = 0
            self._unsaved_deletes = 0
            return True

    # --- internals ----------------------------------------------------------------------------

    def _worth_saving(self) -> bool:
        assert self._index is not None
        if self._saved_seq is None:
            return True
        if self._applied_seq == self._saved_seq:
            return False
        if self._unsaved_deletes:
            return True  # a deleted speaker's voiceprint must not linger in the file
        if len(self._index) >= LARGE_INDEX:
            return self._unsaved_changes >= SAVE_FRACTION_WHEN_LARGE * len(self._index)
        return self._unsaved_changes >= SAVE_MIN_CHANGES

    def _load(self) -> None:
        if self.path is None:
            self.file_state = "memory-only"
            self._rebuild("in-memory database")
            return
        loaded = read_file_as_stored(
            self._engine, self.path, self._instance_id, self._model, self._key, self._database
        )
        if isinstance(loaded, str) or not loaded.authentic:
            reason = (
                loaded
                if isinstance(loaded, str)
                else "not authenticated (not written by a holder of this database)"
            )
            self.file_state = reason
            self._rebuild(reason)
            return
        header, index = loaded.header, loaded.index
        index.use_gpu(self._device)
        self._index = index
        self._applied_seq = header.applied_seq
        # A file of an older layout is rewritten (as version 3) at the next save.
        self._saved_seq = header.applied_seq if loaded.version >= 3 else None
        self.file_seq = header.applied_seq
        applied = self._catch_up()
        self.file_state = "stale" if applied else "current"

    def _catch_up(self, conn: Connection | None = None, current: int | None = None) -> int:
        """Apply changes newer than the applied sequence; returns how many were applied.
        ``current``: the change sequence already read through ``conn``."""
        assert self._index is not None
        if conn is None:
            with read_transaction(self._engine) as own:
                return self._catch_up(own)
        applied, seq, removed = _apply_changes(
            self._index, conn, self._applied_seq, self._model, current
        )
        if not applied:
            return 0
        self._unsaved_deletes += removed
        self._applied_seq = seq
        self._unsaved_changes += applied
        if needs_rebuild(self._index.params, len(self._index), self._index_kind):
            if self._background:
                self._start_maintenance()
            else:
                self._rebuild("grew past its index kind")
        return applied

    # --- background maintenance ---------------------------------------------------------------

    @property
    def maintenance_running(self) -> bool:
        """Whether a background rebuild is under way."""
        thread = self._maintenance
        return thread is not None and thread.is_alive()

    def wait_for_maintenance(self, timeout: float | None = None) -> bool:
        """Wait until no background rebuild runs (at most ``timeout`` s); True if none does."""
        thread = self._maintenance
        if thread is not None:
            thread.join(timeout)
        return not self.maintenance_running

    def _start_maintenance(self) -> None:
        """Rebuild the index (new kind, or retrained lists) in a thread of its own, while
        queries go on with the current index, kept caught up meanwhile. Called under the
        lock. A failed rebuild is retried at most once a minute (and logged)."""
        if self.maintenance_running:
            return
        failed = self._maintenance_failed_at
        if failed is not None and time.monotonic() - failed < MAINTENANCE_RETRY_S:
            return
        self._maintenance = threading.Thread(
            target=self._maintain, name="speakerdb-index-maintenance", daemon=True
        )
        self._maintenance.start()

    def _maintain(self) -> None:
        generation, kind = self._generation, self._index_kind
        try:
            import faiss

            # Training runs on at most half the cores (OpenMP's thread count is set per
            # calling thread), at a lower priority (on Linux a thread's nice value is its
            # own): queries go first, and the rebuild still progresses on a busy machine.
            faiss.omp_set_num_threads(max(1, (os.cpu_count() or 2) // 2))
            with contextlib.suppress(OSError, AttributeError):
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), REBUILD_NICE)
            # Built without the lock: the counter first, the centroids second, then every
            # change after that counter replayed under the lock (see the module docstring).
            with read_transaction(self._engine) as conn:
                seq = change_seq(conn)
            with read_transaction(self._engine) as conn:
                ids, vectors = read_all_centroids(conn, self._model.dimension)
            log.info("rebuilding the vector index of %d speakers in the background", len(ids))
            params = choose_params(len(ids), kind)
            fresh = VectorIndex.build(self._model.dimension, ids, vectors, params)
            fresh.use_gpu(self._device)
            # Most of what was committed during the build is replayed outside the lock too;
            # the lock is held only for the last few changes and the swap.
            with read_transaction(self._engine) as conn:
                _, seq, _ = _apply_changes(fresh, conn, seq, self._model)
            with self._lock, read_transaction(self._engine) as conn:
                if generation != self._generation:
                    log.info("background rebuild dropped: the index was rebuilt meanwhile")
                    return
                _, seq, _ = _apply_changes(fresh, conn, seq, self._model)
                self._index = fresh
                self._applied_seq = seq
                self._saved_seq = None
                self._unsaved_changes = len(fresh)
                self._unsaved_deletes = 0
                self.background_rebuilds += 1
                self._maintenance_failed_at = None
            log.info("background rebuild done: %s", params.describe())
        except Exception:
            # The current index keeps answering; the rebuild is tried again later.
            log.exception("background rebuild of the vector index failed")
            self._maintenance_failed_at = time.monotonic()

    def _rebuild(self, reason: str) -> None:
        log.info("rebuilding the vector index from SQL: %s", reason)
        self._generation += 1
        with read_transaction(self._engine) as conn:
            seq = change_seq(conn)
        # Centroids are read after the counter: anything committed in between is replayed by
        # the catch-up below, which is harmless (see module docstring).
        with read_transaction(self._engine) as conn:
            ids, vectors = read_all_centroids(conn, self._model.dimension)
        params: IndexParams = choose_params(len(ids), self._index_kind)
        self._index = VectorIndex.build(self._model.dimension, ids, vectors, params)
        self._index.use_gpu(self._device)
        self._applied_seq = seq
        self._saved_seq = None
        self._unsaved_changes = len(ids)
        self._catch_up()


def _apply_changes(
    index: VectorIndex,
    conn: Connection,
    since: int,
    model: ModelIdentity,
    current: int | None = None,
) -> tuple[int, int, int]:
    """Apply to ``index`` every change after sequence ``since``, read through ``conn``
    (``current``: the change sequence the caller read through it, else read here).
    Returns (changes applied, the sequence now applied, vectors removed)."""
    if (change_seq(conn) if current is None else current) == since:
        return 0, since, 0
    rows = conn.execute(
        select(Change.seq, Change.speaker_id, Speaker.centroid)
        .outerjoin(Speaker, Speaker.id == Change.speaker_id)
        .where(Change.seq > since)
        .order_by(Change.seq)
    ).all()
    if not rows:
        return 0, since, 0
    gone = np.array([r.speaker_id for r in rows if r.centroid is None], dtype=np.int64)
    present = [r for r in rows if r.centroid is not None]
    removed = index.remove(gone)
    index.upsert(
        np.array([r.speaker_id for r in present], dtype=np.int64),
        vectors_from_bytes([r.centroid for r in present], model.dimension),
    )
    return len(rows), max(r.seq for r in rows), removed
