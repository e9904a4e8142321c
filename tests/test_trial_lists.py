"""Trial lists from users (issue 16, defects 10 and 11): a trial and its mirror, or a
repeated line, are one trial; calibrate enforces its minimums on distinct trials and
speakers and reports what it counted; and a list of 100 000 lines takes little memory per
line in eval, calibrate and compare --pairs, even when no file decodes."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from child import run_child
from click.testing import CliRunner
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from helpers import require_data
from speakerdb import SpeakerDB
from speakerdb.cli import cli
from speakerdb.enroll._lists import Trial, count_trials, distinct_trials, read_trials
from speakerdb.errors import UsageError


def _calibrations(url: str) -> int:
    """Calibrations stored in the database (0 when it was never created)."""
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return 0
    engine = create_engine(make_url(url))
    try:
        if "calibrations" not in inspect(engine).get_table_names():
            return 0
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM calibrations")).scalar_one())
    finally:
        engine.dispose()


def _absolute(base: Path, lines: list[str]) -> list[str]:
    out = []
    for line in lines:
        label, a, b = line.split()
        out.append(f"{label} {base / a} {base / b}")
    return out


# --- defect 11: duplicates ----------------------------------------------------------------------


def test_distinct_trials_merge_mirrors_repeats_and_self_pairs():
    a, b, c = Path("/x/a.wav"), Path("/x/b.wav"), Path("/x/c.wav")
    trials = [
        Trial(a, b, 1, 1),
        Trial(b, a, 1, 2),  # the mirror
        Trial(a, b, 1, 3),  # a repeat
        Trial(a, a, 1, 4),  # a file with itself
        Trial(a, c, 0, 5),
        Trial(c, b, 0, 6),
    ]
    kept, counts = distinct_trials(trials)
    assert [t.line for t in kept] == [1, 5, 6]
    assert counts.to_dict() == {
        "lines": 6,
        "trials": 3,
        "target_trials": 1,
        "nontarget_trials": 2,
        "recordings": 3,
        "speakers": 1,
        "duplicates": 2,
        "self_pairs": 1,
    }
    with pytest.raises(UsageError, match="lines 1 and 2 give"):
        distinct_trials([Trial(a, b, 1, 1), Trial(b, a, 0, 2)])


def test_speakers_are_groups_joined_by_same_speaker_trials():
    p = [Path(f"/x/{i}.wav") for i in range(6)]
    trials = [Trial(p[0], p[1], 1, 1), Trial(p[1], p[2], 1, 2), Trial(p[3], p[4], 1, 3)]
    trials += [Trial(p[0], p[5], 0, 4)]
    assert count_trials(trials).speakers == 2


def test_calibrate_refuses_repeated_lines_and_stores_nothing(db_url, tmp_path):
    """The report's list: one same-speaker pair x200 and one different-speaker pair x200
    was stored as a calibration fitted on 200 / 200 trials."""
    base = require_data() / "vctk"
    same = f"1 {base}/p225/p225_003.wav {base}/p225/p225_008.wav"
    other = f"0 {base}/p225/p225_003.wav {base}/p226/p226_003.wav"
    trials = tmp_path / "repeated.txt"
    trials.write_text("\n".join([same, other] * 200) + "\n")
    result = CliRunner().invoke(cli, ["calibrate", str(trials), "--db", db_url])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: too few trials") and result.stderr.count("\n") == 1
    assert "1 same-speaker trials of 1 speaker(s) and 1 different-speaker" in result.stderr
    assert "398 repeated trial line(s) counted once" in result.stderr
    assert _calibrations(db_url) == 0


def test_calibrate_counts_each_trial_once_and_reports_it(db_url, tmp_path):
    """The dev set's trials, with 300 of them given again mirrored and 100 repeated, and 5
    lines pairing a file with itself: the fit is the one of the 780 distinct trials."""
    base = require_data() / "vctk"
    lines = (base / "trials.txt").read_text().split("\n")
    lines = _absolute(base, [line for line in lines if line.strip()])
    rng = random.Random(16)
    mirrored = [f"{x[0]} {x[2]} {x[1]}" for x in (line.split() for line in rng.sample(lines, 300))]
    repeated = rng.sample(lines, 100)
    selves = [f"1 {line.split()[1]} {line.split()[1]}" for line in lines[:5]]
    everything = lines + mirrored + repeated + selves
    rng.shuffle(everything)
    trials = tmp_path / "trials.txt"
    trials.write_text("\n".join(everything) + "\n")
    result = CliRunner().invoke(cli, ["calibrate", str(trials), "--db", db_url, "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    fit = doc["calibration"]["fit"]
    assert (fit["target_trials"], fit["nontarget_trials"]) == (180, 600)
    assert doc["evaluation"]["trials"] == 780
    assert doc["evaluation"]["trial_counts"] == {
        "lines": 1185,
        "trials": 780,
        "target_trials": 180,
        "nontarget_trials": 600,
        "recordings": 40,
        "speakers": 4,
        "duplicates": 400,
        "self_pairs": 5,
    }
    assert "40 recordings" in fit["note"] and "4 speaker(s)" in fit["note"]
    assert _calibrations(db_url) == 1
    shown = CliRunner().invoke(cli, ["calibrate", str(trials), "--db", db_url])
    assert "780 trials of 1185 lines" in shown.stdout and "400 repeated" in shown.stdout


def test_calibrate_needs_same_speaker_trials_of_several_speakers(tmp_path):
    """Enough distinct trials, but every same-speaker one of a single voice: refused."""
    base = require_data() / "arabic-commands"
    rows = read_trials(base / "trials.txt", require_labels=True)
    speaker = rows[0].a.parent.name
    same = [t for t in rows if t.label == 1 and t.a.parent.name == speaker][:60]
    other = [t for t in rows if t.label == 0 and speaker in (t.a.parent.name, t.b.parent.name)]
    assert len(same) == 60 and len(other) >= 220
    url = f"sqlite:///{tmp_path / 'one.sqlite'}"
    with SpeakerDB.open(url, device="cpu") as db:
        with pytest.raises(UsageError, match=r"60 same-speaker trials of 1 speaker\(s\)"):
            db.calibrate(same + other[:220])
        assert db.calibration_info()["stored"] is None
    assert _calibrations(url) == 0


# --- defect 10: memory per line -----------------------------------------------------------------

LINES = 100_000
FILES = 40_000
SPEAKERS = 500


def _big_list(path: Path) -> Path:
    """100 000 labelled lines over 40 000 files that do not exist (nothing decodes), as
    VoxCeleb-style lists name each file on a few lines."""
    rng = random.Random(10)
    with open(path, "w") as out:
        for i in range(LINES):
            a = rng.randrange(FILES)
            if i % 2:
                b = (a + SPEAKERS * rng.randrange(1, FILES // SPEAKERS)) % FILES
            else:
                b = rng.randrange(FILES)
                while b % SPEAKERS == a % SPEAKERS:
                    b = rng.randrange(FILES)
            label = int(a % SPEAKERS == b % SPEAKERS)
            out.write(f"{label} s{a % SPEAKERS}/u{a}.wav s{b % SPEAKERS}/u{b}.wav\n")
    return path


def test_a_100k_line_list_takes_little_memory_per_line(tmp_path):
    """Before: about 10 KB per line (each unusable file kept its traceback, with the decode
    worker's frames and future); 100 000 lines over 40 000 files grew a process by ~0.5 GB.
    Now each line costs a slotted Trial and shared paths, each file one small error: the
    child's peak may grow by at most 2.5 KB per line over what it used before the command."""
    trials = _big_list(tmp_path / "big.txt")
    result = run_child(
        """
        import sys
        from click.testing import CliRunner
        from speakerdb import SpeakerDB
        from speakerdb.cli import cli

        def hwm_mb():
            with open("/proc/self/status") as status:
                line = next(line for line in status if line.startswith("VmHWM:"))
            return int(line.split()[1]) / 1024

        trials, url, out = sys.argv[1:]
        with SpeakerDB.open(url, device="cpu") as db:
            db.model  # the model and the engine loaded before the baseline
        RESULT = {"before_mb": hwm_mb()}
        for name, argv in {
            "eval": ["eval", trials],
            "calibrate": ["calibrate", trials],
            "compare": ["compare", "--pairs", trials, "--out", out],
        }.items():
            done = CliRunner().invoke(cli, [*argv, "--db", url])
            RESULT[name] = [done.exit_code, done.stderr.splitlines()[-1][:300], hwm_mb()]
        """,
        str(trials),
        f"sqlite:///{tmp_path / 'big.sqlite'}",
        str(tmp_path / "scores.txt"),
        timeout=900,
    )
    assert result["eval"][0] == 2 and "files failed" in result["eval"][1], result
    assert result["calibrate"][0] == 2 and "too few trials" in result["calibrate"][1], result
    assert result["compare"][0] == 2, result
    assert len((tmp_path / "scores.txt").read_text().splitlines()) == LINES
    growth = result["peak_mb"] - result["before_mb"]
    assert growth * 1024 / LINES < 2.5, result
