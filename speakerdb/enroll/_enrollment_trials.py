"""Trials built from a database's own enrollments, and the calibration fitted on them.

Every speaker with two or more recordings gives same-speaker trials by the verify protocol:
each recording against the voiceprint (normalised mean) of the speaker's OTHER recordings.
Every recording against every other speaker's voiceprint gives different-speaker trials.
Quality inputs are those of :class:`speakerdb._calibration.TrialQuality`: the probe's speech
seconds, the voiceprint's summed speech seconds and recording count, and both bandwidths.

Enrollment trials are optimistic in three ways, each guarded against here:

- near-duplicates (the same audio re-encoded, or one take cut twice) make same-speaker scores
  close to 1: a recording whose cosine with an earlier kept recording of the same speaker
  exceeds :data:`DUPLICATE_COSINE` is dropped;
- a few speakers with many recordings would dominate the fit: every speaker's trials weigh
  the same in each class (:func:`speakerdb._calibration.group_weights` over probe speakers);
- few speakers give a noisy fit: only two parameters are fitted by default, a scale and an
  offset of the bundled calibration's LLR (:data:`SELF_FORM`), and they are shrunk toward
  the bundled calibration (scale 1, offset 0) with weight ``lam = n / (n + k)`` on the fit
  (n the speakers with two or more recordings, k :data:`SHRINK_SPEAKERS`). LLRs are linear
  in the weights, so this is the same mixture of the two calibrations' LLRs; the "full" form
  re-fits every weight and mixes them the same way.

Pure numpy: no SQL, no torch.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from speakerdb._calibration import (
    FAR_GRID,
    Calibration,
    FitSummary,
    TrialQuality,
    fit_calibration,
    group_weights,
)
from speakerdb.enroll._shrinkage import validated_weight
from speakerdb.errors import UsageError

__all__ = [
    "DUPLICATE_COSINE",
    "MAX_NONTARGET_TRIALS",
    "MIN_SELF_SPEAKERS",
    "MIN_SELF_VOICEPRINTS",
    "SELF_FORM",
    "SHRINK_SPEAKERS",
    "SHRINK_VALIDATED",
    "EnrollmentTrials",
    "build_trials",
    "fit_self_calibration",
    "keep_distinct",
    "shrink_toward",
]

DUPLICATE_COSINE = 0.995
"""Recordings of one speaker closer than this (cosine) count as one: GE2E gives 0.97-0.99 for
two different takes of one read sentence, > 0.999 for one recording re-encoded."""

MIN_SELF_SPEAKERS = 5
"""Fewest speakers with two or more (distinct) recordings a self-calibration fits on. A floor,
not a figure tuned on data: the development sets hold 4-10 speakers, too few to find the
size where a fit starts to beat the bundled calibration (benchmarks/self_calibration.py
reports the held-out figures by database size; they are noisy); with the shrinkage a fit on
5 speakers moves the LLRs by about a seventh of the way toward its own."""

MIN_SELF_VOICEPRINTS = 10
"""Fewest speakers in all (voiceprints the different-speaker trials are made against): a
floor, like :data:`MIN_SELF_SPEAKERS`."""

SHRINK_SPEAKERS = 30.0
"""k of the shrinkage weight n / (n + k): with 30 speakers of two or more recordings the fit
counts half, with 270 nine tenths. Chosen leave-one-set-out among 0, 3, 10, 30 with
:data:`SELF_FORM` (the lowest FRR + 99 FAR on the other sets; every left-out set chose 30):
benchmarks/self_calibration.py."""

SHRINK_VALIDATED = False
"""Whether the affine form's weight on the fit is chosen by the database's own speakers
(speaker-held-out validation, :mod:`speakerdb.enroll._shrinkage`), capped at n / (n + k),
instead of n / (n + k) itself. Measured leave-one-set-out against the fixed weight
(benchmarks/self_calibration.py and self_calibration_asnorm.py, rows "valid"): with 4-5
enrolled speakers the folds are too few to tell the weight (held-out phone FAR 3.6-5.2 %
uncapped or capped at k = 3-10; 1.5 % capped at k = 10 with 5 single voices besides, the
library's minimum); chosen only with 20 single voices besides. Off; kept as an option for
measuring databases with more speakers (docs/calibration.md)."""

SELF_FORM = "affine"
"""How a self-calibration departs from the bundled one: "affine" (a scale and an offset of
the bundled LLR) or "full" (every weight re-fitted). Chosen leave-one-set-out with k (the
lowest FRR + 99 FAR on the other sets; every left-out set chose affine, k = 30): on held-out
speakers it kept FAR <= 1 % on every set, where "full" reached 1.2 % on phone voiceprints,
and lowered clean file-pair FRR (3.6 against 6.8 %), at the price of phone genuine
acceptance (57 against 63 %; benchmarks/self_calibration.py)."""

MAX_NONTARGET_TRIALS = 50_000
"""Different-speaker trials beyond this are drawn at random (fixed seed): enough for FAR
thresholds down to 0.1 % and a fit that takes well under a second."""


@dataclass(frozen=True)
class EnrollmentTrials:
    """Trials built from enrollments. inputs: n trials; labels: (n,) 1 same / 0 different;
    groups: (n,) the probe's speaker (int), every speaker weighing the same per class;
    cosines: (n,) the raw cosines (= inputs.score). Counts say what went in: ``speakers``
    with a usable recording, ``eligible`` of them with two or more distinct recordings,
    ``recordings`` used, ``duplicates`` dropped, ``unknown_quality`` skipped (no bandwidth
    or no speech measured)."""

    inputs: TrialQuality
    labels: npt.NDArray[np.int64]
    groups: npt.NDArray[np.int64]
    speakers: int
    eligible: int
    recordings: int
    duplicates: int
    unknown_quality: int
    prints: npt.NDArray[np.int64] | None = None
    """(n,) the voiceprint side's speaker (int, as ``groups``); None where not recorded."""

    @property
    def target_trials(self) -> int:
        return int(self.labels.sum())

    @property
    def nontarget_trials(self) -> int:
        return int(self.labels.size - self.labels.sum())

    def weights(self) -> npt.NDArray[np.float64]:
        """(n,) weights: each class sums to 1, each probe speaker's share equal."""
        return group_weights(self.labels, self.groups)

    def describe(self) -> str:
        return (
            f"{self.target_trials} same-speaker trials of {self.eligible} speakers with 2+ "
            f"recordings, {self.nontarget_trials} different-speaker trials against "
            f"{self.speakers} voiceprints ({self.recordings} recordings; {self.duplicates} "
            f"near-duplicates dropped"
            + (
                f", {self.unknown_quality} without measured quality skipped"
                if self.unknown_quality
                else ""
            )
            + ")"
        )


def keep_distinct(
    vectors: npt.ArrayLike, speakers: npt.ArrayLike, threshold: float = DUPLICATE_COSINE
) -> npt.NDArray[np.bool_]:
    """(n,) mask of the recordings kept: in order, a recording is dropped when its cosine with
    an earlier KEPT recording of the same speaker exceeds ``threshold``. vectors: (n, D)
    unit-norm; speakers: (n,) labels."""
    v = np.asarray(vectors, dtype=np.float64)
    s = np.asarray(speakers)
    keep = np.ones(len(v), dtype=bool)
    for speaker in np.unique(s):
        idx = np.flatnonzero(s == speaker)
        if idx.size < 2:
            continue
        sims = v[idx] @ v[idx].T
        kept: list[int] = []
        for j in range(idx.size):
            if kept and float(sims[j, kept].max()) > threshold:
                keep[idx[j]] = False
            else:
                kept.append(j)
    return keep


def _unit(rows: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    return rows / np.where(norms > 0, norms, 1.0)


def build_trials(
    vectors: npt.ArrayLike,
    speakers: npt.ArrayLike,
    speech_seconds: npt.ArrayLike,
    bandwidth_hz: npt.ArrayLike,
    *,
    duplicate_cosine: float = DUPLICATE_COSINE,
    max_nontarget: int = MAX_NONTARGET_TRIALS,
    seed: int = 0,
    matched: bool = True,
    asnorm_top_n: int | None = None,
) -> EnrollmentTrials:
    """Same- and different-speaker trials from enrolled recordings (see the module).

    vectors: (n, D) unit-norm embeddings; speakers: (n,) integer speaker ids; speech_seconds:
    (n,) seconds (> 0); bandwidth_hz: (n,) Hz, NaN where unknown (such recordings, and those
    without speech, are skipped: a calibration needs both). matched: False makes the
    different-speaker trials against whole voiceprints (only to measure why they are not).
    asnorm_top_n: when given, every trial's score is its AS-norm z-score (top-N statistics
    of this N) against the voiceprints of the OTHER speakers (leave-the-speakers-out: neither
    the probe's speaker nor the voiceprint's is in a trial's cohort; see
    :func:`_asnorm_chunk`), the scale ``speakerdb verify --norm asnorm`` decides on.
    Raises UsageError for mismatched lengths.
    """
    v = np.asarray(vectors, dtype=np.float64)
    spk = np.asarray(speakers, dtype=np.int64).ravel()
    sec = np.asarray(speech_seconds, dtype=np.float64).ravel()
    bw = np.asarray(bandwidth_hz, dtype=np.float64).ravel()
    n = spk.size
    if v.ndim != 2 or v.shape[0] != n or sec.size != n or bw.size != n:
        raise UsageError("enrollment trials need one vector, speaker, duration and bandwidth each")
    usable = np.isfinite(bw) & (bw > 0) & np.isfinite(sec) & (sec > 0)
    unknown = int(n - usable.sum())
    v, spk, sec, bw = v[usable], spk[usable], sec[usable], bw[usable]
    keep = keep_distinct(v, spk, duplicate_cosine)
    duplicates = int(keep.size - keep.sum())
    v, spk, sec, bw = _unit(v[keep]), spk[keep], sec[keep], bw[keep]
    by_speaker = np.argsort(spk, kind="stable")
    v, spk, sec, bw = v[by_speaker], spk[by_speaker], sec[by_speaker], bw[by_speaker]

    ids, index = np.unique(spk, return_inverse=True)
    count = np.bincount(index, minlength=ids.size).astype(np.float64)
    total = np.zeros((ids.size, v.shape[1]))
    np.add.at(total, index, v)
    seconds = np.bincount(index, weights=sec, minlength=ids.size)
    bw_seconds = np.bincount(index, weights=sec * bw, minlength=ids.size)

    # Same speaker: each recording against the mean of its speaker's others.
    mine = count[index] >= 2
    others = _unit(total[index[mine]] - v[mine])
    tgt_score = np.einsum("ij,ij->i", v[mine], others)
    cohort = _unit(total) if asnorm_top_n is not None else None
    if cohort is not None and asnorm_top_n is not None:
        own = index[mine]
        step = _cohort_chunk(ids.size)
        for start in range(0, tgt_score.size, step):
            part = slice(start, start + step)
            tgt_score[part] = _asnorm_chunk(
                tgt_score[part],
                v[mine][part],
                others[part],
                own[part],
                own[part],
                cohort,
                asnorm_top_n,
            )
    tgt_enroll_sec = seconds[index[mine]] - sec[mine]
    tgt = (
        tgt_score,
        sec[mine],
        tgt_enroll_sec,
        count[index[mine]] - 1,
        bw[mine],
        (bw_seconds[index[mine]] - sec[mine] * bw[mine]) / tgt_enroll_sec,
        index[mine],
        index[mine],
    )

    # Different speakers: every recording against another speaker's voiceprint built like a
    # same-speaker trial's, from all but one of its recordings (one drawn at random; all of
    # them for a speaker with one). Whole voiceprints would make the different-speaker side
    # one recording longer than the same-speaker side, a difference the quality terms learn
    # as if it told speakers apart (measured: 95 % FAR on held-out file pairs).
    rng = np.random.default_rng(seed)
    rec, other = _nontarget_pairs(index, ids.size, max_nontarget, rng)
    first = np.searchsorted(index, np.arange(ids.size))  # rows are sorted by speaker
    left = first[other] + (rng.random(other.size) * count[other]).astype(np.int64)
    drop = (count[other] >= 2) & matched
    print_sec = seconds[other] - np.where(drop, sec[left], 0.0)
    print_bw = bw_seconds[other] - np.where(drop, sec[left] * bw[left], 0.0)
    scores = np.empty(rec.size)
    for start in range(0, rec.size, _CHUNK):  # bounded memory: (chunk, D) at a time
        part = slice(start, start + _CHUNK)
        prints = total[other[part]] - np.where(drop[part, None], v[left[part]], 0.0)
        unit_prints = _unit(prints)
        scores[part] = np.einsum("ij,ij->i", v[rec[part]], unit_prints)
        if cohort is not None and asnorm_top_n is not None:
            for sub in range(0, unit_prints.shape[0], _cohort_chunk(ids.size)):
                piece = slice(sub, sub + _cohort_chunk(ids.size))
                rows = np.arange(start, min(start + _CHUNK, rec.size))[piece]
                scores[rows] = _asnorm_chunk(
                    scores[rows],
                    v[rec[rows]],
                    unit_prints[piece],
                    index[rec[rows]],
                    other[rows],
                    cohort,
                    asnorm_top_n,
                )
    non = (
        scores,
        sec[rec],
        print_sec,
        count[other] - drop,
        bw[rec],
        print_bw / print_sec,
        index[rec],
        other,
    )
    parts = [np.concatenate([a, b]) for a, b in zip(tgt, non, strict=True)]
    labels = np.concatenate([np.ones(tgt[0].size, np.int64), np.zeros(non[0].size, np.int64)])
    inputs = TrialQuality.of(*parts[:6]) if labels.size else TrialQuality.of(np.zeros(0), 1.0, 1.0)
    return EnrollmentTrials(
        inputs=inputs,
        labels=labels,
        groups=parts[6].astype(np.int64),
        prints=parts[7].astype(np.int64),
        speakers=int(ids.size),
        eligible=int((count >= 2).sum()),
        recordings=int(v.shape[0]),
        duplicates=duplicates,
        unknown_quality=unknown,
    )


_CHUNK = 8192


def _cohort_chunk(speakers: int) -> int:
    """Trials normalised at once: about four million cohort scores per side."""
    return max(1, 4_000_000 // max(speakers, 1))


def _asnorm_chunk(
    raw: npt.NDArray[np.float64],
    probes: npt.NDArray[np.float64],
    prints: npt.NDArray[np.float64],
    probe_speaker: npt.NDArray[np.int64],
    print_speaker: npt.NDArray[np.int64],
    cohort: npt.NDArray[np.float64],
    top_n: int,
) -> npt.NDArray[np.float64]:
    """AS-norm (:func:`speakerdb.scoring.as_norm`) of m trials: raw (m,) cosines, probes and
    prints (m, D) unit rows, the two sides' speakers (m,) as rows of ``cohort`` (S, D), the
    speakers' voiceprints. Each trial's cohort is every voiceprint but those two speakers'
    (as at verify time, where the claimed speaker is left out; leaving the probe's speaker
    out too is the case of an impostor who is not enrolled, the harder one)."""
    rows = np.arange(raw.size)
    n = max(1, min(top_n, cohort.shape[0] - 2))
    sides = []
    for side in (prints, probes):
        sims = side @ cohort.T
        sims[rows, probe_speaker] = -np.inf
        sims[rows, print_speaker] = -np.inf
        top = -np.partition(-sims, n - 1, axis=1)[:, :n]
        sides.append((top.mean(axis=1), np.maximum(top.std(axis=1), 1e-6)))
    (mu_e, sd_e), (mu_t, sd_t) = sides
    z: npt.NDArray[np.float64] = 0.5 * ((raw - mu_e) / sd_e + (raw - mu_t) / sd_t)
    return z


def _nontarget_pairs(
    index: npt.NDArray[np.int64], speakers: int, limit: int, rng: np.random.Generator
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(recording, other speaker) of the different-speaker trials: every pair when there are
    at most ``limit``, else ``limit`` drawn at random (without building the full list)."""
    n = index.size
    if n * max(speakers - 1, 0) <= limit:
        rec, other = np.nonzero(index[:, None] != np.arange(speakers)[None, :])
        return rec.astype(np.int64), other.astype(np.int64)
    pairs: set[tuple[int, int]] = set()
    while len(pairs) < limit:
        rec = rng.integers(0, n, size=2 * limit)
        other = rng.integers(0, speakers, size=2 * limit)
        for r, o in zip(
            rec[index[rec] != other].tolist(), other[index[rec] != other].tolist(), strict=True
        ):
            pairs.add((r, o))
            if len(pairs) == limit:
                break
    drawn = np.array(sorted(pairs), dtype=np.int64)
    return drawn[:, 0], drawn[:, 1]


def check_enough(trials: EnrollmentTrials) -> None:
    """Raise UsageError unless there are enough speakers to self-calibrate (the minimums
    :data:`MIN_SELF_SPEAKERS` and :data:`MIN_SELF_VOICEPRINTS`), saying how many are
    missing."""
    if trials.eligible >= MIN_SELF_SPEAKERS and trials.speakers >= MIN_SELF_VOICEPRINTS:
        return
    raise UsageError(
        f"too few enrollments to self-calibrate: {trials.eligible} speakers with 2+ distinct "
        f"recordings (need {MIN_SELF_SPEAKERS}) and {trials.speakers} speakers in all (need "
        f"{MIN_SELF_VOICEPRINTS})"
        + (f"; {trials.duplicates} near-duplicate recordings dropped" if trials.duplicates else "")
        + (
            f"; {trials.unknown_quality} recordings without a measured bandwidth (enrolled "
            "before schema 0004) skipped"
            if trials.unknown_quality
            else ""
        )
    )


def shrink_toward(fitted: Calibration, prior: Calibration | None, weight: float) -> Calibration:
    """``weight * fitted + (1 - weight) * prior`` in weights and bias (features by name; a
    feature the prior lacks counts 0 there). ``fitted``'s input ranges apply; the FAR table
    is left to the caller (it depends on trials). None prior: ``fitted`` unchanged."""
    if prior is None or weight >= 1.0:
        return fitted
    theirs = dict(zip(prior.features, prior.weights, strict=True))
    weights = tuple(
        weight * w + (1.0 - weight) * theirs.get(name, 0.0)
        for name, w in zip(fitted.features, fitted.weights, strict=True)
    )
    missing = [f for f in prior.features if f not in fitted.features]
    if missing:
        raise UsageError(f"cannot shrink toward a calibration with other features: {missing}")
    bias = weight * fitted.bias + (1.0 - weight) * prior.bias
    return replace(fitted, weights=weights, bias=bias)


def far_table(
    calibration: Calibration, trials: EnrollmentTrials
) -> tuple[tuple[float, float], ...]:
    """(far, llr threshold) at :data:`FAR_GRID`, measured on the trials' different-speaker
    trials with every probe speaker weighing the same."""
    llr = calibration.llrs(trials.inputs)
    non = trials.labels == 0
    weights = trials.weights()[non]
    order = np.argsort(llr[non])[::-1]
    ranked = llr[non][order]
    share = np.cumsum(weights[order]) / weights.sum()
    out = []
    for far in FAR_GRID:
        over = np.flatnonzero(share > far + 1e-12)
        value = ranked[-1] if over.size == 0 else np.nextafter(ranked[over[0]], np.inf)
        out.append((far, float(value)))
    return tuple(out)


def fit_self_calibration(
    trials: EnrollmentTrials,
    *,
    model: Mapping[str, Any],
    prior: Calibration | None,
    p_fit: float,
    shrink_speakers: float = SHRINK_SPEAKERS,
    state: str = "",
    form: str | None = None,
    validate: bool | None = None,
) -> Calibration:
    """The self-calibration of these trials, its FAR table measured on the trials.

    form "full": every weight of the prior's features (the default ones without a prior)
    fitted anew, then shrunk toward ``prior`` (see the module). form "affine": only a scale
    and an offset of the prior's LLRs, ``llr = a * llr_prior + c`` (two parameters instead of
    five: the prior's quality terms kept, its confidence re-fitted in-domain), shrunk toward
    a = 1, c = 0; without a prior, "full". form "asnorm": trials built with
    ``asnorm_top_n`` (z-scores), a logistic calibration of the z-score alone, unshrunk.
    None: :data:`SELF_FORM`. validate (affine form; None: :data:`SHRINK_VALIDATED`): the
    weight on the fit is the one the database's own speakers choose by held-out validation
    (:func:`speakerdb.enroll._shrinkage.validated_weight`), at most ``n / (n + k)``; False:
    ``n / (n + k)`` itself. state: a digest of the
    enrollments it was fitted on (stored as the fit's ``trials_sha256``). Raises UsageError
    below the minimums (:func:`check_enough`)."""
    check_enough(trials)
    form = SELF_FORM if form is None else form
    validate = SHRINK_VALIDATED if validate is None else validate
    lam = trials.eligible / (trials.eligible + shrink_speakers) if prior is not None else 1.0
    how = f"n / (n + {shrink_speakers:g})"
    if form == "asnorm":
        # No bundled calibration of z-scores to shrink toward: the fit alone, of the
        # z-score alone (its own normalisation stands in for the quality terms).
        lam = 1.0
        fitted = fit_calibration(
            TrialQuality.of(trials.inputs.score, 1.0, 1.0),
            trials.labels,
            model=model,
            features=("score",),
            p_fit=p_fit,
            groups=trials.groups,
            clip_inputs=False,
            score="asnorm",
        )
        shrunk = fitted
    elif form == "affine" and prior is not None:
        if validate and trials.prints is not None:
            chosen = validated_weight(
                prior.llrs(trials.inputs), trials.labels, trials.groups, trials.prints, p_fit
            )
            how = f"chosen by speaker-held-out validation ({chosen:.2f}), at most {how}"
            lam = min(lam, chosen)
        shrunk = _affine(trials, prior, model, p_fit, lam)
        fitted = shrunk
    elif form in ("full", "affine"):
        features: dict[str, Any] = {} if prior is None else {"features": prior.features}
        fitted = fit_calibration(
            trials.inputs,
            trials.labels,
            model=model,
            p_fit=p_fit,
            groups=trials.groups,
            **features,
        )
        shrunk = shrink_toward(fitted, prior, lam)
    else:
        raise UsageError(
            f"self-calibration form must be 'full', 'affine' or 'asnorm', not {form!r}"
        )
    summary = FitSummary(
        p_fit=p_fit,
        regularisation=fitted.fit.regularisation,
        target_trials=trials.target_trials,
        nontarget_trials=trials.nontarget_trials,
        trials_sha256=hashlib.sha256(state.encode()).hexdigest() if state else None,
        # Now, to the millisecond: answers name the fit by this date, and an auto re-fit may
        # follow the previous fit within a second. (The affine form starts from a copy of the
        # prior, whose own date must not carry over.)
        created=datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
        groups={"enrollments": (trials.target_trials, trials.nontarget_trials)},
        note=(
            f"self-calibration ({form}) on this database's enrollments: {trials.describe()}; "
            f"weight {lam:.2f} on the fit, {1 - lam:.2f} on the bundled calibration ({how})"
        ),
    )
    shrunk = replace(shrunk, fit=summary)
    return replace(shrunk, far_thresholds=far_table(shrunk, trials))


def _affine(
    trials: EnrollmentTrials,
    prior: Calibration,
    model: Mapping[str, Any],
    p_fit: float,
    lam: float,
) -> Calibration:
    """``a * prior + c`` fitted on the trials (logistic regression on the prior's LLR alone),
    shrunk toward the prior (a -> 1, c -> 0) with weight ``lam`` on the fit, written back as
    a calibration of the prior's features and input ranges (the composition is exact)."""
    z = prior.llrs(trials.inputs)
    one = fit_calibration(
        TrialQuality.of(z, 1.0, 1.0),
        trials.labels,
        model=model,
        features=("score",),
        p_fit=p_fit,
        groups=trials.groups,
        clip_inputs=False,
    )
    scale = lam * one.weights[0] + (1.0 - lam)
    offset = lam * one.bias
    return replace(
        prior,
        model=dict(model),
        weights=tuple(scale * w for w in prior.weights),
        bias=scale * prior.bias + offset,
    )
