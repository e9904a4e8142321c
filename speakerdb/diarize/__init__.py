"""Diarization: who spoke when in a recording, and which enrolled speaker each voice is.

    from speakerdb.diarize import diarize
    result = diarize("meeting.wav")             # anonymous labels, no database
    with SpeakerDB.open("team.sqlite") as db:
        result = db.diarize("meeting.wav")      # voices named after enrolled speakers
    for turn in result.turns:                   # (start, end, label, name or None, score)
        ...

Private modules: speech activity (``_speech``, silero-vad's network in ``_silero``),
streamed decoding (``_stream``), window embeddings (``_windows``), clustering (``_cluster``,
spectral clustering in ``_spectral``), turns (``_turns``), naming (``_naming``), RTTM
(``_rttm``) and evaluation (``_evaluate``, needs pyannote.metrics). docs/diarization.md
has the held-out figures.
"""

from __future__ import annotations

from speakerdb.diarize._naming import assign_one_to_one
from speakerdb.diarize._pipeline import (
    MIN_NAMING_SECONDS,
    DiarizationSettings,
    VoiceAnalysis,
    analyse_voices,
    diarize,
)
from speakerdb.diarize._result import Diarization, DiarizedSpeaker, SpeakerMatch, Turn
from speakerdb.diarize._rttm import RttmTurn, format_rttm, parse_rttm, read_rttm, write_rttm

__all__ = [
    "MIN_NAMING_SECONDS",
    "Diarization",
    "DiarizationSettings",
    "DiarizedSpeaker",
    "RttmTurn",
    "SpeakerMatch",
    "Turn",
    "VoiceAnalysis",
    "analyse_voices",
    "assign_one_to_one",
    "diarize",
    "format_rttm",
    "parse_rttm",
    "read_rttm",
    "write_rttm",
]
