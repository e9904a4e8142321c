"""Service replicas: two ``speakerdb serve`` processes, each with its own index cache folder
(as on two machines), sharing one PostgreSQL database whose index is the compressed kind
(ivfsq). An enrollment through one is answered by the other at once; a deletion through
one is never answered by the other afterwards, nor left in either cache file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from helpers import by_speaker, require_data
from service_helpers import Server, upload
from speakerdb import SpeakerDB
from speakerdb.storage._index_file import read_header
from speakerdb.storage._records import EnrollRequest, NewUtterance
from speakerdb.storage._store import EnrollmentStore

pytest.importorskip("fastapi", reason="the serve extra is not installed")
pytest.importorskip("uvicorn", reason="the serve extra is not installed")


def _index_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and read_header(p) is not None]


def test_two_replicas_with_their_own_compressed_caches(pg_url, model, tmp_path, monkeypatch):
    require_data()
    p225 = sorted(by_speaker("vctk")["p225"])
    # Background speakers (random unit vectors: far from any real voice) so that the forced
    # compressed kind has lists to train.
    rng = np.random.default_rng(3)
    background = rng.standard_normal((300, model.identity.dimension))
    background /= np.linalg.norm(background, axis=1, keepdims=True)
    with EnrollmentStore.open(pg_url) as store:
        store.enroll_many(
            [
                EnrollRequest(f"bg{i:04d}", [NewUtterance(v, f"{i:064x}", None, 3.0, 3.0)])
                for i, v in enumerate(background.astype(np.float32))
            ],
            model.identity,
        )
        assert store.rebuild_index("ivfsq").params.startswith("ivfsq(")
    with SpeakerDB.open(pg_url) as db:
        key = db.create_key("admin", ["admin"]).secret
    caches = [tmp_path / "replica-a", tmp_path / "replica-b"]
    envs = [{**os.environ, "SPEAKERDB_INDEX_DIR": str(folder)} for folder in caches]
    with (
        Server(pg_url, env=envs[0]) as first,
        Server(pg_url, env=envs[1]) as second,
        first.client(key) as a,
        second.client(key) as b,
    ):
        assert b.post("/v1/identify", files=upload(p225[5:6])).json()["best"] is None
        assert a.post("/v1/speakers/carol/enroll", files=upload(p225[:3])).status_code == 201
        # The very next request to the other replica, on its own cache, finds her.
        found = b.post("/v1/identify", files=upload(p225[5:6])).json()
        assert found["best"] == "carol" and found["decision"] == "IDENTIFIED"
        with EnrollmentStore.open(pg_url, read_only=True) as store:
            carol = store.speaker("carol").id
        assert b.delete("/v1/speakers/carol").status_code == 200
        # Never answered by the replica that enrolled her, nor by the one that deleted her.
        for client in (a, b):
            assert client.post("/v1/identify", files=upload(p225[5:6])).json()["best"] is None
            assert client.post("/v1/identify", files=upload(p225[:1])).json()["best"] is None
            verified = client.post("/v1/speakers/carol/verify", files=upload(p225[5:6]))
            assert verified.status_code == 404
    # Each replica kept its own compressed cache file (authentic); none holds carol.
    for folder in caches:
        assert [read_header(p).kind for p in _index_files(folder)] == ["ivfsq"]  # type: ignore[union-attr]
        monkeypatch.setenv("SPEAKERDB_INDEX_DIR", str(folder))
        with EnrollmentStore.open(pg_url, read_only=True) as store:
            stored = store.stored_index()
        assert not isinstance(stored, str) and stored.authentic
        assert carol not in stored.index.contents()[0].tolist()
