"""Write one small SQLite database frozen at EVERY schema revision (0001 .. head), as optuna
keeps old-schema databases in its tests: tests/test_frozen_db.py upgrades each to head and
checks that it answers as recorded.

For each revision a temporary database is migrated to exactly that revision by the shipped
migrations (``alembic upgrade <revision>``), then filled through SQL with what a store of that
revision held: the model row, a few speakers with real GE2E voiceprints of the development
speech (their utterance embeddings, normalised-mean centroid, change log), and the state row.
Only the columns the revision has are written (read from the database itself), so the same
rows land in every schema. A database created at 0004 or later decides with the bundled
calibration (``calibration_default = 'bundled'``, as the store sets for a new database); an
older one keeps its model's cosine threshold.

Then each file is copied, upgraded to head with today's code, and asked the questions of
tests/test_frozen_db.py; the answers go to ``frozen/answers.json`` beside the databases.

    python tools/make_frozen_revisions.py [--out tests/fixtures/frozen]

Needs the development speech (../shared/data, or $SPEAKERDB_TEST_DATA) and torch (the GE2E
model embeds it). Sources are stored relative to the data folder.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from frozen_answers import answers  # noqa: E402  (tests/frozen_answers.py)
from sqlalchemy import MetaData, create_engine, insert, update  # noqa: E402

from speakerdb.storage._migrate import alembic_config, head_revision  # noqa: E402

# (speaker, data set, manifest label, positions of its recordings in that manifest).
SPEAKERS = [
    ("p225", "vctk", "p225", [0, 1, 2]),
    ("p226", "vctk", "p226", [0, 1]),
    ("1688", "librispeech", "1688", [0, 1, 2]),
]
CREATED = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)  # fixed: the files are reproducible


def data_folder() -> Path:
    return Path(os.environ.get("SPEAKERDB_TEST_DATA", ROOT.parent / "shared" / "data"))


def recordings(subset: str, label: str) -> list[str]:
    """The recordings of ``label`` in ``subset``'s manifest, in order, relative to the data
    folder."""
    lines = (data_folder() / subset / "manifest.jsonl").read_text().splitlines()
    items = [json.loads(line) for line in lines if line.strip()]
    return [f"{subset}/{i['audio_filepath']}" for i in items if str(i["label"]) == label]


def embed_speakers() -> tuple[Any, list[dict[str, Any]]]:
    """The GE2E identity and, per speaker, its recordings' embeddings and measures."""
    from speakerdb import load_model

    model = load_model("ge2e", device="cpu")
    data = data_folder()
    speakers = []
    for name, subset, label, positions in SPEAKERS:
        files = [recordings(subset, label)[k] for k in positions]
        embedded = model.embed([str(data / f) for f in files], raise_errors=True)
        speakers.append(
            {
                "name": name,
                "utterances": [
                    {
                        "source": f,
                        "sha256": e.sha256,
                        "duration": float(e.duration),
                        "speech_seconds": float(e.speech_seconds),
                        "bandwidth_hz": e.bandwidth_hz,
                        "embedding": np.asarray(e.vector, np.float32),
                    }
                    for f, e in zip(files, embedded, strict=True)
                ],
            }
        )
    return model.identity, speakers


def _only(columns: set[str], values: dict[str, Any]) -> dict[str, Any]:
    """``values`` restricted to the columns this revision has."""
    return {k: v for k, v in values.items() if k in columns}


def write_revision(path: Path, revision: str, identity: Any, speakers: list[dict]) -> None:
    from alembic import command

    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), revision)
        meta = MetaData()
        meta.reflect(engine)
        t = meta.tables
        cols = {name: {c.name for c in table.columns} for name, table in t.items()}
        with engine.begin() as conn:
            conn.execute(
                insert(t["models"]).values(
                    _only(
                        cols["models"],
                        {
                            "id": 1,
                            "name": identity.name,
                            "weights_sha256": identity.weights_sha256,
                            "dimension": identity.dimension,
                            "default_threshold": identity.default_threshold,
                            "family": identity.family,
                            "created_at": CREATED,
                        },
                    )
                )
            )
            seq = 0
            for speaker_id, speaker in enumerate(speakers, start=1):
                utterances = speaker["utterances"]
                vectors = np.stack([u["embedding"] for u in utterances]).astype(np.float64)
                mean = vectors.mean(axis=0)
                centroid = (mean / np.linalg.norm(mean)).astype(np.float32)
                speech = sum(u["speech_seconds"] for u in utterances)
                bandwidths = [u["bandwidth_hz"] for u in utterances]
                bandwidth = (  # speech-weighted mean, as the store keeps it; unknown if any is
                    None
                    if None in bandwidths
                    else sum(u["speech_seconds"] * u["bandwidth_hz"] for u in utterances) / speech
                )
                seq += 1
                conn.execute(
                    insert(t["speakers"]).values(
                        _only(
                            cols["speakers"],
                            {
                                "id": speaker_id,
                                "name": speaker["name"],
                                "metadata": None,
                                "status": "active",
                                "centroid": centroid.tobytes(),
                                "utterance_count": len(utterances),
                                "speech_seconds": speech,
                                "bandwidth_hz": bandwidth,
                                "change_seq": seq,
                                "created_at": CREATED,
                                "updated_at": CREATED,
                            },
                        )
                    )
                )
                for u in utterances:
                    conn.execute(
                        insert(t["utterances"]).values(
                            _only(
                                cols["utterances"],
                                {
                                    "speaker_id": speaker_id,
                                    "audio_sha256": u["sha256"],
                                    "source": u["source"],
                                    "duration": u["duration"],
                                    "speech_seconds": u["speech_seconds"],
                                    "bandwidth_hz": u["bandwidth_hz"],
                                    "embedding": u["embedding"].tobytes(),
                                    "model_id": 1,
                                    "created_at": CREATED,
                                },
                            )
                        )
                    )
                conn.execute(
                    insert(t["changes"]).values(speaker_id=speaker_id, seq=seq, op="upsert")
                )
            state = {
                "model_id": 1,
                "change_seq": seq,
                "created_at": CREATED,
                # Fixed, so that regenerating gives the same file for the same rows.
                "instance_id": str(uuid.UUID(int=int(revision))),
                "index_key": hashlib.sha256(revision.encode()).hexdigest(),
                "calibration_default": "bundled",  # only where the column exists (0004+)
            }
            conn.execute(update(t["store_state"]).values(_only(cols["store_state"], state)))
    finally:
        engine.dispose()
    with sqlite3.connect(path) as raw:
        raw.execute("PRAGMA journal_mode=DELETE")
    with sqlite3.connect(path, isolation_level=None) as raw:
        raw.execute("VACUUM")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "frozen")
    args = parser.parse_args()
    os.chdir(data_folder())  # so the relative sources resolve while answering
    identity, speakers = embed_speakers()
    revisions = [f"{n:04d}" for n in range(1, int(head_revision()) + 1)]
    args.out.mkdir(parents=True, exist_ok=True)
    recorded: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for revision in revisions:
            target = args.out / f"{revision}.db"
            target.unlink(missing_ok=True)
            write_revision(target, revision, identity, speakers)
            copy = Path(tmp) / f"{revision}.db"
            shutil.copyfile(target, copy)
            recorded[revision] = answers(f"sqlite:///{copy}")
            print(revision, target.stat().st_size, "bytes", recorded[revision]["decisions"])
    (args.out / "answers.json").write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
