"""A live session: PCM chunks in, events out, decided by the database's one rule.

Audio path: each chunk is checked (nothing changes when it is refused), converted to
float32, resampled to 16 kHz by the engine's streaming resampler (GE2E's filter, held back
only by the filter's own span so events are not delayed) and framed for the trained speech
detector (silero-vad, 32 ms frames, the diarizer's onset/offset hysteresis applied causally;
the process's sessions share its passes, :mod:`speakerdb.diarize._speech_batch`).

Decisions: the audio of the current *segment* (the voice since the last speaker change) is
re-scored each time enough new speech has come: every :data:`EVALUATE_EVERY_SECONDS` at
first, then every quarter of the speech so far. While the segment is undecided, and at
close, the :data:`Judge` -- the same embedder and decision policy as a file answer --
embeds the segment's audio. Once it is decided, a re-scoring first judges an *estimate*:
the mean of the segment's window embeddings (GE2E models: :mod:`speakerdb.live._windows`,
each speech window encoded once as it arrives), which costs no encoding; only when the
estimate's decision differs from the one held does the engine embed the segment again and
the rule decide on that. So every decision event is the rule's answer on the engine's
embedding of the segment, as offline (the estimate cannot be that: the engine trims
silence and normalises volume over the whole recording), while a decided call costs one
window encoding per 0.38 s of speech. Models without window embeddings re-embed at every
re-scoring. The segment audio scored is capped at the last
:data:`MAX_SEGMENT_AUDIO_SECONDS`: calls up to that length get the offline answer on the
same audio at close; longer ones are decided on their most recent minute.

The sequential rule on top of the one rule: no decision before
:data:`MIN_DECISION_SPEECH_SECONDS` of speech; ACCEPT (or IDENTIFIED) as soon as the rule
accepts; REJECT (UNKNOWN) early only when the LLR is :data:`EARLY_REJECT_MARGIN` below the
threshold, else once :data:`FIRM_SPEECH_SECONDS` of speech are in. Once decided, the
decision follows the rule on all the segment's speech, and a decision event is emitted
only when it changes. The calibration takes the probe's speech duration as an input, so
a short probe's LLR is already shrunk towards zero: an early accept is the rule's.

Countermeasure: where the database has one (a :class:`Screen`), the first time a segment
is decided its first :attr:`Screen.samples` of audio (4.04 s for AASIST: the offline
answer's head of the recording) are checked, once per segment; a segment decided on less
audio than that is checked again at close. A detected attack turns the decision into
SPOOF_DETECTED, which is never accepted (as offline: whatever the speaker rule says).

Speaker change: at each new window embedding (GE2E: every 0.38 s of speech), from the
first :data:`CHANGE_WINDOW_COUNT` windows on (decided or not), the mean of the last
:data:`CHANGE_WINDOW_COUNT` window embeddings (models without them: every
:data:`CHANGE_EVERY_SECONDS` of speech, the last :data:`CHANGE_WINDOW_SECONDS` of speech
embedded by the judge) is a check window, judged against the segment's own earlier ones by
the change rule (:mod:`speakerdb.live._change`). On a change a new segment starts at the
window's start, decided afresh, and the check windows restart after it. The change
constants were chosen leave-one-set-out (benchmarks/live_change_choice.py); the others are
set from first principles (the rule's own threshold, window lengths a GE2E voiceprint
needs); benchmarks/live_sessions.py measures them. The values a session exchanges with the
database are in :mod:`speakerdb.live._judging`.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

import numpy as np
import numpy.typing as npt

from speakerdb.diarize._speech import FRAME_SAMPLES, FRAME_SECONDS, SpeechDetector, SpeechSettings
from speakerdb.diarize._speech_batch import BatchedSpeechNet
from speakerdb.errors import InvalidAudioError, SessionLimitError, UsageError
from speakerdb.live._change import VoiceChecks
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
    Anchor,
    Judge,
    Judgement,
    Probe,
    Screen,
    SessionLimits,
    SpoofCheck,
)
from speakerdb.live._windows import SegmentWindows, WindowEncoder
from speakerdb.model._audio import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, SAMPLE_RATE
from speakerdb.model._embedder import single_threaded_torch
from speakerdb.model._resampling import GE2E_RESAMPLING, StreamResampler

__all__ = [
    "CHANGE_EVERY_SECONDS",
    "CHANGE_WINDOW_COUNT",
    "CHANGE_WINDOW_SECONDS",
    "EARLY_REJECT_MARGIN",
    "EVALUATE_EVERY_SECONDS",
    "FIRM_SPEECH_SECONDS",
    "MAX_SEGMENT_AUDIO_SECONDS",
    "MIN_DECISION_SPEECH_SECONDS",
    "LiveSession",
]

EVALUATE_EVERY_SECONDS = 1.0
MIN_DECISION_SPEECH_SECONDS = 2.0
FIRM_SPEECH_SECONDS = 6.0
EARLY_REJECT_MARGIN = 4.0  # natural-log LLR units: 55x less likely than at the threshold
CHANGE_WINDOW_SECONDS = 3.0
CHANGE_EVERY_SECONDS = 0.5
CHANGE_WINDOW_COUNT = 6  # window embeddings per check: 1.6 s each, 0.38 s apart = 3.5 s
MAX_SEGMENT_AUDIO_SECONDS = 60.0
_WINDOW_FRAMES = round(CHANGE_WINDOW_SECONDS / FRAME_SECONDS)
_STEP_SECONDS = 0.25  # a long chunk is worked through in steps, so events come where due


@dataclass
class _Frame:
    start: float  # seconds since the session began
    samples: npt.NDArray[np.float32]
    speech: bool


class LiveSession:
    """One live session; see the module docstring. Made by ``SpeakerDB.session()``.

    ``feed(chunk, sample_rate)``: chunk (n,) or (n, 1) int16 or float32 PCM, mono, at
    ``sample_rate`` Hz (8-768 kHz, the same for the whole session); returns the events it
    caused. Refused input raises UsageError (wrong dtype, a changed rate, a closed session)
    or InvalidAudioError (stereo, non-finite samples, a rate out of range) and changes
    nothing. A limit reached ends the session: the events end with a fatal ErrorEvent and
    later feeds raise SessionLimitError. ``close()`` decides on all the audio of the current
    segment and returns the :class:`Summary`. Not thread-safe: one feed at a time.
    """

    def __init__(
        self,
        judge: Judge,
        speaker: str | None,
        limits: SessionLimits | None = None,
        on_close: Callable[[Summary], None] | None = None,
        screen: Screen | None = None,
        windows: WindowEncoder | None = None,
    ) -> None:
        self.limits = limits or SessionLimits()
        self.limits.check()
        self._judge = judge
        self._screen = screen
        self._on_close = on_close  # e.g. the database's audit entry for the session
        self.speaker = speaker
        self.mode = "verify" if speaker is not None else "identify"
        self._settings = SpeechSettings()
        # Shared by the process's sessions: concurrent sessions' frames share one pass.
        self._detector = SpeechDetector(BatchedSpeechNet.shared())
        self._rate: int | None = None
        self._resampler: StreamResampler | None = None
        self._unframed = np.zeros(0, np.float32)
        self._samples_in = 0
        self._frames_out = 0
        self._bytes = 0
        self._in_speech = False
        self._speech_seconds = 0.0
        self._silence_run = 0.0
        self._ended: SessionLimitError | None = None
        self._summary: Summary | None = None
        self._decisions: list[DecisionEvent] = []
        self._changes: list[SpeakerChange] = []
        self._segments: list[Segment] = []
        self._recent: collections.deque[_Frame] = collections.deque()
        self._window_encoder = windows
        self._bandwidth: float | None = None  # of the last audio the engine embedded
        self.exact_judgements = 0  # audio embedded by the engine (the offline path): its cost
        self._new_segment(0.0, [])

    # --- public -------------------------------------------------------------------------------

    @property
    def time(self) -> float:
        """Seconds of audio received so far."""
        return self._samples_in / self._rate if self._rate else 0.0

    @property
    def speech_seconds(self) -> float:
        return self._speech_seconds

    @property
    def closed(self) -> bool:
        return self._summary is not None

    @property
    def ended_by(self) -> str | None:
        """The limit that ended the session ("duration", "bytes", "silence"), or None."""
        return self._ended.limit if self._ended is not None else None

    def feed(self, chunk: npt.NDArray[np.generic], sample_rate: int) -> list[Event]:
        if self._summary is not None:
            raise UsageError("this live session is closed")
        if self._ended is not None:
            raise SessionLimitError(f"the session has ended: {self._ended}", self._ended.limit)
        samples = self._checked(chunk, sample_rate)
        events: list[Event] = []
        nbytes = int(np.asarray(chunk).nbytes)
        if self._bytes + nbytes > self.limits.max_bytes:
            return self._end("bytes", f"more than {self.limits.max_bytes} bytes of audio")
        seconds = samples.size / sample_rate
        if self.time + seconds > self.limits.max_seconds:
            return self._end("duration", f"more than {self.limits.max_seconds:g} s of audio")
        if self._resampler is None:
            self._rate = int(sample_rate)
            self._resampler = StreamResampler(self._rate, SAMPLE_RATE, GE2E_RESAMPLING, min_call=0)
        self._bytes += nbytes
        step = max(1, int(_STEP_SECONDS * sample_rate))
        for first in range(0, samples.size, step):
            part = samples[first : first + step]
            self._samples_in += part.size
            with single_threaded_torch():  # small convolutions: threads only add barriers
                resampled = self._resampler.feed(part)
            events += self._take(resampled)
            if self._silence_run > self.limits.max_silence_seconds:
                events += self._end(
                    "silence", f"no speech for {self.limits.max_silence_seconds:g} s"
                )
                break
        return events

    def close(self) -> Summary:
        """End the session (idempotent): the last samples are decided, then the current
        segment is scored on all its audio (the offline answer on it) and the summary made."""
        if self._summary is not None:
            return self._summary
        if self._ended is None and self._resampler is not None:
            with single_threaded_torch():
                rest = self._resampler.finish()
                self._unframed = np.concatenate([self._unframed, rest])
                # The detector already holds the unframed samples before ``rest`` (it keeps
                # its own remainder): only the resampler's tail is new to it.
                probabilities = self._detector.push(rest)
            whole = probabilities.size * FRAME_SAMPLES
            self._frames(self._unframed[:whole], probabilities)
            self._unframed = self._unframed[whole:]
        self._final_decision()
        self._close_segment(self.time)
        last = self._decisions[-1] if self._decisions else None
        self._summary = Summary(
            mode=self.mode,
            speaker=self.speaker,
            duration=self.time,
            speech_seconds=self._speech_seconds,
            decision=last.decision if last is not None else NOT_ENOUGH_SPEECH,
            accepted=last.accepted if last is not None else False,
            decisions=list(self._decisions),
            changes=list(self._changes),
            segments=list(self._segments),
            reason="closed" if self._ended is None else f"limit: {self._ended.limit}",
        )
        if self._on_close is not None:
            self._on_close(self._summary)
        return self._summary

    def __enter__(self) -> LiveSession:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- input --------------------------------------------------------------------------------

    def _checked(self, chunk: npt.NDArray[np.generic], sample_rate: int) -> npt.NDArray[np.float32]:
        if not isinstance(chunk, np.ndarray):
            raise UsageError(f"a chunk must be a numpy array, not {type(chunk).__name__}")
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, int | np.integer):
            raise UsageError(f"sample_rate must be an integer, not {sample_rate!r}")
        if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
            raise InvalidAudioError(
                "<stream>",
                f"sample rate {sample_rate} Hz is outside {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz",
            )
        if self._rate is not None and sample_rate != self._rate:
            raise UsageError(
                f"the session's sample rate is {self._rate} Hz; a chunk at {sample_rate} Hz "
                "needs a new session"
            )
        if chunk.dtype not in (np.float32, np.int16):
            raise UsageError(f"chunks must be float32 or int16 PCM, not {chunk.dtype}")
        if chunk.ndim == 2 and chunk.shape[1] == 1:
            chunk = chunk[:, 0]
        if chunk.ndim != 1:
            raise InvalidAudioError(
                "<stream>", f"chunks must be mono, (n,) or (n, 1), not of shape {chunk.shape}"
            )
        if chunk.dtype == np.int16:
            return chunk.astype(np.float32) / 32768.0
        if not np.all(np.isfinite(chunk)):
            raise InvalidAudioError("<stream>", "contains non-finite samples (NaN or Inf)")
        return np.ascontiguousarray(chunk, dtype=np.float32)

    def _end(self, limit: str, why: str) -> list[Event]:
        self._ended = SessionLimitError(why, limit)
        return [ErrorEvent(self.time, "limit", f"session limit reached: {why}", fatal=True)]

    def _take(self, resampled: npt.NDArray[np.float32]) -> list[Event]:
        """16 kHz samples -> speech frames -> the events they cause."""
        if resampled.size == 0:
            return []
        self._unframed = np.concatenate([self._unframed, resampled])
        with single_threaded_torch():
            probabilities = self._detector.push(resampled)
        whole = probabilities.size * FRAME_SAMPLES
        frames, self._unframed = self._unframed[:whole], self._unframed[whole:]
        return self._frames(frames, probabilities)

    def _frames(
        self, samples: npt.NDArray[np.float32], probabilities: npt.NDArray[np.float32]
    ) -> list[Event]:
        events: list[Event] = []
        for k, p in enumerate(probabilities.tolist()):
            # The diarizer's hysteresis, causally: speech starts at onset, lasts to offset.
            threshold = self._settings.offset if self._in_speech else self._settings.onset
            self._in_speech = p >= threshold
            frame = _Frame(
                self._frames_out * FRAME_SECONDS,
                samples[k * FRAME_SAMPLES : (k + 1) * FRAME_SAMPLES],
                self._in_speech,
            )
            self._frames_out += 1
            self._segment.append(frame)
            if not frame.speech:
                self._silence_run += FRAME_SECONDS
                continue
            self._silence_run = 0.0
            self._speech_seconds += FRAME_SECONDS
            self._segment_speech += FRAME_SECONDS
            self._since_evaluation += FRAME_SECONDS
            self._since_check += FRAME_SECONDS
            self._recent.append(frame)
            while len(self._recent) > _WINDOW_FRAMES:
                self._recent.popleft()
            now = self._frames_out * FRAME_SECONDS
            stream = self._stream
            new_windows = stream.push(frame.samples, frame.start) if stream is not None else 0
            if self._since_evaluation >= max(EVALUATE_EVERY_SECONDS, self._segment_speech / 4):
                events += self._evaluate(now)
            if stream is None and self._since_check >= CHANGE_EVERY_SECONDS:
                events += self._check_change(now)
            elif new_windows and stream is self._stream:
                events += self._check_windows(now)
        return events

    # --- decisions ----------------------------------------------------------------------------

    def _new_segment(self, start: float, frames: list[_Frame]) -> None:
        cap = math.ceil(MAX_SEGMENT_AUDIO_SECONDS / FRAME_SECONDS)
        self._segment: collections.deque[_Frame] = collections.deque(frames, maxlen=cap)
        self._segment_start = start
        self._segment_index = len(self._segments)
        self._segment_speech = sum(FRAME_SECONDS for f in frames if f.speech)
        self._since_evaluation = self._segment_speech
        self._since_check = 0.0
        self._current: DecisionEvent | None = None
        self._voice: str | None = None  # the named voice decided on, for change detection
        self._anchor: Anchor | None = None  # else the segment's own voice, once decided
        self._checks = VoiceChecks()  # the change rule on the segment's check windows
        self._spoof: SpoofCheck | None = None  # the countermeasure's answer on this segment
        self._spoof_samples = 0  # audio samples it read
        # The segment's window embeddings (GE2E models), each speech window encoded once;
        # change checks use the windows starting at or after ``_check_from`` (seconds).
        self._stream: SegmentWindows | None = None
        self._check_from = start
        if self._window_encoder is not None:
            self._stream = SegmentWindows(self._window_encoder, MAX_SEGMENT_AUDIO_SECONDS)
            for frame in frames:
                if frame.speech:
                    self._stream.push(frame.samples, frame.start)

    def _close_segment(self, end: float) -> None:
        current = self._current
        self._segments.append(
            Segment(
                self._segment_start,
                end,
                current.decision if current is not None else NOT_ENOUGH_SPEECH,
                current.speaker if current is not None else None,
                self._segment_speech,
            )
        )

    def _label(self, accepted: bool) -> str:
        if self.mode == "verify":
            return ACCEPT if accepted else REJECT
        return IDENTIFIED if accepted else UNKNOWN

    def _segment_audio(self) -> npt.NDArray[np.float32]:
        if not self._segment:
            return np.zeros(0, np.float32)
        return np.concatenate([f.samples for f in self._segment])

    def _evaluate(self, now: float, final: bool = False) -> list[Event]:
        self._since_evaluation = 0.0
        if not final and self._current is not None and self._holds():
            return [ProgressEvent(now, self._speech_seconds, self._current.decision)]
        judged = self._judge(self._segment_audio(), self.speaker)
        self.exact_judgements += 1
        status = self._current.decision if self._current is not None else NOT_ENOUGH_SPEECH
        events: list[Event] = []
        if judged is not None:
            self._bandwidth = judged.bandwidth_hz
            label = self._sequential(judged, final)
            spoof = None
            if label is not None and self._screen is not None:
                spoof = self._screened(final)
                if spoof.detected:
                    label = SPOOF_DETECTED
            if label is not None:
                accepted = judged.accepted and label != SPOOF_DETECTED
                speaker = judged.speaker if self.mode == "verify" or accepted else None
                changed = (
                    self._current is None
                    or self._current.decision != label
                    or self._current.speaker != speaker
                )
                if changed or final:
                    event = DecisionEvent(
                        now,
                        self._segment_index,
                        label,
                        speaker,
                        judged.llr,
                        judged.score,
                        judged.threshold,
                        judged.rule,
                        judged.speech_seconds,
                        early=self._segment_speech < FIRM_SPEECH_SECONDS and not final,
                        final=final,
                        spoof=spoof.answer if spoof is not None else None,
                    )
                    self._decisions.append(event)
                    self._current = event
                    if changed:
                        events.append(event)
                        self._voice = speaker if accepted else None
                        self._checks.misses = 0
                status = label
            if self._current is not None and self._voice is None and judged.vector is not None:
                self._anchor = Anchor(judged.vector, judged.speech_seconds, judged.bandwidth_hz)
        if not final:
            events.insert(0, ProgressEvent(now, self._speech_seconds, status))
        return events

    def _holds(self) -> bool:
        """Whether the decided segment's estimate (the mean of its window embeddings, judged
        by the rule) gives the decision it holds: then the engine is not asked again. When
        it does not, or there is no estimate (not a GE2E model), the engine re-embeds the
        segment and the rule decides on that, as offline; so every decision event is the
        offline rule's answer on the segment's audio, and a change the estimate misses is
        still decided at close."""
        current, stream = self._current, self._stream
        assert current is not None
        if stream is None or not stream.vectors:
            return False
        if self._spoof is not None and self._spoof.detected:
            return True  # checked once per segment: the rule cannot undo it before close
        speech = min(stream.speech_seconds, MAX_SEGMENT_AUDIO_SECONDS)
        estimate = self._judge(Probe(stream.mean(), speech, self._bandwidth), self.speaker)
        if estimate is None:
            return False
        label = self._label(estimate.accepted)
        speaker = estimate.speaker if self.mode == "verify" or estimate.accepted else None
        if (label, speaker) != (current.decision, current.speaker):
            return False
        if self._voice is None and estimate.vector is not None:
            self._anchor = Anchor(estimate.vector, speech, self._bandwidth)
        return True

    def _screened(self, final: bool) -> SpoofCheck:
        """The countermeasure's answer on the segment: checked once, and again at close
        when it had less audio than it reads."""
        assert self._screen is not None
        audio = self._segment_audio()
        wanted = min(audio.size, self._screen.samples)
        if self._spoof is None or (final and wanted > self._spoof_samples):
            self._spoof = self._screen.check(audio[:wanted])
            self._spoof_samples = wanted
        return self._spoof

    def _sequential(self, judged: Judgement, final: bool) -> str | None:
        """The decision to hold now, or None (not enough evidence yet)."""
        if final or self._current is not None:
            return self._label(judged.accepted)
        if self._segment_speech < MIN_DECISION_SPEECH_SECONDS:
            return None
        if judged.accepted:
            return self._label(True)
        far_below = judged.llr is not None and judged.llr <= judged.threshold - EARLY_REJECT_MARGIN
        if far_below or self._segment_speech >= FIRM_SPEECH_SECONDS:
            return self._label(False)
        return None

    def _against(self) -> str | Anchor | None:
        """What a change window is scored against (the llr and score of the event): the
        voice decided on, else the segment's own voice, else the claimed speaker or
        (identifying) everyone."""
        against: str | Anchor | None = self._voice if self._voice is not None else self._anchor
        return against if against is not None else self.speaker

    def _check_change(self, now: float) -> list[Event]:
        """The change check of models without window embeddings: the engine embeds the
        last CHANGE_WINDOW_SECONDS of speech."""
        self._since_check = 0.0
        if len(self._recent) < _WINDOW_FRAMES:
            return []
        window = np.concatenate([f.samples for f in self._recent])
        judged = self._judge(window, self._against())
        self.exact_judgements += 1
        if judged is None or judged.vector is None:
            self._checks.misses = 0
            return []
        return self._compare(now, self._recent[0].start, judged.vector, judged)

    def _check_windows(self, now: float) -> list[Event]:
        """The change check on the segment's window embeddings: the mean of the last
        CHANGE_WINDOW_COUNT windows (3.5 s of speech), at each new window (0.38 s)."""
        stream = self._stream
        assert stream is not None
        starts = [t for t, _ in stream.vectors if t >= self._check_from]
        if len(starts) < CHANGE_WINDOW_COUNT:
            return []
        vector = stream.mean(last=CHANGE_WINDOW_COUNT, since=self._check_from)
        return self._compare(now, starts[-CHANGE_WINDOW_COUNT], vector, None)

    def _compare(
        self,
        now: float,
        start: float,
        vector: npt.NDArray[np.float32],
        judged: Judgement | None,
    ) -> list[Event]:
        """The change rule on one window's (D,) embedding, ``start`` seconds its start;
        ``judged`` its judgement when the engine made one (else judged here, for the event,
        only when the voice changed)."""
        if not self._checks.changed(vector, reembedded=judged is not None):
            return []
        if judged is None:
            probe = Probe(vector, CHANGE_WINDOW_SECONDS, self._bandwidth)
            judged = self._judge(probe, self._against())
        llr, score = (judged.llr, judged.score) if judged is not None else (None, float("nan"))
        change = SpeakerChange(now, start, self._voice, llr, score, len(self._segments) + 1)
        self._changes.append(change)
        kept = [f for f in self._segment if f.start >= start]
        self._close_segment(start)
        self._new_segment(start, kept)
        # The new voice's windows start afresh: one straddling the change would mix both
        # voices into the new segment's own level and look like a second change.
        self._recent.clear()
        self._check_from = now
        return [change]

    def _final_decision(self) -> None:
        if self._segment_speech > 0 and self._segment:
            self._evaluate(self.time, final=True)
