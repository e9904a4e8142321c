"""The diarization pipeline without a database: recording -> anonymous voices and turns.

stream decode -> speech probabilities + window embeddings (:mod:`._windows`) -> speech
mask (:mod:`._speech`) and speech windows -> clusters (:mod:`._cluster`) -> frame labels
and turns (:mod:`._turns`) -> one voiceprint per voice. Everything after the embeddings is
:func:`find_turns`, cheap, so that benchmarks can re-run it with other settings. Naming
the voices against enrolled speakers is the database's business
(:meth:`speakerdb.SpeakerDB.diarize`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from speakerdb.diarize._cluster import MIN_CLUSTER_WINDOWS, SpeakerCount, centroids, cluster_windows
from speakerdb.diarize._result import Diarization, DiarizedSpeaker, Turn
from speakerdb.diarize._speech import FRAME_SECONDS, SpeechSettings, speech_mask
from speakerdb.diarize._stream import AudioStream, open_stream
from speakerdb.diarize._turns import MAX_PAUSE, MIN_TURN, frame_labels, segments_of
from speakerdb.diarize._windows import (
    CONFIDENT_SPEECH,
    DEFAULT_HOP,
    DEFAULT_WINDOW,
    WindowEmbeddings,
    embed_windows,
    speech_windows,
)
from speakerdb.errors import NoSpeechError, UsageError
from speakerdb.model._audio import SAMPLE_RATE

if TYPE_CHECKING:
    from speakerdb.model._audio import AudioInput
    from speakerdb.model._embedder import Embedder

__all__ = [
    "CLUSTER_THRESHOLDS",
    "MIN_NAMING_SECONDS",
    "DiarizationSettings",
    "FoundTurns",
    "VoiceAnalysis",
    "analyse_voices",
    "cluster_threshold_for",
    "diarize",
    "find_turns",
]

VOICEPRINT_SECONDS = 30.0
"""Speech (s) re-embedded per voice for its voiceprint: its longest turns, up to this much
(about as much as a good enrollment; it bounds the audio held for the second pass to
2 MB per voice, whatever the recording's length)."""
VOICEPRINT_MARGIN = 0.25
"""Seconds cut from both ends of each turn used for a voiceprint (where voices change)."""

MIN_NAMING_SECONDS = 3.0
"""A voice with less speech than this (s) is not named: two or three short windows make
an unreliable voiceprint (enrollment recommends far more)."""

CLUSTER_THRESHOLDS = {"ge2e": 0.60}
"""Per model family, for agglomerative clustering (only when asked for with
``cluster_threshold``; the default is spectral clustering, which needs no threshold): the
least average cosine similarity between the windows of two groups for them to be one
voice. Chosen on the 16 kHz development conversations; it does not carry over to 8 kHz
phone speech (docs/diarization.md)."""

_FALLBACK_RATIO = 0.60 / 0.82
"""For a family without its own value: the same ratio to its verification threshold as
GE2E's (0.60 against 0.82). A guess, not measured."""


def cluster_threshold_for(model: Embedder) -> float:
    """The agglomerative clustering threshold of a model (see :data:`CLUSTER_THRESHOLDS`)."""
    own = CLUSTER_THRESHOLDS.get(model.identity.name)
    if own is not None:
        return own
    return float(model.default_threshold) * _FALLBACK_RATIO


@dataclass(frozen=True)
class DiarizationSettings:
    """How to diarize. num_speakers / min_speakers / max_speakers: what is known of the
    number of voices; window / hop: embedding windows (s); cluster_threshold: None for
    spectral clustering (the default), else agglomerative clustering at this cosine (see
    :data:`CLUSTER_THRESHOLDS`); min_turn / max_pause: see :mod:`speakerdb.diarize._turns`;
    vad_onset / vad_offset / vad_min_pause / vad_min_speech: the speech mask's hysteresis
    (:class:`speakerdb.diarize._speech.SpeechSettings`); resegment: frames re-assigned by
    soft votes of the windows covering them (:func:`speakerdb.diarize._turns.frame_labels`)."""

    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None
    window: float = DEFAULT_WINDOW
    hop: float = DEFAULT_HOP
    cluster_threshold: float | None = None
    min_turn: float = MIN_TURN
    max_pause: float = MAX_PAUSE
    vad_onset: float = SpeechSettings.onset
    vad_offset: float = SpeechSettings.offset
    vad_min_pause: float = SpeechSettings.min_pause
    vad_min_speech: float = SpeechSettings.min_speech
    resegment: bool = False

    @classmethod
    def of(
        cls,
        num_speakers: int | None = None,
        min_speakers: int | None = None,
        max_speakers: int | None = None,
        options: dict[str, Any] | None = None,
    ) -> DiarizationSettings:
        """Settings from the speaker counts and further fields by name (``options``, as the
        ``**options`` of :func:`diarize` take them), checked. Raises UsageError for an
        unknown field or impossible settings."""
        try:
            settings = cls(
                num_speakers=num_speakers,
                min_speakers=min_speakers,
                max_speakers=max_speakers,
                **(options or {}),
            )
        except TypeError as exc:
            raise UsageError(f"unknown diarization option ({exc})") from None
        settings.check()
        return settings

    def count(self) -> SpeakerCount:
        return SpeakerCount(self.num_speakers, self.min_speakers, self.max_speakers)

    def speech(self) -> SpeechSettings:
        return SpeechSettings(
            self.vad_onset, self.vad_offset, self.vad_min_pause, self.vad_min_speech
        )

    def check(self) -> None:
        """Raise UsageError for impossible settings (before any audio is read)."""
        self.count()
        if self.cluster_threshold is not None and not -1.0 <= self.cluster_threshold <= 1.0:
            raise UsageError(
                f"the clustering threshold is a cosine in [-1, 1], not {self.cluster_threshold}"
            )
        if self.min_turn < 0 or self.max_pause < 0:
            raise UsageError("min_turn and max_pause must be >= 0 seconds")
        self.speech().check()


@dataclass(frozen=True)
class VoiceAnalysis:
    """The voices of one recording before naming.

    segments: turns ``(start s, end s, voice)``, voices numbered 0..k-1 in order of first
    appearance; voiceprints: (k, D) float32 unit-norm; speech_seconds: (k,) per voice;
    turn_counts: (k,) turns per voice; voiceprint_seconds: (k,) speech behind each
    voiceprint (after the engine's silence trimming); bandwidth_hz: of the voiceprints'
    audio (for calibration; None if unmeasured); windows: how many
    windows were embedded; parameters: the settings actually used; notes: what the caller
    asked for that could not be done as asked (a number of voices the speech cannot hold).
    """

    source: str
    duration: float
    segments: list[tuple[float, float, int]]
    voiceprints: npt.NDArray[np.float32]
    speech_seconds: npt.NDArray[np.float64]
    turn_counts: npt.NDArray[np.int64]
    bandwidth_hz: float | None
    voiceprint_seconds: npt.NDArray[np.float64]
    windows: int
    parameters: dict[str, Any]
    notes: tuple[str, ...] = ()

    @property
    def num_voices(self) -> int:
        return int(self.voiceprints.shape[0])


def analyse_voices(
    audio: AudioInput,
    model: Embedder,
    settings: DiarizationSettings | None = None,
    *,
    sample_rate: int | None = None,
    progress: Callable[[float, float], None] | None = None,
) -> VoiceAnalysis:
    """Find the voices of a recording and when each speaks.

    Raises UsageError for bad settings, AudioError subclasses for unusable audio, and
    NoSpeechError when no speech is found.
    """
    settings = settings or DiarizationSettings()
    settings.check()
    stream = open_stream(audio, sample_rate)
    embedded = embed_windows(
        stream, model, window=settings.window, hop=settings.hop, progress=progress
    )
    found = find_turns(embedded, settings, stream.source)
    segments, k = found.segments, found.num_voices
    window_prints = centroids(found.vectors, found.labels, int(found.labels.max()) + 1)[
        found.voices
    ]
    seconds = np.zeros(k)
    counts = np.zeros(k, dtype=np.int64)
    for s, e, c in segments:
        seconds[c] += e - s
        counts[c] += 1
    prints, probe_seconds, bandwidth = _voiceprints(stream, model, segments, k, window_prints)
    return VoiceAnalysis(
        source=stream.source,
        duration=embedded.duration,
        segments=segments,
        voiceprints=prints,
        speech_seconds=seconds,
        turn_counts=counts,
        bandwidth_hz=bandwidth,
        voiceprint_seconds=probe_seconds,
        windows=int(found.vectors.shape[0]),
        parameters=found.parameters,
        notes=found.notes,
    )


@dataclass(frozen=True)
class FoundTurns:
    """The cheap part of diarization, from window embeddings to turns.

    segments: turns ``(start s, end s, voice)``, voices numbered 0..k-1 in order of first
    appearance; vectors: (n, D) the speech windows' embeddings; labels: (n,) their clusters;
    voices: (k,) the cluster of each voice; parameters / notes as in :class:`VoiceAnalysis`.
    """

    segments: list[tuple[float, float, int]]
    vectors: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int64]
    voices: npt.NDArray[np.int64]
    parameters: dict[str, Any]
    notes: tuple[str, ...]

    @property
    def num_voices(self) -> int:
        return int(self.voices.size)


