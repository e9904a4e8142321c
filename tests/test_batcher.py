"""The micro-batcher in process: a SpeakerDB whose model is a BatchingEmbedder, used by many
threads at once, answers exactly as the plain model does, in shared batches."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from helpers import by_speaker, require_data, speech_sample, write_aac
from speakerdb import SpeakerDB
from speakerdb.errors import BusyError, TooLongError

pytest.importorskip("fastapi", reason="the serve extra is not installed")

from speakerdb.service._batcher import BatchingEmbedder, BatchStats, Upload


@pytest.fixture(scope="module")
def voices():
    require_data()
    return {name: sorted(files) for name, files in by_speaker("vctk").items()}


def test_threads_share_batches_and_get_the_plain_answers(model, voices, tmp_path):
    url = f"sqlite:///{tmp_path / 'b.sqlite'}"
    stats: list[BatchStats] = []
    batcher = BatchingEmbedder(model, max_wait_s=0.05, on_batch=stats.append)
    probes = [*voices["p225"][3:9], *voices["p226"][:6]]
    try:
        with SpeakerDB.open(url, model=model) as plain:
            plain.enroll("alice", voices["p225"][:3])
            expected = [plain.verify("alice", p) for p in probes]
            shared = SpeakerDB(plain.store, batcher)
            answers: list = [None] * len(probes)
            barrier = threading.Barrier(len(probes))

            def ask(i: int) -> None:
                barrier.wait()
                with batcher.announce():
                    answers[i] = shared.verify("alice", probes[i])

            threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(probes))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    finally:
        batcher.close()
    for want, got in zip(expected, answers, strict=True):
        assert got.accepted == want.accepted and got.source == want.source
        assert got.score == pytest.approx(want.score, abs=1e-5)
    assert sum(s.requests for s in stats) == len(probes)
    assert len(stats) < len(probes) and max(s.requests for s in stats) > 1


def test_uploads_are_named_by_their_label_and_too_long_ones_are_not_decoded(model, voices):
    batcher = BatchingEmbedder(model)
    try:
        good = Upload(voices["p225"][0], "upload:call.wav")
        refused = TooLongError("upload:long.wav", "is longer than this server accepts")
        # The path does not even exist: a pre-judged upload is never opened.
        long = Upload(voices["p225"][0].parent / "absent.wav", "upload:long.wav", refused)
        broken = Upload(voices["p225"][0].parent / "absent.wav", "upload:gone.wav")
        results = batcher.embed([good, long, broken])
    finally:
        batcher.close()
    assert [r.source for r in results] == ["upload:call.wav", "upload:long.wav", "upload:gone.wav"]
    assert results[0].vector is not None
    assert np.allclose(results[0].vector, model.get_embedding(voices["p225"][0]), atol=1e-5)
    assert results[1].error is refused
    assert results[2].error is not None and results[2].error.code == "file_not_found"
    assert results[2].error.source == "upload:gone.wav"
    assert "absent.wav" not in results[2].error.message


def test_a_call_that_is_not_served_in_time_is_busy_and_a_closed_batcher_refuses(model, voices):
    batcher = BatchingEmbedder(model, timeout_s=0.001)
    try:
        with pytest.raises(BusyError):
            batcher.embed(voices["p225"][:4])
    finally:
        batcher.close()
    with pytest.raises(BusyError):
        batcher.embed(voices["p225"][:1])


def test_enrollments_of_several_threads_skip_their_own_known_audio(model, voices, tmp_path):
    """Skip predicates stay with their request inside a shared batch."""
    url = f"sqlite:///{tmp_path / 'e.sqlite'}"
    batcher = BatchingEmbedder(model, max_wait_s=0.05)
    try:
        with SpeakerDB.open(url, model=model) as plain:
            plain.enroll("a", voices["p225"][:2])
            plain.enroll("b", voices["p226"][:2])
            shared = SpeakerDB(plain.store, batcher)
            reports: dict[str, object] = {}
            barrier = threading.Barrier(2)

            def enroll(name: str, files: list) -> None:
                barrier.wait()
                with batcher.announce():
                    reports[name] = shared.enroll(name, files)

            threads = [
                threading.Thread(target=enroll, args=("a", voices["p225"][:3])),
                threading.Thread(target=enroll, args=("b", voices["p226"][1:4])),
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert [i.status for i in reports["a"].inputs] == ["duplicate", "duplicate", "accepted"]
            assert [i.status for i in reports["b"].inputs] == ["duplicate", "accepted", "accepted"]
            assert plain.speaker("a").utterances == 3 and plain.speaker("b").utterances == 4
    finally:
        batcher.close()


def test_uploads_are_private_files_removed_afterwards(voices, tmp_path):
    import io
    import stat

    from speakerdb.service._uploads import received_uploads

    data = voices["p225"][0].read_bytes()
    files = [("../../etc/evil\nname.wav", io.BytesIO(data)), (None, io.BytesIO(b"junk"))]
    with received_uploads(files, max_seconds=4.0, folder=str(tmp_path)) as uploads:
        (folder,) = list(tmp_path.iterdir())
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        for upload in uploads:
            assert stat.S_IMODE(upload.path.stat().st_mode) == 0o600
            assert upload.path.parent == folder
        assert uploads[0].path.read_bytes() == data
        assert uploads[0].label == "upload:evil\\x0aname.wav" and uploads[1].label == "upload:file2"
        assert uploads[0].error is not None and uploads[0].error.code == "too_long"  # 6 s > 4 s
        assert uploads[1].error is None  # not audio: the library says so, in its words
    assert list(tmp_path.iterdir()) == []


def test_a_plain_speakerdb_answers_threads_as_it_answers_one(voices, tmp_path):
    """No batcher: threads share one SpeakerDB -- its store, its encoder pools, and one
    model, loaded once although every thread asks for it at the same moment."""
    url = f"sqlite:///{tmp_path / 'p.sqlite'}"
    probes = [*voices["p225"][3:7], *voices["p226"][:4]]
    with SpeakerDB.open(url, device="cpu") as loader:
        loader.enroll("alice", voices["p225"][:3])
    with SpeakerDB.open(url, device="cpu") as db:
        assert not db.model_loaded
        answers: list = [None] * len(probes)
        models: list[int] = [0] * len(probes)
        barrier = threading.Barrier(len(probes))

        def ask(i: int) -> None:
            barrier.wait()
            models[i] = id(db.model)
            answers[i] = db.verify("alice", probes[i])

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(probes))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        alone = [db.verify("alice", p) for p in probes]
    assert len(set(models)) == 1
    for together, one in zip(answers, alone, strict=True):
        assert together.score == pytest.approx(one.score, abs=1e-6)
    assert [v.accepted for v in alone] == [True] * 4 + [False] * 4


def test_headers_that_understate_the_length_do_not_let_long_audio_through(model, tmp_path):
    """The duration limit trusts libsndfile's headers only because libsndfile then decodes
    no more than they declare: a WAV or FLAC holding 20 s behind a 2 s header is embedded
    as 2 s, and FFmpeg's formats are counted by decoding, up to the limit."""
    import struct

    import soundfile as sf

    from speakerdb.service._uploads import duration_beyond

    one, rate = speech_sample()
    speech = np.tile(one, int(20 * rate / len(one)) + 1)[: 20 * rate]
    wav = tmp_path / "lie.wav"
    sf.write(wav, speech, rate, subtype="PCM_16")
    data = bytearray(wav.read_bytes())
    at = data.find(b"data")
    struct.pack_into("<I", data, at + 4, rate * 2 * 2)  # declares 2 s of 16-bit samples
    wav.write_bytes(bytes(data))
    flac = tmp_path / "lie.flac"
    sf.write(flac, speech, rate)
    data = bytearray(flac.read_bytes())
    fields = int.from_bytes(data[18:26], "big")  # STREAMINFO: 36 bits of total samples
    data[18:26] = ((fields & ~((1 << 36) - 1)) | 2 * rate).to_bytes(8, "big")
    flac.write_bytes(bytes(data))
    for path in (wav, flac):
        assert duration_beyond(path, 4.0) is None  # the header says 2 s ...
        decoded = model.embed([path])[0]
        assert decoded.duration == pytest.approx(2.0, abs=0.01), path  # ... and 2 s decode
    mp4 = tmp_path / "long.m4a"
    write_aac(mp4, speech, rate)
    assert duration_beyond(mp4, 4.0) == float("inf")  # counted by decoding, stopped early
    assert duration_beyond(mp4, 60.0) is None
