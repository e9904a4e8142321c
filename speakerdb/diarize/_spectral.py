"""Spectral clustering with the normalised maximum eigengap (NME-SC; Park et al., IEEE SPL
2019, the method NeMo's clustering diarizer uses), written here in numpy.

The cosine affinity of the window embeddings is scaled to [0, 1]; for a pruning value p,
each row keeps its p largest affinities as 1 and the rest as 0 (then symmetrised). The
graph Laplacian's eigenvalues have a large gap after the k-th when the graph has k well
separated groups; NME picks the p whose largest gap, relative to the largest eigenvalue, is
largest for the fewest neighbours kept (the smallest ``p / normalised gap``), and k from
that gap. The windows are then k-means clustered on the k smallest eigenvectors.

No constant here is fitted to our data: the search range and volume are NeMo's published
defaults (:data:`MAX_PRUNING_RATIO`, :data:`PRUNING_STEPS`, :data:`MAX_SPEAKERS`).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = [
    "MAX_PRUNING_RATIO",
    "MAX_SPEAKERS",
    "PRUNING_STEPS",
    "estimate_pruning",
    "kmeans",
    "spectral_clusters",
]

MAX_SPEAKERS = 8
"""Most speakers looked for unless the caller gives a maximum (NeMo's max_num_speakers)."""
MAX_PRUNING_RATIO = 0.25
"""The largest p tried, as a share of the windows (NeMo's max_rp_threshold)."""
PRUNING_STEPS = 30
"""How many values of p are tried between 1 and the largest (NeMo's sparse_search_volume)."""
_KMEANS_RESTARTS = 10
_KMEANS_ROUNDS = 100


def affinity(vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """(n, D) unit-norm vectors -> (n, n) cosine similarities min-max scaled to [0, 1]."""
    cosine = vectors.astype(np.float64) @ vectors.astype(np.float64).T
    low, high = float(cosine.min()), float(cosine.max())
    return (cosine - low) / (high - low) if high > low else np.ones_like(cosine)


def _pruned_laplacian(scaled: npt.NDArray[np.float64], p: int) -> npt.NDArray[np.float64]:
    """The unnormalised Laplacian of the graph keeping each row's p largest affinities."""
    n = scaled.shape[0]
    keep = np.argpartition(-scaled, min(p, n - 1), axis=1)[:, :p]
    graph = np.zeros_like(scaled)
    graph[np.arange(n)[:, None], keep] = 1.0
    graph = 0.5 * (graph + graph.T)
    return np.diag(graph.sum(axis=1)) - graph


def _gap(eigenvalues: npt.NDArray[np.float64], low: int, high: int) -> tuple[float, int]:
    """The largest gap after the k-th eigenvalue for k in [low, high], normalised by the
    largest eigenvalue, and that k."""
    gaps = np.diff(eigenvalues[: high + 1])[low - 1 : high]
    index = int(np.argmax(gaps))
    top = float(eigenvalues[-1])
    return float(gaps[index]) / (top + 1e-10), index + low


def estimate_pruning(scaled: npt.NDArray[np.float64], low: int, high: int) -> tuple[int, int]:
    """(p, k): the pruning with the smallest ``p / normalised maximum eigengap`` and the
    number of clusters at its gap, k in [low, high]."""
    n = scaled.shape[0]
    largest = max(2, int(n * MAX_PRUNING_RATIO))
    candidates = np.unique(np.linspace(1, largest, PRUNING_STEPS).astype(int))
    best: tuple[float, int, int] | None = None
    for p in candidates.tolist():
        eigenvalues = np.asarray(np.linalg.eigvalsh(_pruned_laplacian(scaled, p)), np.float64)
        gap, k = _gap(eigenvalues, low, high)
        ratio = p / n / (gap + 1e-10)
        if best is None or ratio < best[0]:
            best = (ratio, p, k)
    assert best is not None
    return best[1], best[2]


def spectral_clusters(
    vectors: npt.NDArray[np.float32],
    *,
    min_clusters: int = 1,
    max_clusters: int | None = None,
) -> npt.NDArray[np.int64]:
    """(n,) int64 labels in 0..k-1 for (n, D) unit-norm vectors.

    The number of clusters is the largest normalised eigengap's among 1..max_clusters
    (default :data:`MAX_SPEAKERS`), then raised to min_clusters if below (both capped at
    n - 1): a caller's bounds are kept even where the gaps suggest otherwise."""
    n = vectors.shape[0]
    if n < 3:
        return np.arange(n, dtype=np.int64) if min_clusters >= n else np.zeros(n, np.int64)
    high = max(1, min(max_clusters or MAX_SPEAKERS, n - 1))
    low = max(1, min(min_clusters, high))
    from threadpoolctl import threadpool_limits

    # Multi-threaded LAPACK on matrices this small is slower than one thread, and far
    # slower on a busy machine (50 ms instead of 4 ms per eigendecomposition).
    with threadpool_limits(limits=1, user_api="blas"):
        return _spectral(vectors, low, high)


def _spectral(vectors: npt.NDArray[np.float32], low: int, high: int) -> npt.NDArray[np.int64]:
    n = vectors.shape[0]
    scaled = affinity(vectors)
    # The pruning is chosen over the full range of counts (a maximum below the true count
    # would otherwise pick a graph with no gap where it is allowed to look).
    p, k = estimate_pruning(scaled, 1, max(high, min(MAX_SPEAKERS, n - 1)))
    k = min(max(k, low), high)
    if k == 1:
        return np.zeros(n, dtype=np.int64)
    _, eigenvectors = np.linalg.eigh(_pruned_laplacian(scaled, p))
    return kmeans(eigenvectors[:, :k], k)


def kmeans(points: npt.NDArray[np.float64], k: int, seed: int = 0) -> npt.NDArray[np.int64]:
    """(n,) labels in 0..k-1 of (n, d) points: the best of a few k-means++ starts (fixed
    seed, so the same input always gives the same answer)."""
    rng = np.random.default_rng(seed)
    n = points.shape[0]
    best_labels = np.zeros(n, dtype=np.int64)
    best_inertia = np.inf
    for _ in range(_KMEANS_RESTARTS):
        centres = points[[int(rng.integers(n))]]
        while centres.shape[0] < k:
            distance = ((points[:, None, :] - centres[None]) ** 2).sum(-1).min(axis=1)
            total = distance.sum()
            pick = int(rng.choice(n, p=distance / total)) if total > 0 else int(rng.integers(n))
            centres = np.vstack([centres, points[pick]])
        labels = np.zeros(n, dtype=np.int64)
        for round_ in range(_KMEANS_ROUNDS):
            distance = ((points[:, None, :] - centres[None]) ** 2).sum(-1)
            new = distance.argmin(axis=1)
            if round_ > 0 and np.array_equal(new, labels):
                break
            labels = new
            for c in range(k):
                members = points[labels == c]
                if members.size:
                    centres[c] = members.mean(axis=0)
        inertia = float(((points - centres[labels]) ** 2).sum())
        if inertia < best_inertia:
            best_inertia, best_labels = inertia, labels.copy()
    _, compact = np.unique(best_labels, return_inverse=True)
    return compact.astype(np.int64)
