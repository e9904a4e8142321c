"""Does a calibration transfer to data it never saw? Leave-one-set-out over the four
development sets (librispeech, vctk, arabic-commands, telephone), bundled GE2E model.

For each set in turn, a calibration (speakerdb._calibration) is fitted on the OTHER three and
measured on it, against today's fixed cosine threshold 0.82. Trials of every set:

- pairs: the set's trials.txt (file against file);
- enroll: probes against voiceprints of 1, 3 and 5 recordings (normalised mean, as the store
  makes them), drawn with a fixed seed, a probe never in its own voiceprint;
- crop-pairs / crop-enroll (fitting only, and reported for the left-out set as an extra
  row): random 0.75-4 s crops of the set's longer recordings, as pairs and as probes against
  3-recording voiceprints, so that a fit sees the short durations its quality terms span.

Every figure of a calibrated row is computed on its LLRs (a calibration with quality terms can
reorder trials); the default decision is llr >= ln 99 (p_target 0.01, unit costs). The bundled
calibration is then fitted on all four sets and its figures are reported per set (in-sample).
Last, the self-calibration rows: on each left-out set, a database of half its speakers
calibrates itself (the library's default form and shrinkage) toward that set's LOO calibration,
and both are measured on the other half (benchmarks/self_calibration.py's protocol).

Embeddings are computed once and cached (keyed by the file's sha256, the crop and the model)
under $XDG_CACHE_HOME/speakerdb/benchmarks (or --cache), never in the repository.

    python benchmarks/calibration_transfer.py [--draws 10] [--features a,b,...] [--p-fit P]
        [--no-crops] [--strict] [--write-bundled speakerdb/calibrations/ge2e.json]
        [--self-splits 20]
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA, emit
from speakerdb import _calibration as cal
from speakerdb import scoring
from speakerdb.enroll._evaluation import calibration_figures

SETS = ("librispeech", "vctk", "arabic-commands", "telephone")
FIXED_THRESHOLD = 0.82  # today's default (speakerdb.model._registry.GE2E_DEFAULT_THRESHOLD)
ENROLL_SIZES = (1, 3, 5)
CROP_SECONDS = (0.75, 4.0)  # log-uniform crop lengths
CROPS_PER_RECORDING = 2
CROP_ENROLL_SIZE = 3
EVAL_KINDS = ("pairs", "enroll")
FIT_KINDS = ("pairs", "enroll", "crop-pairs", "crop-enroll")
PRIORS = (0.5, 0.1, 0.05, 0.01, 0.001)
GOALS = "actDCF <= 1.2 minDCF, Cllr - minCllr <= 0.1, FRR <= 2 EER, FAR <= 1 %"


# --- recordings and their embeddings ----------------------------------------------------------


@dataclass(frozen=True)
class Recording:
    """One embedded recording (or crop of one): (256,) unit vector and its quality."""

    set: str
    speaker: str
    key: str  # file sha256, plus ":start:length" (samples) for a crop
    parent: str  # key of the whole recording (itself for a whole file)
    vector: np.ndarray
    speech_seconds: float
    bandwidth_hz: float


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "speakerdb" / "benchmarks"


class EmbeddingCache:
    """vector + speech seconds + bandwidth per key, in one JSON-lines file per model. The
    bandwidth is the engine's (EmbeddedAudio.bandwidth_hz, measured on the decoded 16 kHz
    audio, as the database stores it); files named ``calibration-*`` held bandwidths at the
    files' own rates and are not read."""

    def __init__(self, folder: Path, model_label: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"calibration16k-{model_label.replace(':', '-')}.jsonl"
        self.rows: dict[str, dict] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    self.rows[row["key"]] = row

    def add(self, rows: Iterable[dict]) -> None:
        with self.path.open("a") as fh:
            for row in rows:
                self.rows[row["key"]] = row
                fh.write(json.dumps(row) + "\n")


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_manifest(name: str) -> list[tuple[Path, str]]:
    base = DATA / name
    rows = []
    for line in (base / "manifest.jsonl").read_text().splitlines():
        if line.strip():
            item = json.loads(line)
            rows.append((base / item["audio_filepath"], str(item["label"])))
    return rows


def crop_plan(name: str, files: list[tuple[Path, str, str]]) -> list[tuple[str, int, int]]:
    """(file sha, start, length in samples) of the crops of one set, from a fixed seed: for
    each recording at least twice as long as a drawn crop length, a random stretch of it."""
    rng = np.random.default_rng([7, SETS.index(name)])
    plan = []
    for path, _speaker, sha in files:
        info = sf.info(str(path))
        for _ in range(CROPS_PER_RECORDING):
            seconds = math.exp(rng.uniform(*np.log(CROP_SECONDS)))
            length = round(seconds * info.samplerate)
            start = int(rng.integers(0, max(1, info.frames - length)))
            if info.frames >= 2 * length:
                plan.append((sha, start, length))
    return plan


def embed_set(name: str, model, cache: EmbeddingCache, crops: bool) -> list[Recording]:
    """Every recording of a set (and its crops), embedded through the cache."""
    files = [(p, s, file_sha256(p)) for p, s in read_manifest(name)]
    by_sha = {sha: (p, s) for p, s, sha in files}
    jobs: list[tuple[str, str, str, Path, tuple[int, int] | None]] = [
        (sha, sha, speaker, path, None) for path, speaker, sha in files
    ]
    if crops:
        for sha, start, length in crop_plan(name, files):
            path, speaker = by_sha[sha]
            jobs.append((f"{sha}:{start}:{length}", sha, speaker, path, (start, length)))
    missing = [j for j in jobs if j[0] not in cache.rows]
    # One embed call per sample rate (arrays need theirs); whole files go by path.
    whole = [j for j in missing if j[4] is None]
    if whole:
        results = model.embed([str(j[3]) for j in whole])
        cache.add(_rows(whole, results))
    parts = [j for j in missing if j[4] is not None]
    for rate, group in itertools.groupby(
        sorted(parts, key=lambda j: sf.info(str(j[3])).samplerate),
        key=lambda j: sf.info(str(j[3])).samplerate,
    ):
        group = list(group)
        arrays = [_crop(j[3], j[4]) for j in group]
        results = model.embed(arrays, sample_rate=rate)
        cache.add(_rows(group, results))
    out = []
    for key, parent, speaker, _path, _crop_spec in jobs:
        row = cache.rows[key]
        if row["vector"] is None:  # a crop with too little speech: not a trial
            continue
        out.append(
            Recording(
                name,
                speaker,
                key,
                parent,
                np.asarray(row["vector"], dtype=np.float64),
                float(row["speech_seconds"]),
                float(row["bandwidth_hz"]),
            )
        )
    return out


def _crop(path: Path, spec: tuple[int, int] | None) -> np.ndarray:
    samples, _rate = sf.read(str(path), dtype="float32", always_2d=True)
    mono = samples.mean(axis=1)
    if spec is None:
        return mono
    start, length = spec
    return mono[start : start + length]


def _rows(jobs, results) -> list[dict]:
    rows = []
    for job, result in zip(jobs, results, strict=True):
        if result.vector is None and not job[4]:
            raise SystemExit(f"cannot embed {job[3]}: {result.error}")
        rows.append(
            {
                "key": job[0],
                "vector": None if result.vector is None else result.vector.tolist(),
                "speech_seconds": result.speech_seconds,
                "bandwidth_hz": result.bandwidth_hz,
            }
        )
    return rows


# --- trials -------------------------------------------------------------------------------------


@dataclass
class TrialGroup:
    """The trials of one (set, kind): calibration inputs, labels, the speakers involved and
    one canonical text line per trial (hashed into the fit's trials_sha256)."""

    set: str
    kind: str
    inputs: cal.TrialQuality
    labels: np.ndarray
    speakers: list[frozenset[str]]
    lines: list[str]

    @property
    def name(self) -> str:
        return f"{self.set}/{self.kind}"


def _pair_group(name: str, kind: str, pairs: list[tuple[Recording, Recording]]) -> TrialGroup:
    a = np.array([p[0].vector for p in pairs])
    b = np.array([p[1].vector for p in pairs])
    scores = np.einsum("ij,ij->i", a, b)  # unit vectors: the cosine
    inputs = cal.TrialQuality.of(
        scores,
        [p[1].speech_seconds for p in pairs],
        [p[0].speech_seconds for p in pairs],
        1,
        [p[1].bandwidth_hz for p in pairs],
        [p[0].bandwidth_hz for p in pairs],
    )
    labels = np.array([int(x.speaker == y.speaker) for x, y in pairs])
    return TrialGroup(
        name,
        kind,
        inputs,
        labels,
        [frozenset((x.speaker, y.speaker)) for x, y in pairs],
        [f"{kind} {lab} {x.key} {y.key}" for (x, y), lab in zip(pairs, labels, strict=True)],
    )


def pair_trials(name: str, recordings: list[Recording]) -> TrialGroup:
    """The set's own trials.txt."""
    by_sha = {r.key: r for r in recordings if r.key == r.parent}
    base = DATA / name
    pairs = []
    for line in (base / "trials.txt").read_text().splitlines():
        label, a, b = line.split()
        ra, rb = by_sha[file_sha256(base / a)], by_sha[file_sha256(base / b)]
        assert int(label) == int(ra.speaker == rb.speaker), line
        pairs.append((ra, rb))
    return _pair_group(name, "pairs", pairs)


def crop_pair_trials(name: str, recordings: list[Recording]) -> TrialGroup:
    """Every pair of crops of two different recordings."""
    crops = [r for r in recordings if r.key != r.parent]
    pairs = [(x, y) for x, y in itertools.combinations(crops, 2) if x.parent != y.parent]
    return _pair_group(name, "crop-pairs", pairs)


def enroll_trials(
    name: str,
    recordings: list[Recording],
    kind: str,
    sizes: tuple[int, ...],
    draws: int,
    probes_from_crops: bool,
) -> TrialGroup:
    """Probes against voiceprints of ``size`` whole recordings (normalised mean), ``draws``
    random voiceprints per speaker and size (fixed seed). A probe is never one of its
    voiceprint's recordings, nor a crop of one."""
    whole = [r for r in recordings if r.key == r.parent]
    probes = [r for r in recordings if (r.key != r.parent) == probes_from_crops]
    probe_vectors = np.array([p.vector for p in probes])
    rng = np.random.default_rng([11, SETS.index(name), int(probes_from_crops)])
    speakers = sorted({r.speaker for r in whole})
    columns: dict[str, list] = {k: [] for k in ("s", "ps", "es", "n", "pb", "eb", "y", "spk")}
    lines: list[str] = []
    for size in sizes:
        for _ in range(draws):
            for speaker in speakers:
                own = [r for r in whole if r.speaker == speaker]
                chosen = [own[i] for i in rng.permutation(len(own))[:size]]
                centroid = np.mean([r.vector for r in chosen], axis=0)
                centroid /= np.linalg.norm(centroid)
                side = cal.enrollment_quality(
                    [r.speech_seconds for r in chosen], [r.bandwidth_hz for r in chosen]
                )
                used = {r.key for r in chosen}
                keep = np.array([p.parent not in used for p in probes])
                scores = probe_vectors[keep] @ centroid
                for probe, score in zip(itertools.compress(probes, keep), scores, strict=True):
                    label = int(probe.speaker == speaker)
                    columns["s"].append(score)
                    columns["ps"].append(probe.speech_seconds)
                    columns["es"].append(side.speech_seconds)
                    columns["n"].append(side.count)
                    columns["pb"].append(probe.bandwidth_hz)
                    columns["eb"].append(side.bandwidth_hz)
                    columns["y"].append(label)
                    columns["spk"].append(frozenset((speaker, probe.speaker)))
                    lines.append(f"{kind} {label} {'+'.join(sorted(used))} {probe.key}")
    inputs = cal.TrialQuality.of(
        columns["s"], columns["ps"], columns["es"], columns["n"], columns["pb"], columns["eb"]
    )
    return TrialGroup(name, kind, inputs, np.array(columns["y"]), columns["spk"], lines)


def build_groups(
    name: str, recordings: list[Recording], draws: int, crops: bool
) -> dict[str, TrialGroup]:
    groups = {
        "pairs": pair_trials(name, recordings),
        "enroll": enroll_trials(name, recordings, "enroll", ENROLL_SIZES, draws, False),
    }
    if crops and any(r.key != r.parent for r in recordings):
        groups["crop-pairs"] = crop_pair_trials(name, recordings)
        groups["crop-enroll"] = enroll_trials(
            name, recordings, "crop-enroll", (CROP_ENROLL_SIZE,), draws, True
        )
    return {k: g for k, g in groups.items() if g.labels.size}


# --- fitting and the leave-one-set-out protocol ----------------------------------------------


def fit_on(
    groups: list[TrialGroup],
    features: tuple[str, ...],
    p_fit: float,
    model: Mapping,
    note: str,
    regularisation: float = cal.DEFAULT_REGULARISATION,
) -> cal.Calibration:
    """One calibration fitted on exactly ``groups`` (each weighing the same)."""
    inputs = cal.TrialQuality.concatenate([g.inputs for g in groups])
    labels = np.concatenate([g.labels for g in groups])
    names = np.concatenate([[g.name] * g.labels.size for g in groups])
    digest = hashlib.sha256()
    for g in groups:
        for line in g.lines:
            digest.update(line.encode() + b"\n")
    return cal.fit_calibration(
        inputs,
        labels,
        model=model,
        features=features,
        p_fit=p_fit,
        groups=names,
        regularisation=regularisation,
        trials_sha256=digest.hexdigest(),
        note=note,
    )


def training_groups(
    all_groups: dict[str, dict[str, TrialGroup]], held_out: str, strict: bool
) -> list[TrialGroup]:
    """The fit data of the fold that measures ``held_out``: every group of the other sets,
    never one of ``held_out``'s. strict: also drop every trial involving a speaker of the
    held-out set (the telephone set is LibriSpeech and VCTK speech through a phone line)."""
    out = []
    held_speakers: set[str] = set()
    for g in all_groups[held_out].values():
        for pair in g.speakers:
            held_speakers |= pair
    for name, groups in all_groups.items():
        if name == held_out:
            continue
        for g in groups.values():
            if strict:
                keep = np.array([not (pair & held_speakers) for pair in g.speakers])
                if not keep.any() or g.labels[keep].min() == g.labels[keep].max():
                    continue
                g = TrialGroup(
                    g.set,
                    g.kind,
                    g.inputs.subset(keep),
                    g.labels[keep],
                    [p for p, k in zip(g.speakers, keep, strict=True) if k],
                    [x for x, k in zip(g.lines, keep, strict=True) if k],
                )
            out.append(g)
    assert all(g.set != held_out for g in out)
    return out


def leave_one_set_out(
    all_groups: dict[str, dict[str, TrialGroup]],
    fit: Callable[[list[TrialGroup]], cal.Calibration],
    strict: bool = False,
) -> dict[str, cal.Calibration]:
    """For each set, the calibration fitted without it (by ``fit`` on :func:`training_groups`)."""
    return {held_out: fit(training_groups(all_groups, held_out, strict)) for held_out in all_groups}


# --- figures ------------------------------------------------------------------------------------


def figures_fixed(group: TrialGroup, threshold: float = FIXED_THRESHOLD) -> dict[str, float]:
    """Today's rule, cosine >= 0.82: it has no LLR, so no Cllr; minCllr of the cosines."""
    s, y = group.inputs.score, group.labels
    tgt, non = s[y == 1], s[y == 0]
    return {
        "eer": scoring.eer(tgt, non)[0],
        "min_dcf": scoring.min_dcf(tgt, non)[0],
        "act_dcf": scoring.act_dcf(tgt, non, threshold=threshold),
        "far": float(np.mean(non >= threshold)),
        "frr": float(np.mean(tgt < threshold)),
        "min_cllr": scoring.min_cllr(tgt, non),
    }


def figures_calibrated(
    group: TrialGroup, calibration: cal.Calibration, far_target: float = 0.01
) -> dict[str, float]:
    """Every figure on the LLRs (speakerdb.enroll._evaluation.calibration_figures at the
    default operating point), plus the DET point at 1 % FAR and FAR/FRR at the alternative
    threshold chosen at ``far_target`` on the fit data."""
    llr, y = calibration.llrs(group.inputs), group.labels
    tgt, non = llr[y == 1], llr[y == 0]
    op = cal.DEFAULT_OPERATING_POINT
    out = calibration_figures(tgt, non, op.p_target, op.c_miss, op.c_fa).to_dict()
    det = scoring.threshold_at_far(non, far_target)
    at_far = calibration.threshold_at_far(far_target)
    out.update(
        frr_at_far_1pct_det=float(np.mean(tgt < det)),
        far_at_fit_far_threshold=float(np.mean(non >= at_far)),
        frr_at_fit_far_threshold=float(np.mean(tgt < at_far)),
    )
    return out


def goals(f: dict[str, float]) -> dict[str, bool | None]:
    """The issue's goals for one row; None where a figure does not exist (no LLR)."""
    return {
        "act_dcf": f["act_dcf"] <= 1.2 * f["min_dcf"] + 1e-12,
        "cllr_gap": f["cllr"] - f["min_cllr"] <= 0.1 if "cllr" in f else None,
        "frr": f["frr"] <= 2 * f["eer"] + 1e-12,
        "far": f["far"] <= 0.01,
    }


def table(rows: list[tuple[str, str, str, dict[str, float]]]) -> list[str]:
    head = (
        f"{'set':<16}{'trials':<12}{'system':<11}{'EER':>7}{'minDCF':>8}{'actDCF':>8}"
        f"{'FAR':>7}{'FRR':>8}{'Cllr':>7}{'minCllr':>8}  {'FRR@1%FAR':>9}  goals"
    )
    lines = [head, "-" * (len(head) + 40)]
    for name, kind, system, f in rows:
        cllr = f"{f['cllr']:7.3f}" if "cllr" in f else f"{'-':>7}"
        det = f"{f['frr_at_far_1pct_det']:9.2%}" if "frr_at_far_1pct_det" in f else f"{'':>9}"
        marks = {True: "+", False: "-", None: "n/a"}
        met = " ".join(f"{k}{marks[ok]}" for k, ok in goals(f).items())
        if "frr_at_far_1pct_det" in f and f["frr_at_far_1pct_det"] > 2 * f["eer"]:
            met += "  (FAR<=1% & FRR<=2EER: not on this DET)"
        lines.append(
            f"{name:<16}{kind:<12}{system:<11}{f['eer']:7.2%}{f['min_dcf']:8.3f}"
            f"{f['act_dcf']:8.3f}{f['far']:7.2%}{f['frr']:8.2%}{cllr}{f['min_cllr']:8.3f}  "
            f"{det}  {met}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=10, help="voiceprints per speaker and size")
    parser.add_argument("--features", default=",".join(cal.DEFAULT_FEATURES))
    parser.add_argument("--p-fit", type=float, default=cal.DEFAULT_OPERATING_POINT.p_target)
    parser.add_argument("--regularisation", type=float, default=cal.DEFAULT_REGULARISATION)
    parser.add_argument("--no-crops", action="store_true", help="fit without cropped trials")
    parser.add_argument("--strict", action="store_true", help="speaker-disjoint folds too")
    parser.add_argument("--cache", type=Path, default=default_cache())
    parser.add_argument("--write-bundled", type=Path, help="write the all-sets calibration")
    parser.add_argument(
        "--self-splits",
        type=int,
        default=20,
        help="random halves of each left-out set for the self-calibration rows (0: none)",
    )
    args = parser.parse_args()
    features = tuple(f for f in args.features.split(",") if f)

    import speakerdb

    model = speakerdb.load_model(device="cpu")
    identity = {
        "name": model.identity.name,
        "weights_sha256": model.identity.weights_sha256,
        "dimension": model.identity.dimension,
    }
    cache = EmbeddingCache(args.cache, model.identity.label)
    all_groups = {
        name: build_groups(
            name, embed_set(name, model, cache, not args.no_crops), args.draws, not args.no_crops
        )
        for name in SETS
    }

    def fit(groups: list[TrialGroup]) -> cal.Calibration:
        return fit_on(groups, features, args.p_fit, identity, "", args.regularisation)

    folds = leave_one_set_out(all_groups, fit)
    strict_folds = leave_one_set_out(all_groups, fit, strict=True) if args.strict else {}
    bundled = fit_on(
        [g for groups in all_groups.values() for g in groups.values()],
        features,
        args.p_fit,
        identity,
        "bundled: librispeech, vctk, arabic-commands, telephone (benchmarks/"
        "calibration_transfer.py)",
        args.regularisation,
    )

    rows: list[tuple[str, str, str, dict[str, float]]] = []
    bundled_rows: list[tuple[str, str, str, dict[str, float]]] = []
    prior_rows: list[str] = []
    record: dict = {
        "benchmark": "calibration_transfer",
        "features": list(features),
        "p_fit": args.p_fit,
        "crops": not args.no_crops,
        "draws": args.draws,
        "threshold_llr": cal.DEFAULT_OPERATING_POINT.threshold,
        "fixed_threshold": FIXED_THRESHOLD,
        "held_out": {},
        "bundled_in_sample": {},
        "bundled": bundled.to_dict(),
    }
    for name in SETS:
        kinds = [k for k in (*EVAL_KINDS, "crop-enroll") if k in all_groups[name]]
        record["held_out"][name] = {}
        record["bundled_in_sample"][name] = {}
        for kind in kinds:
            group = all_groups[name][kind]
            fixed = figures_fixed(group)
            calibrated = figures_calibrated(group, folds[name])
            entry = {
                "trials": int(group.labels.size),
                "targets": int(group.labels.sum()),
                "fixed_0.82": fixed,
                "calibrated": calibrated,
                "goals": goals(calibrated),
            }
            rows.append((name, kind, "cos 0.82", fixed))
            rows.append((name, kind, "LOO cal", calibrated))
            if name in strict_folds:
                strict = figures_calibrated(group, strict_folds[name])
                entry["calibrated_strict"] = strict
                rows.append((name, kind, "LOO strict", strict))
            llr = folds[name].llrs(group.inputs)
            tgt, non = llr[group.labels == 1], llr[group.labels == 0]
            entry["by_prior"] = {}
            cells = []
            for p_target in PRIORS:
                t = scoring.bayes_threshold(p_target)
                far, frr = float(np.mean(non >= t)), float(np.mean(tgt < t))
                entry["by_prior"][str(p_target)] = {"threshold": t, "far": far, "frr": frr}
                cells.append(f"{far:6.2%} {frr:6.2%}")
            prior_rows.append(f"{name:<16}{kind:<12}" + "  ".join(cells))
            record["held_out"][name][kind] = entry
            inside = figures_calibrated(group, bundled)
            record["bundled_in_sample"][name][kind] = inside
            bundled_rows.append((name, kind, "bundled", inside))
    lines = [
        f"leave-one-set-out: features {', '.join(features)}; fitted at p {args.p_fit}; "
        f"decision llr >= {cal.DEFAULT_OPERATING_POINT.threshold:.3f} (p_target 0.01, unit "
        f"costs); crops {'on' if not args.no_crops else 'off'}; {args.draws} draws",
        f"goals per row (+ met, - not): {GOALS}",
        *table(rows),
        "",
        "left-out sets, FAR / FRR of the LOO calibration at the Bayes threshold of other priors "
        "(unit costs):",
        f"{'':<28}"
        + "  ".join(f"{f'p={p:g} (llr>={scoring.bayes_threshold(p):.2f})':<13}" for p in PRIORS),
        *prior_rows,
        "",
        "bundled calibration (fitted on all four sets; IN-SAMPLE figures):",
        *table(bundled_rows),
        "",
        "bundled weights: "
        + ", ".join(f"{n} {w:+.3f}" for n, w in zip(bundled.features, bundled.weights, strict=True))
        + f", bias {bundled.bias:+.3f}",
    ]
    for name, fold in folds.items():
        lines.append(
            f"fold without {name}: "
            + ", ".join(f"{n} {w:+.3f}" for n, w in zip(fold.features, fold.weights, strict=True))
            + f", bias {fold.bias:+.3f}"
        )
    if args.self_splits:
        # The database's own calibration on each left-out set, shrunk toward that set's LOO
        # calibration (a prior that never saw the set): half the speakers enrolled, the
        # other half measured (benchmarks/self_calibration.py's protocol).
        from self_calibration import held_out_self_rows

        lines += [
            "",
            f"self-calibration on each left-out set ({args.self_splits} random halves of its "
            "speakers, 3 recordings each, shrunk toward the LOO calibration; measured on the "
            "other half at llr >= ln 99): pairs FAR / FRR, voiceprints of 2-3 FAR / genuine",
        ]
        record["self_calibration"] = {}
        for name in SETS:
            recs = [r for r in embed_set(name, model, cache, False) if r.key == r.parent]
            figures = held_out_self_rows(name, recs, folds[name], identity, args.self_splits)
            record["self_calibration"][name] = figures
            for label, f in (("LOO cal", figures["prior"]), ("LOO cal + self", figures["self"])):
                lines.append(
                    f"{name:<16}{label:<16}pairs {f['pairs_far']:6.2%} / {f['pairs_frr']:6.1%}"
                    f"   vp {f['vp_far']:6.2%} / {1 - f['vp_frr']:6.1%}"
                )
    if args.write_bundled:
        args.write_bundled.parent.mkdir(parents=True, exist_ok=True)
        args.write_bundled.write_text(json.dumps(bundled.to_dict(), indent=1) + "\n")
        lines.append(f"wrote {args.write_bundled}")
    emit(lines, record)


if __name__ == "__main__":
    main()
