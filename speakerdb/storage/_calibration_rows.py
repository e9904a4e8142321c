"""Calibration rows: how a database decides, one row per score normalisation, and the
database-wide default (``store_state.calibration_default``).

Functions over the caller's connection; :class:`~speakerdb.storage._store.EnrollmentStore`
wraps them in its read and write transactions.
"""

from __future__ import annotations

import numpy as np
from sqlalchemy import delete, select, update
from sqlalchemy.engine import Connection

from speakerdb.errors import UsageError
from speakerdb.storage._records import CALIBRATION_SOURCES, CalibrationSetting
from speakerdb.storage._rows import aware, lock_state, table_of
from speakerdb.storage._schema import Calibration, StoreState, utcnow

__all__ = [
    "check_setting",
    "clear_setting",
    "read_setting",
    "read_threshold",
    "write_setting",
]


def read_threshold(
    conn: Connection, tenant_id: int | None, key: str
) -> tuple[float | None, str | None]:
    """The threshold tenant ``tenant_id`` stored for normalisation ``key`` ("none",
    "asnorm") and its note; (None, None) when none is set."""
    row = conn.execute(
        select(Calibration.threshold, Calibration.note).where(
            Calibration.tenant_id == tenant_id, Calibration.normalization == key
        )
    ).first()
    if row is None or row.threshold is None:
        return None, None
    return row.threshold, row.note


def read_setting(
    conn: Connection, tenant_id: int | None, key: str
) -> tuple[str, CalibrationSetting | None]:
    """The database's default calibration ("bundled" or "none") and the setting tenant
    ``tenant_id`` stored for normalisation ``key``, if any."""
    default = conn.execute(
        select(StoreState.calibration_default).where(StoreState.id == 1)
    ).scalar_one()
    row = conn.execute(
        select(*table_of(Calibration).c).where(
            Calibration.tenant_id == tenant_id, Calibration.normalization == key
        )
    ).first()
    if row is None:
        return str(default), None
    return str(default), CalibrationSetting(
        normalization=row.normalization,
        kind=row.kind,
        threshold=row.threshold,
        note=row.note,
        source=row.source,
        calibration=row.calibration,
        p_target=row.p_target,
        c_miss=row.c_miss,
        c_fa=row.c_fa,
        target_far=row.target_far,
        trials_sha256=row.trials_sha256,
        target_trials=row.target_trials,
        nontarget_trials=row.nontarget_trials,
        created_at=aware(row.created_at),
    )


def write_setting(conn: Connection, tenant_id: int, setting: CalibrationSetting) -> None:
    """Replace the tenant's setting for ``setting.normalization`` (checked by
    :func:`check_setting` first); a calibration to LLRs also sets the database's default to
    "bundled"."""
    lock_state(conn)
    conn.execute(
        delete(Calibration).where(
            Calibration.tenant_id == tenant_id,
            Calibration.normalization == setting.normalization,
        )
    )
    conn.execute(
        table_of(Calibration)
        .insert()
        .values(
            tenant_id=tenant_id,
            normalization=setting.normalization,
            kind=setting.kind,
            threshold=setting.threshold,
            note=setting.note,
            source=setting.source,
            calibration=setting.calibration,
            p_target=setting.p_target,
            c_miss=setting.c_miss,
            c_fa=setting.c_fa,
            target_far=setting.target_far,
            trials_sha256=setting.trials_sha256,
            target_trials=setting.target_trials,
            nontarget_trials=setting.nontarget_trials,
            created_at=utcnow(),
        )
    )
    if setting.kind == "llr":
        conn.execute(
            update(StoreState).where(StoreState.id == 1).values(calibration_default="bundled")
        )


def clear_setting(conn: Connection, tenant_id: int, key: str) -> None:
    """Forget the tenant's setting for normalisation ``key``."""
    conn.execute(
        delete(Calibration).where(
            Calibration.tenant_id == tenant_id, Calibration.normalization == key
        )
    )


def check_setting(setting: CalibrationSetting) -> None:
    if setting.normalization not in ("none", "asnorm"):
        raise UsageError(f"unknown normalisation {setting.normalization!r}")
    if setting.threshold is not None and not np.isfinite(setting.threshold):
        raise UsageError(f"threshold must be finite, not {setting.threshold}")
    if setting.kind == "threshold":
        if setting.threshold is None:
            raise UsageError("a threshold setting needs a threshold")
        return
    if setting.kind != "llr" or setting.source not in CALIBRATION_SOURCES:
        raise UsageError(f"unknown calibration setting {setting.kind!r} / {setting.source!r}")
    if (setting.source in ("database", "self")) != (setting.calibration is not None):
        raise UsageError("a database calibration, and only one, stores its calibration")
    if (setting.p_target is None) == (setting.target_far is None):
        raise UsageError("an operating point needs a prior or a target false-accept rate")
