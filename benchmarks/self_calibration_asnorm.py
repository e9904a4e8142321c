"""Self-calibration of AS-norm scores against the affine self-calibration, on held-out speakers.

The same protocol as benchmarks/self_calibration.py (per set, ``--splits`` random halves of
the speakers form a simulated database of ``--enrolled`` recordings each; the other speakers
are held out: file pairs and voiceprints of 2-3 recordings), with rows:

- ``affine k=K``: the library's affine form (scale and offset of the bundled LLR, shrunk
  with n / (n + K)) at ln 99, for each K in ``--shrink``; ``affine valid k=K``: the same with
  the weight on the fit chosen by the database's own speakers (speaker-held-out validation,
  speakerdb.enroll._shrinkage), capped at n / (n + K);
- ``asnorm ln99`` / ``asnorm far1%``: the enrollment trials scored with AS-norm against the
  database's own recordings of OTHER speakers as cohort (leave-the-speakers-out: neither the
  probe's nor the voiceprint's speaker is in a trial's cohort), a logistic calibration of the
  z-score alone fitted on them (every speaker weighing the same), used at ln 99 or at the
  LLR reaching 1 % FAR on its own enrollment trials; ``asnorm p=P``: fitted and decided at
  p_target P (0.003, 0.001: a stricter operating point). Held-out trials are normalised
  against all the database's recordings (none of them of a held-out speaker).

The choice of a default is made leave-one-set-out (the row with the lowest mean FRR + 99 FAR
on the other sets, among the rows whose FAR stays <= 1 % on every other set), so the chosen
row's figures on each set are held out. Cohort: top-N = min(``--top-n``, cohort size).

``--prior held-out``: the affine rows shrink toward the bundled calibration's form fitted
without the measured set (see benchmarks/self_calibration.py).

    SPEAKERDB_TEST_DATA=../shared/data python benchmarks/self_calibration_asnorm.py
        [--splits 10] [--prior held-out]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from calibration_transfer import EmbeddingCache, Recording, embed_set
from self_calibration import LN99, SETS, loso_choice, mean_rows, rates, simulate_fit

from _common import DATA, emit
from speakerdb import _calibration as cal

COHORT = "centroids"


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _stats(scores: np.ndarray, top_n: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sd of each row's top-N cohort scores (rows: trials)."""
    n = min(top_n, scores.shape[1])
    top = -np.partition(-scores, n - 1, axis=1)[:, :n]
    return top.mean(axis=1), np.maximum(top.std(axis=1), 1e-6)


def asnorm(
    raw: np.ndarray, enroll: np.ndarray, probe: np.ndarray, cohort: np.ndarray, top_n: int
) -> np.ndarray:
    """(n,) AS-norm of raw cosines; enroll / probe: (n, D) the two sides; cohort: (C, D)."""
    mu_e, sd_e = _stats(enroll @ cohort.T, top_n)
    mu_t, sd_t = _stats(probe @ cohort.T, top_n)
    return 0.5 * ((raw - mu_e) / sd_e + (raw - mu_t) / sd_t)


Trials = tuple[cal.TrialQuality, np.ndarray, np.ndarray, np.ndarray, list[str], list[str]]


def trials_of(
    rows: list[tuple[Recording, np.ndarray, float, int, float, str]],
) -> Trials:
    """rows: (probe, voiceprint vector, voiceprint seconds, recordings, bandwidth, speaker)."""
    probe = np.stack([p.vector for p, *_ in rows])
    prints = np.stack([vp for _, vp, *_ in rows])
    raw = np.einsum("ij,ij->i", probe, prints)
    quality = cal.TrialQuality.of(
        raw,
        np.array([p.speech_seconds for p, *_ in rows]),
        np.array([r[2] for r in rows]),
        np.array([r[3] for r in rows], dtype=np.float64),
        np.array([p.bandwidth_hz for p, *_ in rows]),
        np.array([r[4] for r in rows]),
    )
    labels = np.array([int(r[0].speaker == r[5]) for r in rows])
    return quality, labels, probe, prints, [p.speaker for p, *_ in rows], [r[5] for r in rows]


