"""Open-set identification at scale: speakerdb's vector index against exact search.

Generates N synthetic voiceprints shaped like GE2E's (benchmarks/synthetic.py), probes that
are noisy copies of enrolled voiceprints and probes of unknown speakers, and measures in one
run, for speakerdb's chosen index (speakerdb.storage._index_policy), exact FAISS flat search
and a numpy scan: build/train time, resident memory, single-query p50/p99 latency, batch
throughput; then recall@1 of speakerdb's index against exact search and open-set accuracy
at the model's default threshold. speakerdb's timings include its exact re-scoring of the
candidates' full-precision vectors (a shortlist of ``IndexParams.shortlist(k)``; here read
from an in-memory array standing in for SQL, through the real SQL read with --store).

The dev voiceprints (real GE2E embeddings of /work/shared/data, benchmarks/_scale_extras.py)
are mixed in: their enrolled centroids replace random synthetic speakers, their probes join
the known and unknown probes (recall reported for them apart as well). A new process then
loads the index from an authenticated index file and answers its first query (timed,
with the index's resident memory), once with the file in the page cache and once with its
pages dropped from it (a cold start).

    python benchmarks/identify_scale.py --n 1000000 [--kind ivfsq] [--json]
    python benchmarks/identify_scale.py --n 100000 --store      # also through the real store
    python benchmarks/identify_scale.py --n 10000000 --probe-factors 1.5,2,3

--probe-factors: after the measurements at the policy's nprobe, the same built index is
searched again with nprobe multiplied by each factor (recall@1 known / unknown against the
same exact answers, single-query p50 / p99): what a wider probe rule would buy and cost,
without a second build.

--store enrolls the voiceprints into a real SQLite file and a real PostgreSQL database from
precomputed vectors, reopens them and identifies through EnrollmentStore.search.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _scale_extras import new_process_first_query, real_voiceprints
from synthetic import DIM, VoiceprintGenerator

from _common import (
    DEFAULT_PG_URL,
    create_scratch_pg,
    current_rss_mb,
    drop_scratch_pg,
    emit,
    percentiles_ms,
)
from speakerdb import scoring
from speakerdb.model._registry import GE2E_DEFAULT_THRESHOLD
from speakerdb.storage._index_policy import choose_params
from speakerdb.storage._vector_index import VectorIndex


def single_query_times(search, queries: np.ndarray) -> list[float]:
    times = []
    for q in queries:
        start = time.perf_counter()
        search(q[None, :])
        times.append(time.perf_counter() - start)
    return times


def ours_search(
    index: VectorIndex, full: np.ndarray, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The index's shortlist, re-scored exactly against the full-precision vectors ``full``
    (row id - 1; SQL's centroids in the store), as EnrollmentStore.search does."""
    _, candidates = index.search(queries, index.params.shortlist(k))
    best_ids = np.full((len(queries), k), -1, np.int64)
    best_scores = np.full((len(queries), k), -np.inf)
    for row, (query, ids) in enumerate(zip(queries, candidates, strict=True)):
        ids = ids[ids >= 0]
        scores = scoring.cosine_scores(query, full[ids - 1])
        order = np.argsort(-scores, kind="stable")[:k]
        best_ids[row, : len(order)] = ids[order]
        best_scores[row, : len(order)] = scores[order]
    return best_scores, best_ids


def open_set_accuracy(
    best_scores: np.ndarray, best_ids: np.ndarray, truth: np.ndarray, known: int
) -> tuple[float, float]:
    """(known probes identified as their speaker, unknown probes answered unknown) at the
    model's default threshold."""
    threshold = GE2E_DEFAULT_THRESHOLD
    ok_known = (best_ids[:known] == truth) & (best_scores[:known] >= threshold)
    ok_unknown = best_scores[known:] < threshold
    return float(ok_known.mean()), float(ok_unknown.mean())


