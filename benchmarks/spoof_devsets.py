"""The countermeasure on the development sets: raw and calibrated, held out set by set.

Scores bona fide recordings of every development set (LibriSpeech, VCTK, 8 kHz telephone,
Arabic keywords; a fixed subsample of the larger ones) and every attack of ``spoof/``
(Griffin-Lim and mel-inversion copies, their phone-line versions, flite TTS) with an AASIST
checkpoint, then fits the spoof calibration (:mod:`speakerdb._spoof_calibration`) leaving
one set out at a time: each set's LLRs and decisions come from a calibration (and an
operating threshold) fitted without that set. Reported, held out: spoof-EER of each attack
kind against all bona fide recordings, the share of each attack kind detected and of each
bona fide set flagged at the chosen threshold; beside it the raw score's figures (bona fide
minus spoof logit < 0 = spoof, the original's reading).

Scores are cached per (weights, file) under /tmp/speakerdb-spoof-cache, so a second run
takes seconds; the first takes ~5-8 min on 2 shared cores.

    python benchmarks/spoof_devsets.py --model ../shared/models/aasist/AASIST.pth
    python benchmarks/spoof_devsets.py --model ... --write-bundled   # refit the bundled file
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA, ROOT, emit

CACHE = Path("/tmp/speakerdb-spoof-cache")
SUBSAMPLE = {"librispeech-singles": 40, "telephone": 60, "arabic-commands": 24}
"""Files taken (every k-th, fixed) from the larger bona fide sets to keep the run short."""


def _rows(folder: str, manifest: str = "manifest.jsonl") -> list[Path]:
    base = DATA / folder
    return [
        base / json.loads(line)["audio_filepath"]
        for line in (base / manifest).read_text().splitlines()
        if line.strip()
    ]


def _every(paths: list[Path], count: int) -> list[Path]:
    step = max(1, len(paths) // count)
    return paths[::step][:count]


def dev_items() -> list[tuple[Path, str, bool]]:
    """(path, set, is_spoof): bona fide sets named by corpus, attacks by kind."""
    items: list[tuple[Path, str, bool]] = []
    seen: set[Path] = set()
    bona = {
        "librispeech": _rows("librispeech"),
        "librispeech-singles": _every(
            _rows("librispeech", "singles.jsonl"), SUBSAMPLE["librispeech-singles"]
        ),
        "vctk": _rows("vctk"),
        "telephone": _every(_rows("telephone"), SUBSAMPLE["telephone"]),
        "arabic-commands": _every(_rows("arabic-commands"), SUBSAMPLE["arabic-commands"]),
    }
    for name, paths in bona.items():
        group = "librispeech" if name.startswith("librispeech") else name
        for p in paths:
            if p not in seen:
                seen.add(p)
                items.append((p, group, False))
    for line in (DATA / "spoof" / "manifest.jsonl").read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if row["spoof"]:
            items.append(((DATA / "spoof" / row["audio_filepath"]).resolve(), row["attack"], True))
    return items


def _cache_file(weights_sha: str, path: Path) -> Path:
    key = hashlib.sha256(f"{weights_sha}:{path}:{path.stat().st_size}".encode()).hexdigest()
    return CACHE / weights_sha[:16] / f"{key[:32]}.json"


def score_all(
    model: Path, items: list[tuple[Path, str, bool]], reverse: bool = False
) -> tuple[dict, np.ndarray]:
    """(identity, (n, 3) float64 [score, llr_input, bandwidth_hz]) with the per-file cache."""
    from speakerdb import load_countermeasure

    cm = load_countermeasure(model)
    sha = cm.identity.weights_sha256
    out = np.zeros((len(items), 3))
    todo = []
    for i, (path, _, _) in enumerate(items):
        cached = _cache_file(sha, path)
        if cached.is_file():
            out[i] = json.loads(cached.read_text())
        else:
            todo.append(i)
    started = time.perf_counter()
    for n, i in enumerate(reversed(todo) if reverse else todo):
        cached = _cache_file(sha, items[i][0])
        if cached.is_file():  # another run filled it meanwhile
            out[i] = json.loads(cached.read_text())
            continue
        (r,) = cm.score([items[i][0]])
        if r.error is not None:
            raise SystemExit(f"cannot score {items[i][0]}: {r.error.message}")
        out[i] = [r.score, r.llr_input, r.bandwidth_hz]
        cached = _cache_file(sha, items[i][0])
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_text(json.dumps(out[i].tolist()))
        if n % 50 == 49:
            print(f"scored {n + 1}/{len(todo)}", file=sys.stderr)
    seconds = time.perf_counter() - started
    return {
        "label": cm.identity.label,
        "variant": cm.identity.variant,
        "weights_sha256": sha,
        "scored": len(todo),
        "seconds": seconds,
    }, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="AASIST .pth")
    parser.add_argument("--score-only", action="store_true")
    parser.add_argument("--reverse", action="store_true", help="score in reverse (a 2nd run)")
    parser.add_argument(
        "--write-bundled",
        action="store_true",
        help="write the calibration fitted on every set to speakerdb/calibrations/",
    )
    args = parser.parse_args()
    items = dev_items()
    identity, scores = score_all(args.model, items, args.reverse)
    if args.score_only:
        print(json.dumps(identity))
        return
    report(items, scores, identity, args.write_bundled)


def _eer(bona: np.ndarray, spoof: np.ndarray) -> float:
    """Equal error rate of bona fide (high) vs spoof (low) scores, in [0, 1]."""
    from speakerdb import scoring

    return float(scoring.eer(bona, spoof)[0])


def report(
    items: list[tuple[Path, str, bool]], scores: np.ndarray, identity: dict, write: bool
) -> None:
    import soundfile as sf

    from speakerdb._spoof_calibration import fit_spoof_calibration
    from speakerdb.model._countermeasure import MIN_COUNTERMEASURE_SECONDS

    seconds = np.array([sf.info(str(path)).duration for path, _, _ in items])
    short = seconds < MIN_COUNTERMEASURE_SECONDS
    out_of_domain = {
        name: round(float(np.mean(scores[short & (groups_all == name), 1] < 0)), 4)
        for groups_all in [np.array([g for _, g, _ in items])]
        for name in sorted(set(groups_all[short].tolist()))
    }
    # Recordings shorter than the countermeasure's minimum are not judged (detected = None):
    # they neither enter the fit nor the figures below, only the raw note.
    items = [item for item, s in zip(items, short, strict=True) if not s]
    scores = scores[~short]
    groups = np.array([g for _, g, _ in items])
    bona = np.array([not s for _, _, s in items])
    raw, bandwidth = scores[:, 1], scores[:, 2]
    names = sorted(set(groups.tolist()), key=lambda n: (n in set(groups[~bona]), n))
    held_llr = np.zeros(len(items))
    held_threshold = np.zeros(len(items))
    folds = {}
    for name in names:  # leave one set out: its LLRs and threshold come from the others
        test = groups == name
        cal = fit_spoof_calibration(
            raw[~test], bandwidth[~test], bona[~test], groups[~test], countermeasure={}
        )
        held_llr[test] = cal.llrs(raw[test], bandwidth[test])
        held_threshold[test] = cal.threshold
        folds[name] = {"threshold": round(cal.threshold, 3), "weights": cal.weights}
    detected = held_llr < held_threshold
    rows = {}
    for name in names:
        m = groups == name
        row = {
            "n": int(m.sum()),
            "bona_fide": bool(bona[m][0]),
            "raw_flagged": round(float(np.mean(raw[m] < 0)), 4),
            "held_out_flagged": round(float(np.mean(detected[m])), 4),
        }
        if not bona[m][0]:
            row["raw_eer"] = round(_eer(raw[bona], raw[m]), 4)
            row["held_out_eer"] = round(_eer(held_llr[bona], held_llr[m]), 4)
        rows[name] = row
    spoofs = ~bona
    pooled = {
        "raw_eer_all_attacks": round(_eer(raw[bona], raw[spoofs]), 4),
        "held_out_eer_all_attacks": round(_eer(held_llr[bona], held_llr[spoofs]), 4),
    }
    final = fit_spoof_calibration(
        raw,
        bandwidth,
        bona,
        groups,
        countermeasure={
            "family": "aasist",
            "variant": identity["variant"],
            "weights_sha256": identity["weights_sha256"],
        },
        note="benchmarks/spoof_devsets.py: every development set",
    )
    lines = [
        f"countermeasure {identity['label']}: {len(items)} recordings "
        f"({int(bona.sum())} bona fide, {int(spoofs.sum())} attacks); scored "
        f"{identity['scored']} new in {identity['seconds']:.0f} s",
        "held out = LLR and threshold from a calibration fitted without that set; "
        "raw = bona fide minus spoof logit < 0",
        f"{'set':<20}{'n':>5}  {'raw flagged':>11}  {'held-out flagged':>16}  "
        f"{'raw EER':>8}  {'held-out EER':>12}",
    ]
    for name, row in rows.items():
        eers = f"{row['raw_eer']:>8.1%}  {row['held_out_eer']:>12.1%}" if "raw_eer" in row else ""
        kind = "bona fide" if row["bona_fide"] else "attack"
        lines.append(
            f"{name + ' (' + kind + ')':<20}{row['n']:>5}  {row['raw_flagged']:>11.1%}  "
            f"{row['held_out_flagged']:>16.1%}  {eers}"
        )
    lines.append(
        f"not judged (< {MIN_COUNTERMEASURE_SECONDS:g} s): {int(short.sum())} recordings; raw "
        f"flagged {out_of_domain}"
    )
    lines.append(
        f"all attacks: raw EER {pooled['raw_eer_all_attacks']:.1%}, held-out EER "
        f"{pooled['held_out_eer_all_attacks']:.1%}; bundled fit: weights {final.weights}, "
        f"bias {final.bias:.3f}, threshold {final.threshold:.3f}"
    )
    if write:
        target = ROOT / "speakerdb" / "calibrations" / "spoof-aasist.json"
        existing = json.loads(target.read_text()) if target.is_file() else []
        kept = [
            e
            for e in existing
            if e["countermeasure"].get("weights_sha256") != identity["weights_sha256"]
        ]
        target.write_text(json.dumps([*kept, final.to_dict()], indent=1) + "\n")
        lines.append(f"wrote {target}")
    emit(
        lines,
        {
            "benchmark": "spoof_devsets",
            "countermeasure": identity["label"],
            "sets": rows,
            **pooled,
            "not_judged": {"count": int(short.sum()), "raw_flagged": out_of_domain},
            "folds": folds,
            "bundled": final.to_dict(),
        },
    )


if __name__ == "__main__":
    main()
