"""Leave-one-set-out choice of diarization's data-chosen constants, and held-out DER.

The expensive stage (speech probabilities and window embeddings of every recording) is run
once per recording and cached under /tmp; the cheap stages (speech mask, speech windows,
clustering, turns: :func:`speakerdb.diarize._pipeline.find_turns`, the very code the
library runs) are re-run for every candidate setting. Every constant the speech mask and
the turns take from data is chosen on one development set (the setting with the lowest
speech-weighted DER there) and scored on the other; the shipped defaults are chosen on both
sets pooled, and the pyannote sample (never used for a choice) is scored with them.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from _common import DATA, ROOT

CACHE = Path("/tmp/speakerdb-diarize-cache")
SETS = {"16k": DATA / "conversations", "8k": DATA / "conversations-8k"}
PYANNOTE = ROOT / "tests" / "fixtures" / "pyannote_sample"
CACHE_VERSION = "silero-onnx-op15-confident-candidates"

# Candidate values of every data-chosen constant (offset given as onset minus a gap).
GRID: dict[str, list[Any]] = {
    "vad_onset": [0.1, 0.2, 0.3, 0.5],
    "offset_gap": [0.05, 0.15, 0.3],
    "vad_min_pause": [0.3, 0.6, 1.0],
    "vad_min_speech": [0.05, 0.1, 0.25],
    "max_pause": [1.0, 2.0, 3.0],
    "resegment": [False, True],
}


@dataclass
class Recording:
    set_name: str
    file_id: str
    reference: list[Any]
    embedded: Any  # WindowEmbeddings
    overlap: bool | None
    embed_seconds: float


def settings_grid() -> Iterator[dict[str, Any]]:
    keys = list(GRID)
    for values in itertools.product(*(GRID[k] for k in keys)):
        chosen = dict(zip(keys, values, strict=True))
        gap = chosen.pop("offset_gap")
        chosen["vad_offset"] = round(chosen["vad_onset"] - gap, 3)
        if chosen["vad_offset"] > 0:
            yield chosen


def _cache_key(path: Path, model: Any) -> str:
    st = path.stat()
    text = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{model.identity.label}|{CACHE_VERSION}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def embedded_windows(path: Path, model: Any) -> tuple[Any, float]:
    """The recording's window embeddings and speech probabilities (cached), and the seconds
    it took to compute them (0 when read from the cache)."""
    from speakerdb.diarize._stream import open_stream
    from speakerdb.diarize._windows import WindowEmbeddings, embed_windows

    CACHE.mkdir(exist_ok=True)
    cached = CACHE / f"{_cache_key(path, model)}.npz"
    if cached.is_file():
        z = np.load(cached)
        return (
            WindowEmbeddings(
                z["starts"], z["ends"], z["vectors"], z["speech"], float(z["duration"])
            ),
            float(z["seconds"]),
        )
    started = time.perf_counter()
    embedded = embed_windows(open_stream(path), model)
    seconds = time.perf_counter() - started
    np.savez(
        cached,
        starts=embedded.starts,
        ends=embedded.ends,
        vectors=embedded.vectors,
        speech=embedded.speech,
        duration=embedded.duration,
        seconds=seconds,
    )
    return embedded, seconds


def load_set(name: str, model: Any) -> list[Recording]:
    from speakerdb.diarize import read_rttm
    from speakerdb.diarize._evaluate import read_diarization_manifest

    out = []
    for entry in read_diarization_manifest(SETS[name] / "manifest.jsonl"):
        assert entry.rttm is not None
        embedded, seconds = embedded_windows(entry.audio, model)
        out.append(
            Recording(name, entry.file_id, read_rttm(entry.rttm), embedded, entry.overlap, seconds)
        )
    return out


def load_pyannote(model: Any) -> Recording:
    from speakerdb.diarize import read_rttm

    embedded, seconds = embedded_windows(PYANNOTE / "sample.wav", model)
    return Recording(
        "pyannote", "sample", read_rttm(PYANNOTE / "sample.rttm"), embedded, None, seconds
    )


_CLUSTERS: dict[str, Any] = {}
_SCORES: dict[tuple[str, str, str], tuple[Any, int]] = {}


def memoise_clustering() -> None:
    """The same windows always cluster the same: cluster each distinct window set once
    (settings of the speech mask that keep the same windows share the clustering)."""
    import speakerdb.diarize._pipeline as pipeline

    original = pipeline.cluster_windows

    def cached(vectors: Any, threshold: Any, count: Any, min_windows: int) -> Any:
        key = hashlib.sha1(vectors.tobytes()).hexdigest() + repr(
            (threshold, count.num, count.min, count.max, min_windows)
        )
        if key not in _CLUSTERS:
            _CLUSTERS[key] = original(vectors, threshold, count, min_windows=min_windows)
        return _CLUSTERS[key]

    pipeline.cluster_windows = cached  # type: ignore[assignment]


def score(recording: Recording, settings: Any) -> tuple[Any, int]:
    """(DiarizationScore, voices found) of one recording under ``settings``."""
    key = (recording.set_name, recording.file_id, repr(settings))
    if key not in _SCORES:
        _SCORES[key] = _score(recording, settings)
    return _SCORES[key]


def _score(recording: Recording, settings: Any) -> tuple[Any, int]:
    from speakerdb.diarize import RttmTurn
    from speakerdb.diarize._evaluate import score_diarization
    from speakerdb.diarize._pipeline import find_turns
    from speakerdb.errors import NoSpeechError

    try:
        found = find_turns(recording.embedded, settings)
    except NoSpeechError:
        turns: list[Any] = []
        voices = 0
    else:
        turns = [
            RttmTurn(recording.file_id, s, e - s, f"speaker_{c + 1}") for s, e, c in found.segments
        ]
        voices = found.num_voices
    result = score_diarization(recording.reference, turns, duration=recording.embedded.duration)
    return result, voices


_STEP = 0.01
_FAST: dict[tuple[str, str, str], tuple[float, float]] = {}


def fast_errors(recording: Recording, settings: Any) -> tuple[float, float]:
    """(errors, total) seconds of DER on 10 ms frames with the same 0.25 s collar, for the
    search only (pyannote.metrics scores every figure reported; the two agree to within a
    few hundredths of a percent on these sets): missed + false alarm + confusion under the
    best one-to-one mapping of labels."""
    from scipy.optimize import linear_sum_assignment

    from speakerdb.diarize._pipeline import find_turns
    from speakerdb.errors import NoSpeechError

    key = (recording.set_name, recording.file_id, repr(settings))
    if key in _FAST:
        return _FAST[key]
    try:
        segments = find_turns(recording.embedded, settings).segments
    except NoSpeechError:
        segments = []
    ref_turns = recording.reference
    end = max([t.end for t in ref_turns] + [e for _, e, _ in segments] + [0.01])
    n = int(np.ceil(end / _STEP)) + 1
    speakers = sorted({t.speaker for t in ref_turns})
    ref = np.zeros((len(speakers), n), dtype=bool)
    scored = np.ones(n, dtype=bool)
    for t in ref_turns:
        ref[speakers.index(t.speaker), round(t.start / _STEP) : round(t.end / _STEP)] = True
        for edge in (t.start, t.end):
            scored[max(0, round((edge - 0.25) / _STEP)) : round((edge + 0.25) / _STEP)] = False
    voices = max([c for _, _, c in segments], default=-1) + 1
    hyp = np.zeros((max(voices, 1), n), dtype=bool)
    for s, e, c in segments:
        hyp[c, round(s / _STEP) : round(e / _STEP)] = True
    ref, hyp = ref[:, scored], hyp[:, scored]
    n_ref, n_hyp = ref.sum(axis=0), hyp.sum(axis=0)
    overlap = ref.astype(np.float64) @ hyp.T.astype(np.float64)
    rows, cols = linear_sum_assignment(-overlap)
    correct = overlap[rows, cols].sum()
    errors = float(np.maximum(n_ref, n_hyp).sum() - correct) * _STEP
    _FAST[key] = (errors, float(n_ref.sum()) * _STEP)
    return _FAST[key]


def pooled(recordings: list[Recording], settings: Any) -> Any:
    from speakerdb.diarize._evaluate import total_score

    return total_score([score(r, settings)[0] for r in recordings])


def fast_der(recordings: list[Recording], settings: Any) -> float:
    pairs = [fast_errors(r, settings) for r in recordings]
    return sum(e for e, _ in pairs) / sum(t for _, t in pairs)


def choose(recordings: list[Recording], base: Any) -> tuple[dict[str, Any], float, int]:
    """The grid setting with the lowest pooled DER on ``recordings`` (the first of equals),
    its DER, and how many settings were tried."""
    best: tuple[float, dict[str, Any]] | None = None
    tried = 0
    for candidate in settings_grid():
        tried += 1
        der = fast_der(recordings, replace(base, **candidate))
        if best is None or der < best[0] - 1e-12:
            best = (der, candidate)
    assert best is not None
    return best[1], best[0], tried


def groups(recordings: list[Recording], settings: Any) -> dict[str, Any]:
    """Pooled scores of a set: all, without and with overlap; plus per-file rows."""
    from speakerdb.diarize._evaluate import total_score

    scores: dict[str, list[Any]] = {"all": [], "no_overlap": [], "overlap": []}
    rows = []
    for r in recordings:
        s, voices = score(r, settings)
        scores["all"].append(s)
        scores["overlap" if r.overlap else "no_overlap"].append(s)
        d = s.to_dict()
        rows.append(
            {
                "file": r.file_id,
                "overlap": r.overlap,
                "speakers_ref": len({t.speaker for t in r.reference}),
                "speakers_found": voices,
                **{k: round(d[k], 4) for k in ("der", "missed", "false_alarm", "confusion")},
            }
        )
    summary = {
        g: {
            k: round(v, 4) if isinstance(v, float) else v
            for k, v in total_score(items).to_dict().items()
            if k in ("files", "der", "missed", "false_alarm", "confusion")
        }
        for g, items in scores.items()
        if items
    }
    return {"summary": summary, "files": rows}


def held_out(model: Any) -> dict[str, Any]:
    from speakerdb.diarize import DiarizationSettings

    base = DiarizationSettings()
    memoise_clustering()
    data = {name: load_set(name, model) for name in SETS}
    sample = load_pyannote(model)
    started = time.perf_counter()
    record: dict[str, Any] = {"grid": GRID, "folds": {}}
    for chosen_on, scored_on in (("16k", "8k"), ("8k", "16k")):
        setting, fit_der, tried = choose(data[chosen_on], base)
        settings = replace(base, **setting)
        record["folds"][scored_on] = {
            "chosen_on": chosen_on,
            "setting": setting,
            "der_where_chosen": round(fit_der, 4),
            "held_out": groups(data[scored_on], settings),
            "settings_tried": tried,
        }
    both = data["16k"] + data["8k"]
    setting, fit_der, _ = choose(both, base)
    shipped = replace(base, **setting)
    record["pooled_choice"] = {
        "setting": setting,
        "in_sample": {name: groups(data[name], shipped)["summary"] for name in SETS},
    }
    record["library_defaults"] = {
        "setting": {k: getattr(base, k) for k in setting},
        "scores": {name: groups(data[name], base)["summary"] for name in SETS},
    }
    sample_free = groups([sample], base)["summary"]["all"]
    sample_two = groups([sample], replace(base, num_speakers=2))["summary"]["all"]
    record["pyannote_sample"] = {
        "speakers_not_given": sample_free,
        "two_speakers_given": sample_two,
    }
    record["search_seconds"] = round(time.perf_counter() - started, 1)
    return record


def summary_lines(record: dict[str, Any]) -> list[str]:
    lines = ["held-out diarization (constants chosen on the other set; collar 0.25 s)"]
    lines.append("scored on  chosen on  group        DER     miss    FA      confusion")
    for scored_on, fold in record["folds"].items():
        for group, s in fold["held_out"]["summary"].items():
            lines.append(
                f"{scored_on:<10} {fold['chosen_on']:<10} {group:<11} {s['der']:6.2%}  "
                f"{s['missed']:6.2%}  {s['false_alarm']:6.2%}  {s['confusion']:6.2%}"
            )
        lines.append(f"  setting chosen on {fold['chosen_on']}: {json.dumps(fold['setting'])}")
    choice = record["pooled_choice"]
    lines.append(f"chosen on both sets (in-sample): {json.dumps(choice['setting'])}")
    for name, groups_ in choice["in_sample"].items():
        for group, s in groups_.items():
            lines.append(
                f"  {name:<4} {group:<11} DER {s['der']:6.2%} (miss {s['missed']:.2%}, "
                f"FA {s['false_alarm']:.2%}, confusion {s['confusion']:.2%})"
            )
    defaults = record["library_defaults"]
    lines.append(f"library defaults {json.dumps(defaults['setting'])}:")
    for name, groups_ in defaults["scores"].items():
        for group, s in groups_.items():
            lines.append(
                f"  {name:<4} {group:<11} DER {s['der']:6.2%} (miss {s['missed']:.2%}, "
                f"FA {s['false_alarm']:.2%}, confusion {s['confusion']:.2%})"
            )
    for how, s in record["pyannote_sample"].items():
        lines.append(
            f"pyannote sample, {how.replace('_', ' ')}: DER {s['der']:.2%} (miss "
            f"{s['missed']:.2%}, FA {s['false_alarm']:.2%}, confusion {s['confusion']:.2%})"
        )
    return lines
