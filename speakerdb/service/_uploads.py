"""Uploaded recordings: written to private temporary files, named after what the client
called them, and held to the service's duration limit before anything decodes them.

The client's file name and content type are never used to decide the format: the library
decodes by content. The name only labels the recording in answers (escaped, shortened) and
becomes its stored source, ``upload:<name>``.

Duration is judged before the library decodes the file, so that a small upload cannot make
the server decode hours of audio: from the header for the formats libsndfile reads (which
then decodes no more than the header declares), by a decoding pass that stops at the limit
for everything FFmpeg reads (whose headers may say anything).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from speakerdb.errors import TooLongError, printable
from speakerdb.service._batcher import Upload

__all__ = ["LABEL_PREFIX", "duration_beyond", "received_uploads"]

LABEL_PREFIX = "upload:"
_MAX_LABEL = 120
_COPY_CHUNK = 1 << 20
# Containers handed to libsndfile by the library (see speakerdb.model._audio).
_SNDFILE_MAGIC = (b"RIFF", b"RIFX", b"RF64", b"BW64", b"FORM", b"fLaC", b"OggS", b".snd", b"caff")


def _label(filename: str | None, fallback: str) -> str:
    """How a recording is named in answers: the base name the client gave (escaped so it
    stays one visible line, shortened), else ``fallback``."""
    name = os.path.basename((filename or "").replace("\\", "/")).strip()
    name = printable(name)[:_MAX_LABEL] if name else fallback
    return LABEL_PREFIX + name


@contextlib.contextmanager
def received_uploads(
    files: Sequence[tuple[str | None, BinaryIO]],
    *,
    max_seconds: float,
    folder: str | None = None,
) -> Iterator[list[Upload]]:
    """Copy each ``(client file name, stream)`` to a 0600 file in a fresh 0700 folder (in
    ``folder``, by default /dev/shm where there is one) and yield them as :class:`Upload`
    objects; the folder and files are deleted when the block ends, whatever happens. An
    upload longer than ``max_seconds`` carries a TooLongError and will not be decoded."""
    root = tempfile.mkdtemp(prefix="speakerdb-upload-", dir=folder or _memory_folder())
    try:
        uploads: list[Upload] = []
        for number, (filename, stream) in enumerate(files, start=1):
            path = Path(root) / f"{number}"
            # O_EXCL in a folder only we can enter: nobody can have planted a link there.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(stream, out, _COPY_CHUNK)
            label = _label(filename, f"file{number}")
            seconds = duration_beyond(path, max_seconds)
            error = None
            if seconds is not None:
                error = TooLongError(
                    label,
                    f"is longer than this server accepts ({max_seconds:g} s at most"
                    + (f", it lasts {seconds:.1f} s)" if seconds != float("inf") else ")"),
                )
            uploads.append(Upload(path, label, error))
        yield uploads
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _memory_folder() -> str | None:
    """A RAM-backed folder (Linux's /dev/shm) when there is one we may write: an upload
    then never reaches a disk (voiceprints' audio is biometric data), and writing it costs
    a tenth of a journaled file system's create, write and unlink. None: the system's
    temporary folder."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK) else None


def duration_beyond(path: Path, limit: float) -> float | None:
    """The duration (s) of the recording at ``path`` if it exceeds ``limit`` (``inf`` when
    it is beyond it but not known exactly), else None -- also when the file cannot be read
    at all: the library then reports why, in its own words."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return None
    seconds = _sndfile_seconds(path, limit) if head in _SNDFILE_MAGIC else None
    if seconds is None:  # not libsndfile's: the library hands it to FFmpeg
        seconds = _ffmpeg_seconds(path, limit)
    return seconds if seconds is not None and seconds > limit else None


def _sndfile_seconds(path: Path, limit: float) -> float | None:
    import soundfile

    try:
        info = soundfile.info(str(path))
        if info.samplerate <= 0:
            return None
        if info.frames > 0:
            return float(info.frames) / float(info.samplerate)
        # No length in the header (a stream): count what decodes, up to the limit.
        total = 0
        for block in soundfile.blocks(str(path), blocksize=1 << 16, dtype="float32"):
            total += len(block)
            if total > limit * info.samplerate:
                return float("inf")
        return total / float(info.samplerate)
    except (soundfile.LibsndfileError, RuntimeError, ValueError, OSError):
        return None


def _ffmpeg_seconds(path: Path, limit: float) -> float | None:
    import av

    try:
        container = av.open(str(path), mode="r")
    except (av.FFmpegError, UnicodeDecodeError, ValueError, OSError):
        return None
    try:
        with container:
            if not container.streams.audio:
                return None
            stream = container.streams.audio[0]
            seconds = 0.0
            for frame in container.decode(stream):
                if frame.sample_rate:
                    seconds += frame.samples / frame.sample_rate
                if seconds > limit:
                    return float("inf")
            return seconds
    except (av.FFmpegError, ValueError, OSError):
        return None
