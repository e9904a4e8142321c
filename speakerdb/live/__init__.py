"""Live sessions: decisions while a caller speaks (see :meth:`SpeakerDB.session
<speakerdb.enroll._facade.SpeakerDB.session>` and docs/live.md).

The package knows audio, speech detection and sequential decisions, not SQL: the database
side (voiceprints, the decision policy) comes in as a :data:`Judge`, built by the facade.
"""

from __future__ import annotations

from speakerdb.live._events import (
    ACCEPT,
    IDENTIFIED,
    NOT_ENOUGH_SPEECH,
    REJECT,
    SPOOF_DETECTED,
    UNKNOWN,
    DecisionEvent,
    ErrorEvent,
    Event,
    ProgressEvent,
    Segment,
    SpeakerChange,
    Summary,
)
from speakerdb.live._judging import (
    Judge,
    Judgement,
    Probe,
    Screen,
    SessionLimits,
    SpoofCheck,
)
from speakerdb.live._session import LiveSession
from speakerdb.live._sources import ENCODINGS, PcmDecoder, file_chunks

__all__ = [
    "ACCEPT",
    "ENCODINGS",
    "IDENTIFIED",
    "NOT_ENOUGH_SPEECH",
    "REJECT",
    "SPOOF_DETECTED",
    "UNKNOWN",
    "DecisionEvent",
    "ErrorEvent",
    "Event",
    "Judge",
    "Judgement",
    "LiveSession",
    "PcmDecoder",
    "Probe",
    "ProgressEvent",
    "Screen",
    "Segment",
    "SessionLimits",
    "SpeakerChange",
    "SpoofCheck",
    "Summary",
    "file_chunks",
]
