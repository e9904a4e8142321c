"""A spoof calibration adapted to a channel from its bona fide speech alone
(``spoof calibrate --bona-fide-only``): the numerics on synthetic scores, then the command on
real phone speech with the real AASIST-L weights (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from test_spoof import _own_manifest, require_weights

from helpers import DATA
from speakerdb._spoof_calibration import (
    SpoofCalibration,
    adapt_spoof_calibration,
    bundled_spoof_calibration,
    fit_spoof_calibration,
)
from speakerdb.cli import cli
from speakerdb.errors import UsageError


def _base(seed: int = 0) -> SpoofCalibration:
    """Fitted on wideband bona fide speech N(1, 1) against attacks N(-2, 1) (no phone)."""
    rng = np.random.default_rng(seed)
    raw = np.concatenate([rng.normal(1.0, 1.0, 2000), rng.normal(-2.0, 1.0, 2000)])
    band = np.full(raw.size, 7500.0)
    label = np.repeat([1, 0], 2000)
    group = ["wide"] * 2000 + ["attack"] * 2000
    return fit_spoof_calibration(raw, band, label, group, countermeasure={"weights_sha256": "ab"})


def test_a_phone_channel_unseen_by_the_fit_is_flagged_near_the_allowed_rate_once_adapted():
    base = _base()
    rng = np.random.default_rng(1)
    phone = rng.normal(-1.5, 1.0, 200)  # real calls of a channel that scores lower
    bw = np.full(phone.size, 3300.0)
    before = np.mean(base.llrs(phone, bw) < base.threshold)
    assert before > 0.5  # the base takes most real calls for attacks
    adapted = adapt_spoof_calibration(base, phone, bw, max_flag_rate=0.05)
    assert np.mean(adapted.llrs(phone, bw) < adapted.threshold) <= 0.08
    # New calls of the same channel: near the allowed rate, not the base's.
    fresh = rng.normal(-1.5, 1.0, 4000)
    flagged = np.mean(adapted.llrs(fresh, np.full(fresh.size, 3300.0)) < adapted.threshold)
    assert 0.02 < flagged < 0.08
    # What an attack looks like (the slope) and the wideband mapping are the base's.
    wide = np.linspace(-4.0, 4.0, 9)
    assert adapted.weights[0] == base.weights[0]
    np.testing.assert_allclose(
        adapted.llrs(wide, np.full(9, 7500.0)), base.llrs(wide, np.full(9, 7500.0))
    )
    assert adapted.fit["mode"] == "bona fide only" and set(adapted.fit["offsets"]) == {"narrowband"}
    assert SpoofCalibration.from_dict(json.loads(json.dumps(adapted.to_dict()))) == adapted


def test_few_speakers_count_as_few_when_the_list_names_them():
    """Four callers, ten calls each, whose voices the countermeasure scores differently: the
    spread of a new caller's call is wider than the forty calls' own, and naming the
    speakers makes the rule allow for it (fewer of 2000 new callers flagged)."""
    base = _base(4)
    rng = np.random.default_rng(5)
    means = rng.normal(-1.5, 1.0, 4)
    raw = np.concatenate([rng.normal(m, 0.3, 10) for m in means])
    who = [f"caller{i}" for i in range(4) for _ in range(10)]
    bw = np.full(raw.size, 3300.0)
    named = adapt_spoof_calibration(base, raw, bw, who)
    anonymous = adapt_spoof_calibration(base, raw, bw)
    assert named.fit["offsets"]["narrowband"] > anonymous.fit["offsets"]["narrowband"]
    new = rng.normal(-1.5, 1.0, 2000) + rng.normal(0.0, 0.3, 2000)
    nb = np.full(new.size, 3300.0)
    assert np.mean(named.llrs(new, nb) < named.threshold) < np.mean(
        anonymous.llrs(new, nb) < anonymous.threshold
    )
    with pytest.raises(UsageError, match="3 speakers for 40 recordings"):
        adapt_spoof_calibration(base, raw, bw, who[:3])


def test_speech_the_base_already_passes_keeps_the_base_rule():
    base = _base(2)
    rng = np.random.default_rng(3)
    wide = rng.normal(3.0, 1.0, 100)  # a cleaner channel than the fit's
    phone = rng.normal(-1.0, 1.0, 100)
    raw = np.concatenate([wide, phone])
    bw = np.concatenate([np.full(100, 7000.0), np.full(100, 3000.0)])
    adapted = adapt_spoof_calibration(base, raw, bw, max_flag_rate=0.1)
    assert adapted.fit["offsets"]["wideband"] == 0.0 < adapted.fit["offsets"]["narrowband"]
    assert adapted.bias == base.bias
    probe = np.linspace(-3.0, 3.0, 13)
    np.testing.assert_allclose(
        adapted.llrs(probe, np.full(13, 7000.0)), base.llrs(probe, np.full(13, 7000.0))
    )


def test_a_band_the_base_passes_is_not_moved_even_where_the_bound_would_move_it():
    base = _base(6)
    rng = np.random.default_rng(7)
    wide = rng.normal(1.3, 1.0, 100)  # like the fit's bona fide speech, a little higher
    bw = np.full(wide.size, 7500.0)
    flagged = np.mean(base.llrs(wide, bw) < base.threshold)
    assert flagged <= 0.05
    adapted = adapt_spoof_calibration(base, wide, bw)
    assert adapted.fit["offsets"] == {"wideband": 0.0}
    assert adapted.fit["flagged_before"] == {"wideband": flagged}
    assert adapted.bias == base.bias and adapted.weights == base.weights
    # The same speech with a few more of it flagged by the base is moved.
    lower = wide - 0.6
    assert np.mean(base.llrs(lower, bw) < base.threshold) > 0.05
    assert adapt_spoof_calibration(base, lower, bw).fit["offsets"]["wideband"] > 0.0


def test_too_few_recordings_of_every_band_are_refused():
    base = _base()
    raw = np.zeros(19)
    with pytest.raises(UsageError, match="19 narrowband and 0 wideband"):
        adapt_spoof_calibration(base, raw, np.full(19, 3000.0))
    with pytest.raises(UsageError, match="max_flag_rate"):
        adapt_spoof_calibration(base, np.zeros(30), np.full(30, 3000.0), max_flag_rate=0.0)


# --- the command, on real phone speech --------------------------------------------------------


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def _phone_manifest(folder: Path) -> Path:
    """A plain speaker manifest (no "spoof" key) of 20 of the dev set's real 8 kHz phone
    recordings, paths relative to it: the kind of list a call centre has. These 20 (lines 21-40)
    hold two calls the bundled AASIST-L rule flags by a wide margin (LLR 0.4 and 1.0 under its
    threshold; no call within 0.3 of it, so no CPU's rounding changes what is flagged)."""
    rows = (DATA / "telephone" / "manifest.jsonl").read_text().splitlines()[20:40]
    lines = []
    for row in map(json.loads, rows):
        absolute = (DATA / "telephone" / row["audio_filepath"]).resolve()
        lines.append(json.dumps({**row, "audio_filepath": os.path.relpath(absolute, folder)}))
    path = folder / "calls.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_spoof_calibrate_bona_fide_only_on_real_phone_speech(db_url, tmp_path):
    from speakerdb import SpeakerDB, load_countermeasure

    weights = require_weights("AASIST-L")
    calls = _phone_manifest(tmp_path)
    assert run("spoof", "use", str(weights), "--db", db_url).exit_code == 0

    with_attacks = _own_manifest(tmp_path, bona=2, per_attack=1)
    refused = run("spoof", "calibrate", str(with_attacks), "--bona-fide-only", "--db", db_url)
    assert refused.exit_code == 2 and "bona fide recordings only" in refused.output
    plain = run("spoof", "calibrate", str(calls), "--db", db_url)  # no "spoof" key: malformed
    assert plain.exit_code == 2 and '"spoof": true|false' in plain.output
    mixed = run("spoof", "calibrate", "--reset", "--bona-fide-only", "--db", db_url)
    assert mixed.exit_code == 2 and "goes with RECORDINGS" in mixed.output
    with SpeakerDB.open(db_url) as db:
        assert db.countermeasure_calibration() is None  # bad input changed nothing

    done = run("spoof", "calibrate", str(calls), "--bona-fide-only", "--db", db_url, "--json")
    assert done.exit_code == 0, done.output
    report = json.loads(done.stdout)
    assert report["groups"] == {"bonafide-narrowband": 20}
    assert report["flagged"]["bonafide-narrowband"] <= 0.05
    shown = json.loads(run("spoof", "show", "--db", db_url, "--json").stdout)["calibration"]
    assert shown["source"] == "database" and shown["mode"] == "bona fide only"
    with SpeakerDB.open(db_url) as db:
        stored = SpoofCalibration.from_dict(db.countermeasure_calibration() or {})
    bundled = bundled_spoof_calibration(stored.countermeasure["weights_sha256"])
    assert bundled is not None and stored.threshold == bundled.threshold
    # Wideband speech is decided as before; the phone calls by the adapted offset.
    assert stored.llr(2.0, 7500.0) == pytest.approx(bundled.llr(2.0, 7500.0))
    paths = [
        (tmp_path / json.loads(line)["audio_filepath"]).resolve()
        for line in calls.read_text().splitlines()
    ]
    scored = load_countermeasure(weights).score(paths[:3])
    offset = stored.fit["offsets"]["narrowband"]
    # The bundled rule flags 2 of these 20 calls: over the 5 % allowed, so the band moved.
    assert stored.fit["flagged_before"] == {"narrowband": 0.1} and offset > 0.0
    for r in scored:
        assert stored.llr(r.llr_input, r.bandwidth_hz) == pytest.approx(
            bundled.llr(r.llr_input, r.bandwidth_hz) + offset
        )