def _print(members: list[Recording]) -> tuple[np.ndarray, float, int, float]:
    vp = _unit(np.mean([m.vector for m in members], axis=0))
    seconds = sum(m.speech_seconds for m in members)
    bw = sum(m.speech_seconds * m.bandwidth_hz for m in members) / seconds
    return vp, seconds, len(members), bw


def held_out(recs: list[Recording], rng: np.random.Generator, draws: int = 6) -> dict[str, Trials]:
    """pairs: every pair of recordings; vp: probes against voiceprints of 2-3 recordings."""
    pairs = [(a, *_print([b]), b.speaker) for a, b in itertools.combinations(recs, 2)]
    by_speaker: dict[str, list[Recording]] = {}
    for r in recs:
        by_speaker.setdefault(r.speaker, []).append(r)
    vps = []
    for speaker, own in by_speaker.items():
        for size in (2, 3):
            if len(own) <= size:
                continue
            for _ in range(draws):
                pick = set(rng.choice(len(own), size, replace=False).tolist())
                vp = _print([own[i] for i in sorted(pick)])
                probes = [own[i] for i in range(len(own)) if i not in pick]
                probes += [r for r in recs if r.speaker != speaker]
                vps += [(p, *vp, speaker) for p in probes]
    return {"pairs": trials_of(pairs), "vp": trials_of(vps)}


def enrollment_trials(db: list[Recording], rng: np.random.Generator) -> Trials:
    """The library's protocol (each recording against its speaker's other recordings; against
    every other speaker's voiceprint of all but one recording), without the dedupe."""
    by_speaker: dict[str, list[Recording]] = {}
    for r in db:
        by_speaker.setdefault(r.speaker, []).append(r)
    rows = []
    for speaker, own in by_speaker.items():
        for i, p in enumerate(own):
            if len(own) >= 2:
                rows.append((p, *_print(own[:i] + own[i + 1 :]), speaker))
            for other, theirs in by_speaker.items():
                if other == speaker:
                    continue
                keep = list(theirs)
                if len(keep) >= 2:
                    keep.pop(int(rng.integers(len(keep))))
                rows.append((p, *_print(keep), other))
    return trials_of(rows)


def normalised(trials: Trials, db: list[Recording], top_n: int, leave_out: bool) -> np.ndarray:
    """AS-norm scores of the trials; cohort: the database's recordings, without those of the
    trial's two speakers when ``leave_out``."""
    quality, _, probe, prints, probe_spk, print_spk = trials
    out = np.empty(len(probe_spk))
    if COHORT == "centroids":  # the library's default cohort: one voiceprint per speaker
        owners = np.array(sorted({r.speaker for r in db}))
        vectors = np.stack([_print([r for r in db if r.speaker == s])[0] for s in owners])
    else:
        vectors = np.stack([r.vector for r in db])
        owners = np.array([r.speaker for r in db])
    if not leave_out:
        return asnorm(quality.score, prints, probe, vectors, top_n)
    keys = list(zip(probe_spk, print_spk, strict=True))
    for key in set(keys):
        rows = np.array([i for i, k in enumerate(keys) if k == key])
        cohort = vectors[(owners != key[0]) & (owners != key[1])]
        out[rows] = asnorm(quality.score[rows], prints[rows], probe[rows], cohort, top_n)
    return out


def fit_z(
    z: np.ndarray, labels: np.ndarray, groups: list[str], model: dict, p_fit: float = 0.01
) -> cal.Calibration:
    ids = {g: i for i, g in enumerate(sorted(set(groups)))}
    return cal.fit_calibration(
        cal.TrialQuality.of(z, 1.0, 1.0),
        labels,
        model=model,
        features=("score",),
        p_fit=p_fit,
        groups=np.array([ids[g] for g in groups]),
        clip_inputs=False,
    )