def find_turns(
    embedded: WindowEmbeddings, settings: DiarizationSettings, source: str = "<array>"
) -> FoundTurns:
    """Speech mask, speech windows, clusters and turns of embedded windows. Raises
    NoSpeechError when no speech is found."""
    parameters: dict[str, Any] = {
        "window": settings.window,
        "hop": settings.hop,
        "clustering": "spectral" if settings.cluster_threshold is None else "agglomerative",
        "cluster_threshold": settings.cluster_threshold,
        "min_turn": settings.min_turn,
        "max_pause": settings.max_pause,
        "num_speakers": settings.num_speakers,
        "min_speakers": settings.min_speakers,
        "max_speakers": settings.max_speakers,
        "vad": "silero",
        "vad_onset": settings.vad_onset,
        "vad_offset": settings.vad_offset,
        "vad_min_pause": settings.vad_min_pause,
        "vad_min_speech": settings.vad_min_speech,
        "resegment": settings.resegment,
    }
    speech = speech_mask(embedded.speech, settings.speech())
    # Voices are learnt from confident speech only (silero's own default threshold, not
    # fitted here): a permissive mask finds the quiet ends of words, but windows made of
    # them embed breath and room noise, which spectral clustering takes for another voice.
    confident = speech & (embedded.speech >= CONFIDENT_SPEECH)
    windows = embedded.select(speech_windows(embedded, confident))
    if windows.vectors.shape[0] == 0:
        raise NoSpeechError(source, "no speech detected")
    # A number of voices the speech cannot hold (--num-speakers 1000 on two minutes) is
    # lowered to what it can, and the answer says so.
    count, note = settings.count().bounded(
        int(windows.vectors.shape[0]), float(np.count_nonzero(speech)) * FRAME_SECONDS
    )
    notes = (note,) if note is not None else ()
    if note is not None:
        parameters["voice_limit"] = count.num if count.num is not None else count.min
    labels = cluster_windows(
        windows.vectors, settings.cluster_threshold, count, min_windows=MIN_CLUSTER_WINDOWS
    )
    weights = None
    if settings.resegment:
        # Each window votes for every voice by how much closer it is to that voice's
        # centroid than to the others on average: windows astride a change of speaker,
        # close to neither, weigh little against those inside a turn.
        k = int(labels.max()) + 1
        similarity = windows.vectors @ centroids(windows.vectors, labels, k).T
        weights = similarity - similarity.mean(axis=1, keepdims=True)
    frames = frame_labels(speech, windows.starts, windows.ends, labels, weights)
    raw_segments = segments_of(frames, settings.min_turn, settings.max_pause)
    # Renumber the voices that kept turns in order of first appearance.
    order: dict[int, int] = {}
    for _, _, c in raw_segments:
        order.setdefault(c, len(order))
    if not order:
        raise NoSpeechError(source, "no speech detected")
    return FoundTurns(
        segments=[(s, e, order[c]) for s, e, c in raw_segments],
        vectors=windows.vectors,
        labels=labels,
        voices=np.array(list(order), dtype=np.int64),
        parameters=parameters,
        notes=notes,
    )


