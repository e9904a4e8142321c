"""Which kind of vector index a database of a given size gets, and when to rebuild it.

Measured on this project's 2-core machine with 256-d voiceprints (benchmarks/identify_scale.py;
README, "Identification at scale"): an exact scan answers a single query in about 0.09 ms per
thousand speakers (4.5 ms at 50 000, 90 ms at 1 000 000), so exact search is kept up to
50 000 speakers, where it still meets a 5 ms budget. Beyond, inverted lists (IVF-Flat,
full-precision vectors) scan a few percent of the speakers: with 4 sqrt(N) lists and
nprobe = max(64, lists / 64) recall@1 against exact search is >= 0.99 at 1 M speakers for
about 1 ms per query. The lists are trained on the stored voiceprints and retrained when
the database has grown fourfold since.
"""

from __future__ import annotations

import math

from speakerdb.errors import UsageError
from speakerdb.storage._vector_index import IndexParams

__all__ = ["FLAT_MAX", "INDEX_KINDS", "RETRAIN_GROWTH", "choose_params", "needs_rebuild"]

INDEX_KINDS = ("auto", "flat", "ivf")
FLAT_MAX = 50_000
RETRAIN_GROWTH = 4.0
_MIN_TRAINING_POINTS = 39  # FAISS wants at least 39 training points per list
_MIN_IVF = 64  # below this, lists cannot be trained meaningfully: exact search


def choose_params(count: int, kind: str = "auto") -> IndexParams:
    """Index parameters for ``count`` vectors; ``kind`` "flat" or "ivf" forces the kind
    (a forced ivf index of fewer than 64 vectors is flat: there is nothing to train on)."""
    if kind not in INDEX_KINDS:
        raise UsageError(f"index kind must be one of {', '.join(INDEX_KINDS)}, not {kind!r}")
    if kind == "flat" or count < _MIN_IVF or (kind == "auto" and count < FLAT_MAX):
        return IndexParams("flat")
    nlist = max(1, min(int(4 * math.sqrt(count)), count // _MIN_TRAINING_POINTS))
    nprobe = min(nlist, max(64, nlist // 64))
    return IndexParams("ivf", nlist, nprobe, trained_on=count)


def needs_rebuild(current: IndexParams, count: int, kind: str = "auto") -> bool:
    """True when an index built with ``current`` no longer suits ``count`` vectors: the kind
    should change (going back to flat only below half the switch size, so a database
    hovering at the boundary is not rebuilt back and forth), or ivf lists were trained on
    less than a quarter of today's vectors."""
    wanted = choose_params(count, kind)
    if current.kind == "ivf" and wanted.kind == "flat":
        return kind == "flat" or count < (FLAT_MAX // 2 if kind == "auto" else _MIN_IVF)
    if current.kind != wanted.kind:
        return True
    return current.kind == "ivf" and count > RETRAIN_GROWTH * max(current.trained_on, 1)
