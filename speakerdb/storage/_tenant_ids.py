"""Each tenant's speaker ids, kept in step with the change log instead of re-read.

A search restricts the shared vector index to the ids of its tenant's speakers. Re-reading
them after every change of the database cost a scan of all the tenant's speakers on the
first search after each enrollment or deletion: a database taking enrollments while it
answers paid that scan on nearly every search. The change log
(:class:`~speakerdb.storage._schema.Change`) holds the latest change of every speaker id
by sequence number, and every insertion and deletion of a speaker writes one (as the
vector index's catch-up relies on), so the ids changed since a known sequence, with their
tenant as of now (none once deleted), bring a known set up to date.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import select
from sqlalchemy.engine import Connection

from speakerdb.storage._rows import change_seq
from speakerdb.storage._schema import Change, Speaker

__all__ = ["tenant_speaker_ids"]

IdCache = dict[int, tuple[int, Any]]  # tenant id -> (change sequence, (n,) int64 ids)


def tenant_speaker_ids(
    conn: Connection, known: IdCache, tenant_id: int, seq: int | None = None
) -> npt.NDArray[np.int64]:
    """The (n,) int64 ids of tenant ``tenant_id``'s speakers, ascending, as of ``conn``'s
    change sequence (``seq`` when the caller has just read it through ``conn``) or later.
    ``known`` (shared by the threads of one open database) keeps each tenant's ids with the
    sequence they are as of: the first call reads them all, later ones apply the changes
    since (none when nothing changed)."""
    if seq is None:
        seq = change_seq(conn)
    held = known.get(tenant_id)
    if held is not None and held[0] >= seq:
        ids: npt.NDArray[np.int64] = held[1]
        return ids
    if held is None:
        found = conn.execute(
            select(Speaker.id).where(Speaker.tenant_id == tenant_id).order_by(Speaker.id)
        ).scalars()
        ids = np.fromiter(found, dtype=np.int64)
        # Read after ``seq``: it may hold later changes too, which applying them again from
        # ``seq`` on leaves as they are (each change is applied as its speaker is now).
        known[tenant_id] = (seq, ids)
        return ids
    rows = conn.execute(
        select(Change.seq, Change.speaker_id, Speaker.tenant_id)
        .outerjoin(Speaker, Speaker.id == Change.speaker_id)
        .where(Change.seq > held[0])
    ).all()
    mine = np.unique(np.array([r.speaker_id for r in rows if r.tenant_id == tenant_id], np.int64))
    # deleted (no row any more) or another tenant's
    gone = np.array([r.speaker_id for r in rows if r.tenant_id != tenant_id], np.int64)
    ids = _with(_without(held[1], gone), mine)
    newest = max([seq, *(int(r.seq) for r in rows)])
    known[tenant_id] = (newest, ids)
    return ids


def _positions(
    ids: npt.NDArray[np.int64], wanted: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.bool_]]:
    """Where each of ``wanted`` is or would go in ascending ``ids``, and whether it is there.
    A binary search per wanted id: the changes are few, the ids many (set operations on
    the whole array cost a sort or a hash of every id, 60 ms at 100 000 ids)."""
    at = np.searchsorted(ids, wanted)
    inside = at < ids.size
    found = np.zeros(wanted.size, dtype=bool)
    found[inside] = ids[at[inside]] == wanted[inside]
    return at, found


def _without(ids: npt.NDArray[np.int64], gone: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Ascending ``ids`` less ``gone`` (ids not in it ignored)."""
    if gone.size == 0:
        return ids
    at, found = _positions(ids, gone)
    return np.delete(ids, np.unique(at[found]))


def _with(ids: npt.NDArray[np.int64], new: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Ascending ``ids`` with ascending unique ``new`` added (ids already there ignored)."""
    if new.size == 0:
        return ids
    at, found = _positions(ids, new)
    return np.insert(ids, at[~found], new[~found])
