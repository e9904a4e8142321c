"""Clustering window embeddings into speakers.

By default, spectral clustering whose number of clusters and affinity pruning adapt to each
recording (:mod:`._spectral`, normalised maximum eigengap); with an explicit cosine
``threshold``, average-linkage agglomerative clustering cut where the average similarity
between two groups falls below it (or at the number of speakers asked for). Then a few
rounds of re-assigning every window to the nearest cluster centroid, in which clusters with
fewer than ``min_windows`` windows give their windows away (a speaker who says one word is
not worth a label; on their own such clusters are mostly noise, laughter or the transition
between two voices).

Both are quadratic (or worse) in the windows, so at most :data:`MAX_LINKAGE_WINDOWS`
(linkage) or :data:`MAX_SPECTRAL_WINDOWS` (spectral) windows, evenly spaced over the
recording, are clustered; the re-assignment rounds then place every window.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from speakerdb.errors import UsageError

__all__ = [
    "MAX_LINKAGE_WINDOWS",
    "MAX_SPECTRAL_WINDOWS",
    "MIN_CLUSTER_WINDOWS",
    "SpeakerCount",
    "centroids",
    "cluster_windows",
]

MAX_LINKAGE_WINDOWS = 2000
"""Windows clustered by linkage at most (16 MB of pairwise distances)."""
MAX_SPECTRAL_WINDOWS = 800
"""Windows clustered spectrally at most (one 800 x 800 eigendecomposition per pruning tried)."""
MIN_CLUSTER_WINDOWS = 4
"""Clusters with fewer windows (about 2 s of speech at the default hop) are dissolved."""
_REFINE_ROUNDS = 3


class SpeakerCount:
    """What the caller knows about the number of speakers: exactly ``num``, or between
    ``min`` and ``max`` (each optional). Raises UsageError for impossible bounds."""

    def __init__(
        self, num: int | None = None, min: int | None = None, max: int | None = None
    ) -> None:
        if num is not None and (min is not None or max is not None):
            raise UsageError("give the number of speakers, or a minimum and maximum, not both")
        for name, value in (("number of speakers", num), ("minimum", min), ("maximum", max)):
            if value is not None and value < 1:
                raise UsageError(f"the {name} of speakers must be at least 1, not {value}")
        if min is not None and max is not None and min > max:
            raise UsageError(f"the minimum number of speakers ({min}) exceeds the maximum ({max})")
        self.num, self.min, self.max = num, min, max

    def clamp(self, count: int) -> int:
        if self.num is not None:
            return self.num
        if self.min is not None:
            count = max(count, self.min)
        if self.max is not None:
            count = min(count, self.max)
        return count

    @property
    def fixed(self) -> bool:
        return self.num is not None

    def bounded(self, windows: int, speech_seconds: float) -> tuple[SpeakerCount, str | None]:
        """This count, bounded by what ``windows`` embedded windows (``speech_seconds`` of
        speech) can hold: at most one voice per :data:`MIN_CLUSTER_WINDOWS` windows (the
        least a voice needs to stand on its own). Returns the count to use and, when it
        had to be lowered, a note saying so."""
        limit = max(1, windows // MIN_CLUSTER_WINDOWS)
        asked = self.num if self.num is not None else self.min
        if asked is None or asked <= limit:
            return self, None
        if self.num is not None:
            bounded, looked = SpeakerCount(num=limit), f"{limit} voices"
        else:
            top = limit if self.max is not None else None
            bounded, looked = SpeakerCount(min=limit, max=top), f"at least {limit} voices"
        which = "exactly" if self.num is not None else "at least"
        return bounded, (
            f"asked for {which} {asked} voices, but {speech_seconds:.1f} s of speech "
            f"({windows} windows) can hold at most {limit} (a voice needs "
            f"{MIN_CLUSTER_WINDOWS} windows of its own): looked for {looked}"
        )


def cluster_windows(
    vectors: npt.NDArray[np.float32],
    threshold: float | None = None,
    count: SpeakerCount | None = None,
    min_windows: int = MIN_CLUSTER_WINDOWS,
) -> npt.NDArray[np.int64]:
    """Speaker labels (n,) int64 in 0..k-1 for (n, D) unit-norm window embeddings.

    threshold: None for spectral clustering (the number of voices found per recording),
    else the least average cosine similarity at which agglomerative clustering merges two
    groups. count: bounds on the number of clusters (a fixed number, or min/max around
    what the method finds); clusters are never more than the windows. Labels are numbered
    in order of first appearance.
    """
    count = count or SpeakerCount()
    n = vectors.shape[0]
    if n <= 1:
        return np.zeros(n, dtype=np.int64)
    if threshold is None:
        return _spectral_labels(vectors, count, min_windows)
    from scipy.cluster.hierarchy import fcluster, linkage

    step = max(1, -(-n // MAX_LINKAGE_WINDOWS))
    sample = vectors[::step].astype(np.float64)
    tree = linkage(sample, method="average", metric="cosine")
    labels = fcluster(tree, 1.0 - threshold, criterion="distance") - 1
    large = _large(labels, min_windows, step)
    target = min(count.clamp(large), sample.shape[0])
    # Asked for a number the threshold did not give: cut the tree there and keep every
    # cluster (the caller knows best); otherwise small clusters dissolve.
    keep_all = count.fixed or target != large
    if keep_all:
        labels = fcluster(tree, target, criterion="maxclust") - 1
    full = _spread(labels, n, step, vectors, int(labels.max()) + 1)
    return _first_appearance(_refine(vectors, full, 1 if keep_all else min_windows))


def _spectral_labels(
    vectors: npt.NDArray[np.float32], count: SpeakerCount, min_windows: int
) -> npt.NDArray[np.int64]:
    from speakerdb.diarize._spectral import spectral_clusters

    n = vectors.shape[0]
    step = max(1, -(-n // MAX_SPECTRAL_WINDOWS))
    sample = vectors[::step]
    low = count.num if count.num is not None else (count.min or 1)
    high = count.num if count.num is not None else count.max
    labels = spectral_clusters(sample, min_clusters=low, max_clusters=high)
    full = _spread(labels, n, step, vectors, int(labels.max()) + 1)
    # A number the caller gave is kept whatever the cluster sizes.
    asked = count.num is not None or count.min is not None
    return _first_appearance(_refine(vectors, full, 1 if asked else min_windows))


def _large(labels: npt.NDArray[np.int64], min_windows: int, step: int) -> int:
    """How many clusters hold enough windows to stand as speakers (at least one)."""
    sizes = np.bincount(labels) * step
    return max(1, int(np.count_nonzero(sizes >= min_windows)))


def _spread(
    labels: npt.NDArray[np.int64],
    n: int,
    step: int,
    vectors: npt.NDArray[np.float32],
    k: int,
) -> npt.NDArray[np.int64]:
    """Labels of a strided sample -> labels of all n windows (nearest sample centroid)."""
    if step == 1:
        return labels.astype(np.int64)
    sampled = vectors[::step]
    means = centroids(sampled, labels.astype(np.int64), k)
    return np.asarray((vectors @ means.T).argmax(axis=1), dtype=np.int64)


def centroids(
    vectors: npt.NDArray[np.float32], labels: npt.NDArray[np.int64], k: int
) -> npt.NDArray[np.float32]:
    """(k, D) float32 unit-norm mean of each label's (n, D) vectors (zero rows for empty
    labels)."""
    out = np.zeros((k, vectors.shape[1]), dtype=np.float64)
    np.add.at(out, labels, vectors.astype(np.float64))
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return (out / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def _refine(
    vectors: npt.NDArray[np.float32], labels: npt.NDArray[np.int64], min_windows: int
) -> npt.NDArray[np.int64]:
    """Re-assign every window to its nearest centroid, dissolving small clusters."""
    for _ in range(_REFINE_ROUNDS):
        k = int(labels.max()) + 1
        sizes = np.bincount(labels, minlength=k)
        keep = np.flatnonzero(sizes >= min_windows)
        if keep.size == 0:
            keep = np.array([int(sizes.argmax())])
        means = centroids(vectors, labels, k)[keep]
        moved = keep[(vectors @ means.T).argmax(axis=1)]
        _, labels = np.unique(moved, return_inverse=True)
        labels = labels.astype(np.int64)
    return labels


def _first_appearance(labels: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    order: dict[int, int] = {}
    for label in labels.tolist():
        order.setdefault(label, len(order))
    return np.array([order[x] for x in labels.tolist()], dtype=np.int64)