def _voiceprints(
    stream: AudioStream,
    model: Embedder,
    segments: list[tuple[float, float, int]],
    k: int,
    fallback: npt.NDArray[np.float32],
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64], float | None]:
    """One voiceprint per voice, embedded like an enrollment recording: the audio of the
    voice's longest turns (less :data:`VOICEPRINT_MARGIN` at each end), up to
    :data:`VOICEPRINT_SECONDS`, read in a second pass over the stream and embedded as one
    utterance. A voice whose audio the engine cannot embed keeps the mean of its window
    embeddings (``fallback``, (k, D)). Returns (k, D) voiceprints, (k,) speech seconds
    behind each (the windows' turn seconds for a fallback) and the audio bandwidth."""
    pieces: list[list[tuple[int, int]]] = [[] for _ in range(k)]
    by_length = sorted(segments, key=lambda seg: seg[0] - seg[1])
    budget = np.full(k, VOICEPRINT_SECONDS)
    for start, end, voice in by_length:
        a, b = start + VOICEPRINT_MARGIN, end - VOICEPRINT_MARGIN
        take = min(b - a, budget[voice])
        if take >= 0.5:
            pieces[voice].append((round(a * SAMPLE_RATE), round((a + take) * SAMPLE_RATE)))
            budget[voice] -= take
    wanted = sorted((a, b, v) for v, spans in enumerate(pieces) for a, b in spans)
    audio: list[list[npt.NDArray[np.float32]]] = [[] for _ in range(k)]
    position = 0
    for block in stream.blocks():
        end = position + block.size
        for a, b, v in wanted:
            if a < end and b > position:
                audio[v].append(block[max(a, position) - position : min(b, end) - position].copy())
        position = end
    prints = fallback.copy()
    seconds = np.array([sum(e - s for s, e, c in segments if c == v) for v in range(k)])
    bandwidths: list[float] = []
    for v in range(k):
        if not audio[v]:
            continue
        # One voice at a time, its pieces released as soon as it is embedded.
        samples = np.concatenate(audio[v])
        audio[v] = []
        result = model.embed([samples], sample_rate=SAMPLE_RATE)[0]
        del samples
        if result.vector is not None:
            prints[v] = result.vector
            seconds[v] = float(result.speech_seconds or 0.0)
            if result.bandwidth_hz is not None:
                bandwidths.append(result.bandwidth_hz)
    return prints, seconds, (float(np.median(bandwidths)) if bandwidths else None)