def probe_sweep(
    index, vectors, probes, exact_ids, singles, known, factors, real_mask
) -> list[dict]:
    """Recall@1 (known / unknown probes, and the real dev probes among them apart) and
    single-query times of ``index`` with its nprobe multiplied by each factor (capped at
    nlist), against the exact answers; the index's own nprobe is restored afterwards."""
    import dataclasses

    base = index.params
    ivf = faiss.extract_index_ivf(index._index)
    out = []
    try:
        for factor in factors:
            nprobe = min(base.nlist, round(base.nprobe * factor))
            index.params = dataclasses.replace(base, nprobe=nprobe)
            ivf.nprobe = nprobe
            _, found = ours_search(index, vectors, probes, 5)
            times = single_query_times(lambda q: ours_search(index, vectors, q, 5), singles)
            hit = found[:, 0] == exact_ids[:, 0]
            out.append(
                {
                    "factor": factor,
                    "nprobe": nprobe,
                    "recall_at_1_known": float(hit[:known].mean()),
                    "recall_at_1_unknown": float(hit[known:].mean()),
                    **real_recall(hit, real_mask, known),
                    **percentiles_ms(times),
                }
            )
    finally:
        index.params = base
        ivf.nprobe = base.nprobe
    return out


def real_recall(hit: np.ndarray, real_mask: np.ndarray, known: int) -> dict:
    """Recall@1 of the real dev probes alone, known and unknown (None without them)."""
    rows = np.arange(len(hit))
    real_known = real_mask & (rows < known)
    real_unknown = real_mask & (rows >= known)
    return {
        "recall_at_1_real_known": float(hit[real_known].mean()) if real_known.any() else None,
        "recall_at_1_real_unknown": float(hit[real_unknown].mean()) if real_unknown.any() else None,
    }


