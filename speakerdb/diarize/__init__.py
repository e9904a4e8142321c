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

from typing import TYPE_CHECKING, Any

from speakerdb._lazy import load_lazily
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

if TYPE_CHECKING:
    from speakerdb.diarize._evaluate import (
        DiarizationEntry,
        DiarizationScore,
        output_ids,
        read_diarization_manifest,
        score_diarization,
        total_score,
    )

__all__ = [
    "MIN_NAMING_SECONDS",
    "Diarization",
    "DiarizationEntry",
    "DiarizationScore",
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
    "output_ids",
    "parse_rttm",
    "read_diarization_manifest",
    "read_rttm",
    "score_diarization",
    "total_score",
    "write_rttm",
]

# Evaluation needs pyannote.metrics: loaded on first use.
_LAZY = {
    name: "speakerdb.diarize._evaluate"
    for name in (
        "DiarizationEntry",
        "DiarizationScore",
        "output_ids",
        "read_diarization_manifest",
        "score_diarization",
        "total_score",
    )
}


def __getattr__(name: str) -> Any:
    # Loaded on first use: importing the package (or any module in it) stays cheap.
    return load_lazily(globals(), _LAZY, name)


def __dir__() -> list[str]:
    return sorted(__all__)
