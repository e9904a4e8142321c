"""The one exception tree of speakerdb.

Every error the library raises on purpose derives from :class:`SpeakerDBError`. Lower-level
exceptions (soundfile, PyAV, SQLAlchemy, FAISS, torch) are translated into these at the module
that calls the lower-level library, so users never need to catch third-party types.

Each class has its own short machine-readable ``code`` (used in enrollment reports and
``--json`` output; no two classes share one) and the message is a single line fit for
``error: <message>`` on a terminal: file names are escaped by :func:`printable`, so a name
holding a newline or a terminal control sequence cannot split or forge output lines.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "AlreadyExistsError",
    "AudioDecodeError",
    "AudioError",
    "AudioNotFoundError",
    "BusyError",
    "ConfigurationError",
    "ConsentRequiredError",
    "DatabaseNotFoundError",
    "EnrollmentRefusedError",
    "InvalidAudioError",
    "MissingDependencyError",
    "ModelError",
    "ModelMismatchError",
    "ModelNotFoundError",
    "NoSpeechError",
    "NotASpeakerDBError",
    "NotFoundError",
    "OptedOutError",
    "RecordingsMissingError",
    "SchemaOutOfDateError",
    "SessionLimitError",
    "SpeakerDBError",
    "SpeakerNotFoundError",
    "SpoofDetectedError",
    "StoreError",
    "TooLittleSpeechError",
    "TooLongError",
    "UsageError",
    "printable",
]


def printable(text: str | os.PathLike[str]) -> str:
    """``text`` with every control, separator or invisible format character escaped
    (``\\n``, ``\\x1b``, ``\\u202e`` ...) and backslashes doubled, so it stays on one line
    and shows what it is. Ordinary spaces and visible Unicode are kept as they are."""
    import unicodedata

    out: list[str] = []
    for char in os.fspath(text):
        if char == "\\":
            out.append("\\\\")
        elif char == " " or unicodedata.category(char)[0] not in ("C", "Z"):
            out.append(char)
        else:
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    return "".join(out)


class SpeakerDBError(Exception):
    """Base class of every error speakerdb raises on purpose."""

    code = "error"

    def __init__(self, message: str) -> None:
        # One line, always: the CLI prints it as `error: <message>`; control characters
        # that survive (escape sequences) are shown escaped, never sent to a terminal.
        one_line = " ".join(str(message).split())
        super().__init__("".join(c if c.isprintable() else printable(c) for c in one_line))

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class UsageError(SpeakerDBError):
    """An argument is invalid (bad threshold, malformed manifest line, unknown mode...)."""

    code = "usage"


class SessionLimitError(UsageError):
    """A live session reached one of its limits and ended. ``limit``: "duration" (seconds
    of audio), "bytes" (of input), "silence" (seconds of audio without speech) or "idle"
    (wall-clock seconds without input, a server's)."""

    code = "limit"

    def __init__(self, message: str, limit: str = "duration") -> None:
        self.limit = limit
        super().__init__(message)


class ConsentRequiredError(UsageError):
    """The database requires recorded consent for every enrollment (``speakerdb db set
    require-consent on``) and none was given (CLI ``--consent TEXT``)."""

    code = "consent_required"


class OptedOutError(UsageError):
    """The name was opted out (``speakerdb speakers opt-out``): it cannot be enrolled again
    until an administrator lifts the opt-out (``speakerdb speakers opt-in``)."""

    code = "opted_out"


class ConfigurationError(SpeakerDBError):
    """The environment is not set up for the request (bad database URL, unknown model...)."""

    code = "configuration"


class BusyError(SpeakerDBError):
    """The work could not be done within its time limit (a server too busy to embed a
    request's recordings in time); trying again later may succeed."""

    code = "busy"


class MissingDependencyError(ConfigurationError):
    """An optional package needed for this feature is not installed."""

    code = "missing_dependency"


# --- audio -------------------------------------------------------------------------------------


class AudioError(SpeakerDBError):
    """An input recording cannot be used. ``source`` names the file (or ``<array>``)."""

    code = "audio"

    def __init__(self, source: str | Path, reason: str) -> None:
        self.source = str(source)
        self.reason = reason
        super().__init__(f"{printable(self.source)}: {reason}")


class AudioNotFoundError(AudioError):
    """The path does not exist."""

    code = "file_not_found"


class AudioDecodeError(AudioError):
    """The file exists but is not decodable audio: a directory, empty, truncated, corrupt or
    not audio at all."""

    code = "unreadable"


class InvalidAudioError(AudioError):
    """Decoded samples are unusable: non-finite values, unsupported sample rate, bad shape."""

    code = "invalid"


class NoSpeechError(AudioError):
    """Voice activity detection found no speech (silence, digital zero, pure noise)."""

    code = "no_speech"


class TooLittleSpeechError(AudioError):
    """There is speech, but less than the model's minimum."""

    code = "too_short"


class TooLongError(AudioError):
    """The recording is longer than a limit: the engine's (``SPEAKERDB_MAX_AUDIO_SECONDS``,
    3 h by default; also when a header declares more) or a service's upload limit."""

    code = "too_long"


class SpoofDetectedError(AudioError):
    """The database's spoofing countermeasure judged the recording an attack (synthetic,
    converted or re-synthesised speech); enrollment refuses it (docs/spoofing.md)."""

    code = "spoof_detected"


# --- models ------------------------------------------------------------------------------------


class ModelError(SpeakerDBError):
    """The embedding model cannot be loaded (missing or malformed weights, unknown name)."""

    code = "model"


class ModelNotFoundError(ModelError):
    """A database's model file or folder is not where it was last loaded from (or a --model
    path does not exist)."""

    code = "model_not_found"


class ModelMismatchError(SpeakerDBError):
    """Vectors of one model were about to be mixed with vectors of another."""

    code = "model_mismatch"


# --- store -------------------------------------------------------------------------------------


class RecordingsMissingError(SpeakerDBError):
    """Switching a database to another model needs every enrolled recording again, and some
    are gone, changed since they were enrolled, or unusable by the new model: nothing was
    switched (``--allow-missing`` switches without them)."""

    code = "recordings_missing"


class StoreError(SpeakerDBError):
    """The database or its index could not be read or written."""

    code = "store"


class SchemaOutOfDateError(StoreError):
    """The database schema is older (or newer) than this version of speakerdb expects."""

    code = "schema_out_of_date"


class NotASpeakerDBError(StoreError):
    """The database (or file) exists and holds something else: another application's
    tables, or not a database at all. speakerdb leaves it untouched."""

    code = "not_speakerdb"


class NotFoundError(SpeakerDBError):
    """A named object does not exist."""

    code = "not_found"


class DatabaseNotFoundError(NotFoundError):
    """A command that only reads was pointed at a database that does not exist (or holds no
    speakerdb schema yet); it is not created."""

    code = "database_not_found"


class SpeakerNotFoundError(NotFoundError):
    """No enrolled speaker has this name."""

    code = "speaker_not_found"

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"no enrolled speaker named {name!r}")


class EnrollmentRefusedError(SpeakerDBError):
    """Recordings appended to an enrolled speaker do not match the speaker's voiceprint as
    it was before the request (the database's decision rule rejects them): nothing of the
    request was stored. An administrator may add them anyway (``force=True``, CLI
    ``--force``, HTTP ``force`` with an admin key). ``report``: the
    :class:`~speakerdb.EnrollmentReport`, every new recording marked "refused" with its
    score."""

    code = "enrollment_refused"

    def __init__(self, message: str, report: object = None) -> None:
        self.report = report
        super().__init__(message)


class AlreadyExistsError(SpeakerDBError):
    """A named object already exists (for example: rename onto an existing speaker)."""

    code = "already_exists"
