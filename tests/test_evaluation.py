"""`speakerdb eval` and `speakerdb calibrate`, score normalisation, DET plots."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from helpers import manifest, require_data
from speakerdb import scoring
from speakerdb.cli import cli
from speakerdb.errors import MissingDependencyError, UsageError
from speakerdb.model._registry import GE2E_DEFAULT_THRESHOLD


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def run_json(*args: str):
    result = run(*args, "--json")
    return result.exit_code, json.loads(result.stdout)


@pytest.fixture
def vctk_trials():
    return require_data() / "vctk" / "trials.txt"


def test_eval_json_contract_and_scores_file(tmp_path, vctk_trials):
    scores = tmp_path / "scores.txt"
    code, doc = run_json(
        "eval", str(vctk_trials), "--db", str(tmp_path / "e.sqlite"), "--scores", str(scores)
    )
    assert code == 0
    for key in ("eer", "threshold", "min_dcf", "threshold_at_far", "trials", "failed_files"):
        assert key in doc
    assert doc["trials"] == 780 and doc["target_trials"] == 180 and doc["failed_files"] == []
    assert 0.0 <= doc["eer"] <= 0.01 and doc["eer"] <= 1  # a fraction, not a percentage
    lines = scores.read_text().splitlines()
    assert len(lines) == 780
    label, score, path_a, path_b = lines[0].split()
    assert label in "01" and -1 <= float(score) <= 1
    assert path_a.endswith(".wav") and path_b.endswith(".wav")
    # The reported figures follow from the scores file.
    parsed = [line.split() for line in lines]
    tgt = [float(p[1]) for p in parsed if p[0] == "1"]
    non = [float(p[1]) for p in parsed if p[0] == "0"]
    assert scoring.eer(tgt, non)[0] == pytest.approx(doc["eer"])
    assert scoring.threshold_at_far(non, 0.01) == pytest.approx(doc["threshold_at_far"], abs=1e-6)


def test_eval_from_manifest_makes_all_pairs(tmp_path):
    base = require_data() / "vctk"
    code, doc = run_json(
        "eval", "--manifest", str(base / "manifest.jsonl"), "--db", str(tmp_path / "e.sqlite")
    )
    assert code == 0 and doc["trials"] == 780 and doc["target_trials"] == 180


def test_unusable_files_are_reported_not_fatal(tmp_path):
    base = require_data() / "vctk"
    rows = (base / "trials.txt").read_text().splitlines()
    trials = tmp_path / "trials.txt"
    broken = tmp_path / "broken.wav"
    broken.write_text("not audio")
    first = rows[0].split()
    extra = [f"1 {broken} {base / first[1]}", f"0 {tmp_path / 'missing.wav'} {base / first[2]}"]
    trials.write_text(
        "\n".join(
            [f"{r.split()[0]} {base / r.split()[1]} {base / r.split()[2]}" for r in rows] + extra
        )
    )
    code, doc = run_json("eval", str(trials), "--db", str(tmp_path / "e.sqlite"))
    assert code == 0
    assert doc["trials"] == 780 and doc["skipped_trials"] == 2
    reasons = {f["path"]: f["code"] for f in doc["failed_files"]}
    assert reasons == {str(broken): "unreadable", str(tmp_path / "missing.wav"): "file_not_found"}


def test_calibrate_rule_score_sets_the_cosine_threshold_verify_uses(tmp_path, vctk_trials, model):
    db = str(tmp_path / "c.sqlite")
    groups = {}
    for path, label in manifest("vctk"):
        groups.setdefault(label, []).append(str(path))
    assert run("enroll", "p225", *groups["p225"][:3], "--db", db).exit_code == 0
    # What calibration must give, computed independently from the model's own scores.
    rows = [line.split() for line in vctk_trials.read_text().splitlines()]
    files = sorted({vctk_trials.parent / p for r in rows for p in r[1:]})
    vectors = dict(zip(files, model.embed_files(files), strict=True))
    scores = [
        (
            r[0],
            scoring.cosine(vectors[vctk_trials.parent / r[1]], vectors[vctk_trials.parent / r[2]]),
        )
        for r in rows
    ]
    tgt = [s for label, s in scores if label == "1"]
    non = [s for label, s in scores if label == "0"]

    code, cal = run_json(
        "calibrate", str(vctk_trials), "--rule", "score", "--target", "eer", "--db", db
    )
    assert code == 0 and cal["calibrated"] is True and cal["kind"] == "threshold"
    assert cal["threshold"] == pytest.approx(scoring.eer(tgt, non)[1], abs=1e-6)
    code, doc = run_json("verify", "p225", groups["p225"][5], "--db", db)
    assert doc["threshold"] == pytest.approx(cal["threshold"]) and doc["llr"] is None
    assert doc["decision_rule"]["score"] == "cosine"
    assert doc["decision_rule"]["origin"] == "database"
    code, doc = run_json("compare", groups["p225"][5], groups["p226"][5], "--db", db)
    assert doc["threshold"] == pytest.approx(cal["threshold"])
    assert doc["threshold"] != pytest.approx(GE2E_DEFAULT_THRESHOLD)

    # At a target false-accept rate the stored threshold is the one at that rate, and the
    # document reports the stored threshold, not the EER one of its evaluation.
    code, cal = run_json(
        "calibrate", str(vctk_trials), "--rule", "score", "--far", "0.02", "--db", db
    )
    expected = scoring.threshold_at_far(non, 0.02)
    assert cal["threshold"] == pytest.approx(expected, abs=1e-6)
    assert cal["evaluation"]["threshold"] == pytest.approx(scoring.eer(tgt, non)[1], abs=1e-6)
    assert np.mean(np.array(non) >= cal["threshold"]) <= 0.02
    code, doc = run_json("verify", "p225", groups["p225"][5], "--db", db)
    assert doc["threshold"] == pytest.approx(expected, abs=1e-6)
    # --reset: a new database's default again, the bundled calibration.
    code, reset = run_json("calibrate", "--reset", "--db", db)
    assert code == 0 and reset["decision_rule"]["calibration"] == "bundled"
    code, doc = run_json("verify", "p225", groups["p225"][5], "--db", db)
    assert doc["calibration"] == "bundled" and doc["decision_rule"]["score"] == "llr"


def test_eval_set_default_fits_and_stores_a_calibration(tmp_path, vctk_trials):
    db = str(tmp_path / "d.sqlite")
    code, doc = run_json("eval", str(vctk_trials), "--set-default", "--far", "0.05", "--db", db)
    assert code == 0 and doc["stored_as_default"] is True
    assert doc["calibration"] == "database" and doc["decision_rule"]["origin"] == "target_far"
    code, again = run_json("eval", str(vctk_trials), "--db", db)
    assert again["decision_rule"] == doc["decision_rule"]
    assert again["threshold_in_use"] == pytest.approx(doc["threshold_in_use"])
    assert again["calibrated"] == doc["calibrated"]


def test_asnorm_in_eval_verify_identify_compare(tmp_path):
    data = require_data()
    db = str(tmp_path / "n.sqlite")
    cohort = str(data / "librispeech" / "singles.jsonl")
    code, raw = run_json("eval", str(data / "librispeech" / "trials.txt"), "--db", db)
    code, normed = run_json(
        "eval",
        str(data / "librispeech" / "trials.txt"),
        "--norm",
        "asnorm",
        "--cohort",
        cohort,
        "--db",
        db,
    )
    assert code == 0 and normed["normalization"] == "asnorm"
    assert normed["eer"] <= raw["eer"]
    # With a database cohort: enough enrolled speakers are needed.
    groups = {}
    for path, label in manifest("librispeech") + manifest("vctk") + manifest("arabic-commands"):
        groups.setdefault(label, []).append(str(path))
    first = sorted(groups)[0]
    assert run("enroll", first, *groups[first][:3], "--db", db).exit_code == 0
    small = run("verify", first, groups[first][5], "--norm", "asnorm", "--db", db)
    assert small.exit_code == 2 and "cohort" in small.stderr
    for name in sorted(groups)[1:]:
        assert run("enroll", name, *groups[name][:3], "--db", db).exit_code == 0
    code, doc = run_json("verify", "1688", groups["1688"][5], "--norm", "asnorm", "--db", db)
    assert code == 0 and doc["normalization"] == "asnorm" and doc["score"] > doc["threshold"]
    assert -1 <= doc["cosine"] <= 1
    code, doc = run_json("verify", "1688", groups["2414"][5], "--norm", "asnorm", "--db", db)
    assert code == 1 and doc["accepted"] is False
    code, doc = run_json("identify", groups["1998"][6], "--norm", "asnorm", "--db", db)
    assert doc["best"] == "1998" and doc["normalization"] == "asnorm"
    code, doc = run_json(
        "compare", groups["1688"][5], groups["1688"][6], "--norm", "asnorm", "--cohort", cohort
    )
    assert code == 0 and doc["same_speaker"] is True


def test_plot_is_a_png(tmp_path, vctk_trials):
    out = tmp_path / "det.png"
    result = run("eval", str(vctk_trials), "--plot", str(out), "--db", str(tmp_path / "p.sqlite"))
    assert result.exit_code == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_plot_without_matplotlib_is_a_clear_error(monkeypatch, tmp_path, vctk_trials):
    from speakerdb.enroll._evaluation import EvaluationReport
    from speakerdb.enroll._plot import plot_evaluation

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    report = EvaluationReport(1, 1, 1, 0, 0, 0, 0, 0, 0, 0.01, 0, 0, 0.8, 0, 0, "m")
    with pytest.raises(MissingDependencyError, match=r"speakerdb\[plot\]"):
        plot_evaluation(report, tmp_path / "x.png")
    result = run(
        "eval",
        str(vctk_trials),
        "--plot",
        str(tmp_path / "y.png"),
        "--db",
        str(tmp_path / "q.sqlite"),
    )
    assert result.exit_code == 2 and "speakerdb[plot]" in result.stderr


def test_eval_needs_labels_and_both_classes(tmp_path):
    base = require_data() / "vctk"
    unlabelled = tmp_path / "pairs.txt"
    first = (base / "trials.txt").read_text().splitlines()[0].split()
    unlabelled.write_text(f"{base / first[1]} {base / first[2]}\n")
    assert run("eval", str(unlabelled), "--db", str(tmp_path / "u.sqlite")).exit_code == 2
    same_only = tmp_path / "same.txt"
    same_only.write_text(f"1 {base / first[1]} {base / first[2]}\n")
    result = run("eval", str(same_only), "--db", str(tmp_path / "u.sqlite"))
    assert result.exit_code == 2 and "different-speaker" in result.stderr


def test_dcf_and_eer_reject_degenerate_input():
    with pytest.raises(UsageError):
        scoring.min_dcf([0.5], [0.1], p_target=0)
    assert np.isfinite(scoring.min_dcf([0.9], [0.1])[0])