def measure_index(args, vectors, ids, probes, truth, singles, real_mask) -> dict:
    n = len(vectors)
    raw_mb = n * DIM * 4 / 2**20

    # Exact search (FAISS's brute-force kernel, what IndexFlatIP runs) over the same array:
    # the reference answers. faiss.knn reads the array in place; an IndexFlatIP would hold a
    # second copy of the raw vectors (10 GB at 10 M), which is what it costs in memory.
    def exact(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return faiss.knn(q, vectors, 5, metric=faiss.METRIC_INNER_PRODUCT)

    exact_single = single_query_times(exact, singles[: args.exact_single or len(singles)])
    start = time.perf_counter()
    exact_scores, exact_rows = exact(probes)
    exact_batch = time.perf_counter() - start
    exact_ids = ids[exact_rows]
    gc.collect()

    # A plain numpy scan of the same vectors (BLAS matrix-vector product + partial sort).
    def numpy_scan(q: np.ndarray) -> None:
        scores = vectors @ q[0]
        np.argpartition(-scores, 5)[:5]

    numpy_single = single_query_times(numpy_scan, singles[: max(20, args.single // 4)])

    # speakerdb's chosen index.
    params = choose_params(n, args.kind)
    gc.collect()
    before = current_rss_mb()
    start = time.perf_counter()
    index = VectorIndex.build(DIM, ids, vectors, params)
    build = time.perf_counter() - start
    gc.collect()
    index_mb = current_rss_mb() - before
    ours_single = single_query_times(lambda q: ours_search(index, vectors, q, 5), singles)
    start = time.perf_counter()
    ours_scores, ours_ids = ours_search(index, vectors, probes, 5)
    ours_batch = time.perf_counter() - start
    new_process = new_process_first_query(index, vectors, singles[0])
    factors = [float(f) for f in args.probe_factors.split(",") if f] if params.inverted else []
    sweep = probe_sweep(index, vectors, probes, exact_ids, singles, args.known, factors, real_mask)

    known = args.known
    open_known, open_unknown = open_set_accuracy(ours_scores[:, 0], ours_ids[:, 0], truth, known)
    exact_known, exact_unknown = open_set_accuracy(
        exact_scores[:, 0], exact_ids[:, 0], truth, known
    )
    threshold = GE2E_DEFAULT_THRESHOLD
    ours_decision = np.where(ours_scores[:, 0] >= threshold, ours_ids[:, 0], -1)
    exact_decision = np.where(exact_scores[:, 0] >= threshold, exact_ids[:, 0], -1)
    agreement = float(np.mean(ours_decision == exact_decision))
    recall_all = float(np.mean(ours_ids[:, 0] == exact_ids[:, 0]))
    recall_known = float(np.mean(ours_ids[:known, 0] == exact_ids[:known, 0]))
    recall_unknown = float(np.mean(ours_ids[known:, 0] == exact_ids[known:, 0]))
    real = real_recall(ours_ids[:, 0] == exact_ids[:, 0], real_mask, known)
    return {
        "n": n,
        "index": params.describe(),
        **{k: v for k, v in percentiles_ms(ours_single).items()},
        "recall_at_1": recall_all,
        "recall_at_1_known": recall_known,
        "recall_at_1_unknown": recall_unknown,
        **real,
        "shortlist_top5": params.shortlist(5),
        "exact_p50_ms": percentiles_ms(exact_single)["p50_ms"],
        "exact_p99_ms": percentiles_ms(exact_single)["p99_ms"],
        "numpy_p50_ms": percentiles_ms(numpy_single)["p50_ms"],
        "numpy_p99_ms": percentiles_ms(numpy_single)["p99_ms"],
        "speedup_vs_exact_p50": round(
            percentiles_ms(exact_single)["p50_ms"] / percentiles_ms(ours_single)["p50_ms"], 1
        ),
        "batch_queries_per_s": round(len(probes) / ours_batch, 1),
        "exact_batch_queries_per_s": round(len(probes) / exact_batch, 1),
        "build_s": round(build, 2),
        "index_memory_mb": round(index_mb, 1),
        "exact_memory_mb": round(raw_mb, 1),  # an IndexFlatIP holds the raw vectors
        "raw_vectors_mb": round(raw_mb, 1),
        "memory_ratio_to_raw": round(index_mb / raw_mb, 3),
        "memory_mb_per_million": round(index_mb * 1e6 / n, 1),
        "new_process": new_process,
        "probe_sweep": sweep,
        "new_process_memory_ratio_to_raw": round(new_process["index_resident_mb"] / raw_mb, 3),
        "decision_agreement_with_exact": agreement,
        "open_set_known": open_known,
        "open_set_unknown": open_unknown,
        "exact_open_set_known": exact_known,
        "exact_open_set_unknown": exact_unknown,
        "threshold": GE2E_DEFAULT_THRESHOLD,
        "probes": {
            "known": known,
            "unknown": len(probes) - known,
            "real_known": int(real_mask[:known].sum()),
            "real_unknown": int(real_mask[known:].sum()),
            "single_timed": len(singles),
        },
    }


def measure_store(args, vectors, ids, probes, truth) -> list[dict]:
    from speakerdb._identity import ModelIdentity
    from speakerdb.storage._records import EnrollRequest, NewUtterance
    from speakerdb.storage._store import EnrollmentStore

    n = min(args.store_n, len(vectors))
    model = ModelIdentity("synthetic", "5" * 64, DIM, GE2E_DEFAULT_THRESHOLD)
    flat = faiss.IndexFlatIP(DIM)
    flat.add(vectors[:n])
    known_rows = np.nonzero(truth < n)[0]  # probes whose speaker is in the subset
    queries = np.concatenate([probes[known_rows], probes[args.known :]])[: args.single]
    _, exact_rows = flat.search(queries, 1)
    targets: list[tuple[str, str]] = [("sqlite", "")]
    pg = create_scratch_pg(args.pg, "speakerdb_scale")
    if pg is not None:
        targets.append(("postgresql", pg[0]))
    results = []
    folder = Path(tempfile.mkdtemp(prefix="speakerdb-scale-"))
    os.environ["SPEAKERDB_INDEX_DIR"] = str(folder / "index-cache")
    try:
        for backend, url in targets:
            if backend == "sqlite":
                url = f"sqlite:///{folder / 'scale.sqlite'}"
            start = time.perf_counter()
            with EnrollmentStore.open(url) as store:
                for begin in range(0, n, 2000):
                    batch = [
                        EnrollRequest(
                            f"s{i:07d}",
                            [NewUtterance(vectors[i], f"{i:064x}", None, 4.0, 3.5)],
                        )
                        for i in range(begin, min(n, begin + 2000))
                    ]
                    store.enroll_many(batch, model)
            enroll_s = time.perf_counter() - start
            if args.kind != "auto":
                with EnrollmentStore.open(url) as store:
                    store.rebuild_index(args.kind)  # the kind is stored in the database
                    index_path = store.location.index_path
                if index_path is not None:  # so that the next open builds from SQL
                    index_path.unlink(missing_ok=True)
            with EnrollmentStore.open(url) as store:  # no index file yet: built from SQL
                start = time.perf_counter()
                store.search(queries[0], 5, model)
                cold_query = time.perf_counter() - start
            with EnrollmentStore.open(url) as store:  # as a new process: loads the file
                start = time.perf_counter()
                store.search(queries[0], 5, model)
                first_query = time.perf_counter() - start
                name_of = {s.id: int(s.name[1:]) for s in store.speakers()}
                times, found = [], []
                for q in queries:
                    t0 = time.perf_counter()
                    result = store.search(q, 5, model)
                    times.append(time.perf_counter() - t0)
                    found.append(name_of[result[0][0].id] if result[0] else -1)
                start = time.perf_counter()
                store.search(queries, 5, model)
                batch_s = time.perf_counter() - start
                status = store.index_status()
            recall = float(np.mean(np.array(found) == exact_rows[:, 0]))
            results.append(
                {
                    "backend": backend,
                    "n": n,
                    "index": status.params,
                    "enroll_s": round(enroll_s, 1),
                    "enrollments_per_s": round(n / enroll_s, 1),
                    "first_query_after_reopen_ms": round(first_query * 1000, 1),
                    "first_query_without_index_file_ms": round(cold_query * 1000, 1),
                    **percentiles_ms(times),
                    "batch_queries_per_s": round(len(queries) / batch_s, 1),
                    "recall_at_1": recall,
                }
            )
    finally:
        if pg is not None:
            drop_scratch_pg(pg[1])
        shutil.rmtree(folder, ignore_errors=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="enrolled speakers")
    parser.add_argument("--known", type=int, default=1000, help="probes of enrolled speakers")
    parser.add_argument("--unknown", type=int, default=1000, help="probes of unknown speakers")
    parser.add_argument("--single", type=int, default=300, help="probes timed one by one")
    parser.add_argument(
        "--exact-single",
        type=int,
        default=0,
        help="time exact search on only this many of the single probes (0: all; ~1 s each at 10 M)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--probe-factors",
        default="",
        help="comma-separated factors: also search with nprobe times each (e.g. 1.5,2,3)",
    )
    parser.add_argument(
        "--kind", default="auto", choices=["auto", "flat", "ivf", "ivfsq"], help="index kind"
    )
    parser.add_argument("--no-real", action="store_true", help="synthetic voiceprints only")
    parser.add_argument("--store", action="store_true", help="also measure through the real store")
    parser.add_argument("--store-n", type=int, default=100_000)
    parser.add_argument(
        "--pg",
        default=DEFAULT_PG_URL,
    )
    parser.add_argument(
        "--json", action="store_true", help="(the JSON object is always the last line)"
    )
    args = parser.parse_args()

    generator = VoiceprintGenerator(seed=args.seed)
    ids = np.arange(1, args.n + 1, dtype=np.int64)
    rng = np.random.default_rng(args.seed + 7)
    truth_rows = rng.choice(args.n, args.known, replace=False)
    vectors, raw = generator.speakers(args.n, seed=args.seed + 1, keep=truth_rows)
    known = generator.probes_of(raw, seed=args.seed + 2)
    del raw
    unknown = generator.unknown(args.unknown, seed=args.seed + 3)
    truth = ids[truth_rows]
    # Probes timed one by one: half known, half unknown speakers (synthetic).
    singles = np.concatenate([known[: args.single // 2], unknown[: args.single - args.single // 2]])
    synthetic_known, synthetic_unknown = len(known), len(unknown)
    real = None if args.no_real else real_voiceprints()
    if real is not None:
        # Real enrolled speakers replace synthetic ones no probe was drawn from.
        free = np.setdiff1d(np.arange(args.n), truth_rows)
        real_rows = rng.choice(free, len(real.enrolled), replace=False)
        vectors[real_rows] = real.enrolled
        known = np.concatenate([known, real.known])
        truth = np.concatenate([truth, ids[real_rows[real.known_rows]]])
        unknown = np.concatenate([unknown, real.unknown])
    probes = np.concatenate([known, unknown])
    real_mask = np.zeros(len(probes), bool)
    real_mask[synthetic_known : len(known)] = True
    real_mask[len(known) + synthetic_unknown :] = True
    args.known = len(known)
    record = measure_index(args, vectors, ids, probes, truth, singles, real_mask)
    if args.store:
        record["store"] = measure_store(args, vectors, ids, probes, truth - 1)

    r = record
    lines = [
        f"{r['n']} speakers ({r['probes']['real_known'] and 'real dev voiceprints mixed in'}), "
        f"{r['probes']['known']} known + {r['probes']['unknown']} unknown probes",
        f"  speakerdb {r['index']}: p50 {r['p50_ms']:.3f} ms p99 {r['p99_ms']:.3f} ms, "
        f"{r['batch_queries_per_s']:.0f} queries/s batched, built in {r['build_s']} s, "
        f"{r['index_memory_mb']:.0f} MB ({r['memory_ratio_to_raw']:.2f}x the raw vectors)",
        f"  exact FAISS flat: p50 {r['exact_p50_ms']:.3f} ms p99 {r['exact_p99_ms']:.3f} ms, "
        f"{r['exact_batch_queries_per_s']:.0f} queries/s batched",
        f"  numpy scan:       p50 {r['numpy_p50_ms']:.3f} ms p99 {r['numpy_p99_ms']:.3f} ms",
        f"  recall@1 vs exact {r['recall_at_1']:.4f} (known {r['recall_at_1_known']:.4f}, "
        f"unknown {r['recall_at_1_unknown']:.4f}; real dev voiceprints: known "
        f"{r['recall_at_1_real_known']}, unknown {r['recall_at_1_real_unknown']})",
        f"  new process: index file {r['new_process']['file_mb']} MB loaded in "
        f"{r['new_process']['load_s']} s ({r['new_process']['index_resident_mb']:.0f} MB "
        f"resident, {r['new_process_memory_ratio_to_raw']}x raw), first query "
        f"{r['new_process']['first_query_ms']:.1f} ms after it, "
        f"{r['new_process']['total_s']:.2f} s in all; from a cold page cache "
        f"{r['new_process']['cold']['load_s']:.3f} s, first query "
        f"{r['new_process']['cold']['first_query_ms']:.1f} ms, "
        f"{r['new_process']['cold']['total_s']:.2f} s in all",
        f"  open-set decisions at {r['threshold']} identical to exact search for "
        f"{r['decision_agreement_with_exact']:.2%} of probes; accuracy: known "
        f"{r['open_set_known']:.4f}, unknown "
        f"{r['open_set_unknown']:.4f} (exact search: {r['exact_open_set_known']:.4f}, "
        f"{r['exact_open_set_unknown']:.4f})",
        f"  {r['speedup_vs_exact_p50']}x faster than exact at p50; "
        f"{r['memory_mb_per_million']:.0f} MB per million speakers",
    ]
    for w in r["probe_sweep"]:
        lines.append(
            f"  nprobe x{w['factor']:g} ({w['nprobe']}): recall@1 known "
            f"{w['recall_at_1_known']:.4f}, unknown {w['recall_at_1_unknown']:.4f}; "
            f"p50 {w['p50_ms']:.3f} ms p99 {w['p99_ms']:.3f} ms"
        )
    for s in r.get("store", []):
        lines.append(
            f"  store {s['backend']} ({s['n']} speakers, {s['index']}): "
            f"enrolled in {s['enroll_s']} s, first query in a new process "
            f"{s['first_query_after_reopen_ms']} ms ({s['first_query_without_index_file_ms']} ms "
            f"building the index from SQL), top-5 p50 {s['p50_ms']:.2f} ms "
            f"p99 {s['p99_ms']:.2f} ms, recall@1 {s['recall_at_1']:.4f}"
        )
    emit(lines, {"benchmark": "identify_scale", **record})


if __name__ == "__main__":
    main()
