"""Which kind of vector index a database of a given size gets, and when to rebuild it.

Measured on this project's 2-core machine with 256-d voiceprints (benchmarks/identify_scale.py;
README, "Identification at scale"): an exact scan answers a single query in about 0.09 ms per
thousand speakers (4.5 ms at 50 000, 90 ms at 1 000 000), so exact search is kept up to
50 000 speakers, where it still meets a 5 ms budget. Beyond, inverted lists (IVF-Flat,
full-precision vectors) scan a few percent of the speakers: with 4 sqrt(N) lists and
nprobe = max(64, lists / 64) recall@1 against exact search is >= 0.99 at 1 M speakers for
about 1 ms per query. The lists are trained on the stored voiceprints and retrained when
the database has grown fourfold since. A query far from the population the lists were
trained on scans more lists than nprobe (:mod:`speakerdb.storage._probing`).

Past ``COMPRESSED_MIN`` speakers the lists hold 8-bit quantised residuals instead of full
vectors (ivfsq: 0.3x the raw float32 vectors against ivf's 1.05x), with the same lists and
probes; the store re-scores a longer shortlist exactly against the centroids in SQL, so
answers stay those of exact search for what is returned (docs/index.md has the figures).
Below that size the full-precision lists cost at most half a gigabyte and spare the longer
shortlist's read from SQL.
"""

from __future__ import annotations

import math

from speakerdb.errors import UsageError
from speakerdb.storage._vector_index import IndexParams

__all__ = [
    "COMPRESSED_MIN",
    "FLAT_MAX",
    "INDEX_KINDS",
    "RETRAIN_GROWTH",
    "choose_params",
    "needs_rebuild",
]

INDEX_KINDS = ("auto", "flat", "ivf", "ivfsq")
FLAT_MAX = 50_000
COMPRESSED_MIN = 500_000
RETRAIN_GROWTH = 4.0
_MIN_TRAINING_POINTS = 39  # FAISS wants at least 39 training points per list
_MIN_IVF = 64  # below this, lists cannot be trained meaningfully: exact search


def choose_params(count: int, kind: str = "auto") -> IndexParams:
    """Index parameters for ``count`` vectors; ``kind`` "flat", "ivf" or "ivfsq" forces the
    kind (a forced ivf/ivfsq index of fewer than 64 vectors is flat: there is nothing to
    train on). The thresholds are read at each call, so they can be changed at run time."""
    if kind not in INDEX_KINDS:
        raise UsageError(f"index kind must be one of {', '.join(INDEX_KINDS)}, not {kind!r}")
    if kind == "flat" or count < _MIN_IVF or (kind == "auto" and count < FLAT_MAX):
        return IndexParams("flat")
    nlist = max(1, min(int(4 * math.sqrt(count)), count // _MIN_TRAINING_POINTS))
    nprobe = min(nlist, max(64, nlist // 64))
    chosen = kind if kind != "auto" else ("ivfsq" if count >= COMPRESSED_MIN else "ivf")
    return IndexParams(chosen, nlist, nprobe, trained_on=count)


def needs_rebuild(current: IndexParams, count: int, kind: str = "auto") -> bool:
    """True when an index built with ``current`` no longer suits ``count`` vectors: the kind
    should change (going back to a smaller kind only below half its switch size, so a
    database hovering at a boundary is not rebuilt back and forth), or the lists were
    trained on less than a quarter of today's vectors."""
    wanted = choose_params(count, kind)
    if current.inverted and wanted.kind == "flat":
        return kind == "flat" or count < (FLAT_MAX // 2 if kind == "auto" else _MIN_IVF)
    if current.kind == "ivfsq" and wanted.kind == "ivf" and kind == "auto":
        return count < COMPRESSED_MIN // 2
    if current.kind != wanted.kind:
        return True
    return current.inverted and count > RETRAIN_GROWTH * max(current.trained_on, 1)
