"""Which spoofing countermeasure a database runs (``store_state.spoof_*``, revision 0009),
and the spoof calibration fitted on the database owner's own recordings (a ``calibrations``
row keyed :data:`SPOOF_CALIBRATION_KEY`: it belongs to the countermeasure, not to the speaker
model, so switching the speaker model keeps it).

Kept beside the store rather than in it: a record of four strings, read and written in the
store's own transactions. No torch here: the countermeasure is loaded (and checked) by the
caller, who passes its identity.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select, update
from sqlalchemy.engine import Connection

from speakerdb.storage._audit import PendingEntry, append
from speakerdb.storage._rows import lock_state, table_of
from speakerdb.storage._schema import SPOOF_CALIBRATION_KEY, Calibration, StoreState, utcnow

if TYPE_CHECKING:
    from speakerdb.storage._store import EnrollmentStore

__all__ = [
    "SPOOF_CALIBRATION_KEY",
    "CountermeasureRecord",
    "read_countermeasure",
    "read_spoof_calibration",
    "write_countermeasure",
    "write_spoof_calibration",
]


@dataclass(frozen=True)
class CountermeasureRecord:
    """A database's countermeasure: family ("aasist"), variant ("AASIST" ...), the weights'
    sha256 and the file it was last loaded from."""

    family: str
    variant: str
    weights_sha256: str
    source: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def read_countermeasure(store: EnrollmentStore) -> CountermeasureRecord | None:
    """The countermeasure recorded in ``store``'s database, or None. Raises StoreError."""
    with store.reading("read the countermeasure") as conn:
        row = conn.execute(
            select(
                StoreState.spoof_family,
                StoreState.spoof_variant,
                StoreState.spoof_sha256,
                StoreState.spoof_source,
            ).where(StoreState.id == 1)
        ).one()
    if row.spoof_family is None:
        return None
    return CountermeasureRecord(
        str(row.spoof_family),
        str(row.spoof_variant or ""),
        str(row.spoof_sha256 or ""),
        str(row.spoof_source or ""),
    )


def write_countermeasure(store: EnrollmentStore, record: CountermeasureRecord | None) -> None:
    """Record ``record`` as the database's countermeasure (None: none). Raises UsageError
    on a read-only store, StoreError on database errors."""
    values = {
        "spoof_family": None if record is None else record.family,
        "spoof_variant": None if record is None else record.variant,
        "spoof_sha256": None if record is None else record.weights_sha256,
        "spoof_source": None if record is None else record.source,
    }

    # Switching the countermeasure off is exactly what an attacker would want: audited.
    detail = {"countermeasure": None if record is None else f"{record.family}/{record.variant}"}
    entry = PendingEntry("setting", decision="set" if record else "off", detail=detail)

    def work(conn: Connection) -> None:
        lock_state(conn)
        conn.execute(update(StoreState).where(StoreState.id == 1).values(**values))
        append(conn, [entry])

    store.write(work, "record the countermeasure")


def read_spoof_calibration(store: EnrollmentStore) -> dict[str, Any] | None:
    """The spoof calibration stored by ``speakerdb spoof calibrate`` (its JSON, with
    "fitted": the ISO time it was stored), or None. Raises StoreError."""
    with store.reading("read the spoof calibration") as conn:
        row = conn.execute(
            select(Calibration.calibration, Calibration.created_at).where(
                Calibration.normalization == SPOOF_CALIBRATION_KEY
            )
        ).first()
    if row is None or row.calibration is None:
        return None
    return {**dict(row.calibration), "fitted": row.created_at.isoformat()}


def write_spoof_calibration(store: EnrollmentStore, calibration: dict[str, Any] | None) -> None:
    """Store ``calibration`` (a spoof calibration's JSON) as the database's own, replacing
    any; None removes it (the bundled one applies again). Audited in the same transaction.
    Raises UsageError on a read-only store, StoreError on database errors."""
    detail: dict[str, Any] = {"normalization": SPOOF_CALIBRATION_KEY}
    if calibration is not None:
        detail["groups"] = dict((calibration.get("fit") or {}).get("groups") or {})
    entry = PendingEntry("calibration", decision="set" if calibration else "reset", detail=detail)

    def work(conn: Connection) -> None:
        lock_state(conn)
        key = Calibration.normalization == SPOOF_CALIBRATION_KEY
        conn.execute(delete(Calibration).where(key))
        if calibration is not None:
            conn.execute(
                table_of(Calibration).insert(),
                {
                    "normalization": SPOOF_CALIBRATION_KEY,
                    "kind": "spoof",
                    "source": "database",
                    "calibration": calibration,
                    "created_at": utcnow(),
                },
            )
        append(conn, [entry])

    store.write(work, "store the spoof calibration")