def anonymous(analysis: VoiceAnalysis, model_label: str, prefix: str = "speaker") -> Diarization:
    """The analysis as a Diarization with labels ``speaker_1``, ``speaker_2``..."""
    labels = [f"{prefix}_{i + 1}" for i in range(analysis.num_voices)]
    return Diarization(
        source=analysis.source,
        duration=analysis.duration,
        turns=[Turn(s, e, labels[c]) for s, e, c in analysis.segments],
        speakers=[
            DiarizedSpeaker(
                label, None, float(analysis.speech_seconds[i]), int(analysis.turn_counts[i])
            )
            for i, label in enumerate(labels)
        ],
        model=model_label,
        parameters=analysis.parameters,
        notes=list(analysis.notes),
    )


def diarize(
    audio: AudioInput,
    model: str | Embedder | None = None,
    *,
    num_speakers: int | None = None,
    min_speakers: int | None = None,
    max_speakers: int | None = None,
    sample_rate: int | None = None,
    progress: Callable[[float, float], None] | None = None,
    **options: Any,
) -> Diarization:
    """Who spoke when, without a database: anonymous labels ``speaker_1``, ``speaker_2``...

    model: a loaded Embedder, a model name, or None (the default model). options: further
    :class:`DiarizationSettings` fields (window, hop, cluster_threshold, min_turn,
    max_pause). progress: ``progress(seconds_done, total_seconds)``.
    """
    from speakerdb.model._embedder import Embedder
    from speakerdb.model._registry import DEFAULT_MODEL, load_model

    embedder = model if isinstance(model, Embedder) else load_model(model or DEFAULT_MODEL)
    settings = DiarizationSettings.of(num_speakers, min_speakers, max_speakers, options)
    analysis = analyse_voices(audio, embedder, settings, sample_rate=sample_rate, progress=progress)
    return anonymous(analysis, embedder.identity.label)