def other_voices(model, count: int) -> dict[str, list[Recording]]:
    """``count`` librispeech singles (speakers of no development set) as recordings, as
    they are ("wide") and through a phone line ("phone", for the telephone set)."""
    from self_calibration_naming import phone_copy

    heard = set()
    for name in SETS:
        for line in (DATA / name / "manifest.jsonl").read_text().splitlines():
            heard.add(str(json.loads(line).get("label")))
    items = [
        json.loads(line)
        for line in (DATA / "librispeech" / "singles.jsonl").read_text().splitlines()
    ]
    items = [i for i in items if str(i["label"]) not in heard][:count]
    out: dict[str, list[Recording]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {
            "wide": [DATA / "librispeech" / i["audio_filepath"] for i in items],
            "phone": [
                phone_copy(DATA / "librispeech" / i["audio_filepath"], Path(tmp) / f"{k}.wav")
                for k, i in enumerate(items)
            ],
        }
        for kind, files in paths.items():
            embedded = model.embed([str(f) for f in files])
            out[kind] = [
                Recording(
                    "others",
                    f"single-{i['label']}",
                    f"{kind}:{i['label']}",
                    "",
                    np.asarray(e.vector, dtype=np.float64),
                    float(e.speech_seconds),
                    float(e.bandwidth_hz),
                )
                for i, e in zip(items, embedded, strict=True)
                if e.vector is not None
            ]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", type=int, default=10)
    parser.add_argument("--enrolled", type=int, default=3)
    parser.add_argument("--shrink", default="0,3,10,30")
    parser.add_argument("--top-n", type=int, default=100)
    parser.add_argument(
        "--others", type=int, default=20, help="single-recording voices in every database"
    )
    parser.add_argument("--cohort", choices=("centroids", "recordings"), default="centroids")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/speakerdb-bench-cache"))
    parser.add_argument(
        "--prior",
        choices=("bundled", "held-out"),
        default="bundled",
        help="the affine rows shrink toward the bundled calibration or toward its form fitted "
        "without the measured set",
    )
    args = parser.parse_args()
    shrinks = [float(s) for s in args.shrink.split(",")]
    global COHORT
    COHORT = args.cohort

    import speakerdb

    model = speakerdb.load_model(device="cpu")
    identity = {
        "name": model.identity.name,
        "weights_sha256": model.identity.weights_sha256,
        "dimension": model.identity.dimension,
    }
    bundled = cal.bundled_calibration(*model.identity.key)
    assert bundled is not None
    cache = EmbeddingCache(args.cache, model.identity.label)
    priors = {name: bundled for name in SETS}
    if args.prior == "held-out":  # as in self_calibration.py --prior held-out
        from calibration_transfer import build_groups, fit_on, leave_one_set_out

        groups = {n: build_groups(n, embed_set(n, model, cache, True), 10, True) for n in SETS}
        priors = leave_one_set_out(
            groups, lambda g: fit_on(g, cal.DEFAULT_FEATURES, 0.01, identity, "held-out prior")
        )
    singles = other_voices(model, args.others)
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for name in SETS:
        recs = embed_set(name, model, cache, False)
        speakers = sorted({r.speaker for r in recs})
        rng = np.random.default_rng([17, SETS.index(name)])
        table: dict[str, list[dict[str, float]]] = {}
        for _ in range(args.splits):
            order = rng.permutation(len(speakers))
            cal_spk = {speakers[i] for i in order[: (len(speakers) + 1) // 2]}
            db: list[Recording] = []
            for s in sorted(cal_spk):
                own = [r for r in recs if r.speaker == s]
                db += [own[i] for i in rng.choice(len(own), args.enrolled, replace=False)]
            # A database also holds voices enrolled once (never tested here): without them
            # a half of 4-10 speakers leaves AS-norm no cohort at all.
            db += singles["phone" if name == "telephone" else "wide"]
            test = held_out([r for r in recs if r.speaker not in cal_spk], rng)
            rows: dict[str, dict[str, float]] = {}
            for k in shrinks:
                fitted = simulate_fit(db, k, priors[name], identity, form="affine")
                row: dict[str, float] = {}
                for kind, (q, y, *_) in test.items():
                    row[f"{kind}_far"], row[f"{kind}_frr"] = rates(fitted.llrs(q), y, LN99)
                rows[f"affine k={k:g} ln99"] = row
                valid = simulate_fit(db, k, priors[name], identity, form="affine", validate=True)
                row = {}
                for kind, (q, y, *_) in test.items():
                    row[f"{kind}_far"], row[f"{kind}_frr"] = rates(valid.llrs(q), y, LN99)
                rows[f"affine valid k={k:g} ln99"] = row
            own_trials = enrollment_trials(db, rng)
            z_own = normalised(own_trials, db, args.top_n, leave_out=True)
            zfit = fit_z(z_own, own_trials[1], own_trials[4], identity)
            own_llr = zfit.llrs(cal.TrialQuality.of(z_own, 1.0, 1.0))
            non = own_llr[own_trials[1] == 0]
            far_threshold = float(np.quantile(non, 0.99)) if non.size else LN99
            for label, threshold in (("asnorm ln99", LN99), ("asnorm far1%", far_threshold)):
                row = {}
                for kind, trials in test.items():
                    z = normalised(trials, db, args.top_n, leave_out=False)
                    llr = zfit.llrs(cal.TrialQuality.of(z, 1.0, 1.0))
                    row[f"{kind}_far"], row[f"{kind}_frr"] = rates(llr, trials[1], threshold)
                rows[label] = row
            # A stricter operating point, fitted and decided at p_target 0.003 / 0.001
            # (`calibrate --from-enrollments --norm asnorm --prior P`).
            for p_target in (0.003, 0.001):
                strict = fit_z(z_own, own_trials[1], own_trials[4], identity, p_target)
                threshold = float(np.log((1.0 - p_target) / p_target))
                row = {}
                for kind, trials in test.items():
                    z = normalised(trials, db, args.top_n, leave_out=False)
                    llr = strict.llrs(cal.TrialQuality.of(z, 1.0, 1.0))
                    row[f"{kind}_far"], row[f"{kind}_frr"] = rates(llr, trials[1], threshold)
                rows[f"asnorm p={p_target:g}"] = row
            oracle: dict[str, float] = {}
            for kind, (q, y, *_) in test.items():
                t = float(np.quantile(q.score[y == 0], 0.99))
                oracle[f"{kind}_far"], oracle[f"{kind}_frr"] = rates(q.score, y, t)
            rows["oracle cosine @1% FAR"] = oracle
            for label, row in rows.items():
                table.setdefault(label, []).append(row)
        summary[name] = mean_rows(table)

    candidates = [lab for lab in summary[SETS[0]] if not lab.startswith("oracle")]
    chosen = loso_choice(summary, candidates)
    lines = [
        f"AS-norm self-calibration vs affine, held-out speakers: {args.splits} splits, "
        f"{args.enrolled} recordings per enrolled speaker; FAR / FRR in %",
        f"{'set':16} {'row':24} {'pairs FAR':>9} {'FRR':>6} {'vp FAR':>7} {'genuine':>8}",
    ]
    for name in SETS:
        for label, f in summary[name].items():
            mark = " <- LOSO choice" if label == chosen[name] else ""
            lines.append(
                f"{name:16} {label:24} {100 * f['pairs_far']:9.2f} {100 * f['pairs_frr']:6.1f} "
                f"{100 * f['vp_far']:7.2f} {100 * (1 - f['vp_frr']):7.1f}%{mark}"
            )
    lines.append(
        "LOSO: per set, the row with the lowest mean (FRR + 99 FAR) on the other sets among "
        "rows keeping FAR <= 1 % on every other set"
    )
    emit(
        lines,
        {
            "benchmark": "self_calibration_asnorm",
            "splits": args.splits,
            "prior": args.prior,
            "summary": summary,
            "loso_choice": chosen,
        },
    )


if __name__ == "__main__":
    main()
