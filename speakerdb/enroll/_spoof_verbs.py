"""The database's spoofing countermeasure: which one it records, recording one, and
stopping (issue 19; docs/spoofing.md). Verification runs it through :mod:`._spoof`."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from speakerdb.enroll._base import FacadeBase

if TYPE_CHECKING:
    from speakerdb.storage._countermeasure_record import CountermeasureRecord

__all__ = ["SpoofVerbs"]


class SpoofVerbs(FacadeBase):
    """Countermeasure administration of :class:`~speakerdb.enroll._facade.SpeakerDB`."""

    def countermeasure(self) -> CountermeasureRecord | None:
        """The spoofing countermeasure this database records, or None. Raises StoreError."""
        from speakerdb.storage._countermeasure_record import read_countermeasure

        return read_countermeasure(self.store)

    def use_countermeasure(self, path: str | os.PathLike[str]) -> CountermeasureRecord:
        """Record the countermeasure at ``path`` (an AASIST / AASIST-L checkpoint) as this
        database's. It is loaded first, with every check of
        :func:`speakerdb.load_countermeasure`: a file it refuses (ModelError,
        ModelNotFoundError) changes nothing."""
        from speakerdb.model._countermeasure import load_countermeasure
        from speakerdb.storage._countermeasure_record import (
            CountermeasureRecord,
            write_countermeasure,
        )

        found = load_countermeasure(path).identity
        record = CountermeasureRecord(found.family, found.variant, found.weights_sha256, found.path)
        write_countermeasure(self.store, record)
        return record

    def clear_countermeasure(self) -> CountermeasureRecord | None:
        """Stop recording a countermeasure; returns the one there was (None: none)."""
        from speakerdb.storage._countermeasure_record import write_countermeasure

        previous = self.countermeasure()
        write_countermeasure(self.store, None)
        return previous
