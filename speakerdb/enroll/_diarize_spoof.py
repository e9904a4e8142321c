"""The countermeasure in diarization naming: a voice is named only if its speech is not an
attack (issue 19; docs/spoofing.md).

Each voice the rule named is checked once, on :attr:`Countermeasure.input_samples` of its
own speech (4.04 s for AASIST): its longest turn first, then the next longest, as verify
checks a probe's first seconds. The recording is read again for those turns only (streamed,
stopping after the last one needed; never held whole). A voice detected as an attack keeps
its turns but loses its name: it becomes the next ``unknown_N``, with the countermeasure's
answer in ``spoof`` and a note.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from speakerdb.enroll._spoof import spoof_answer
from speakerdb.model._audio import SAMPLE_RATE, AudioInput, downmix, open_source

if TYPE_CHECKING:
    from speakerdb.diarize import Diarization
    from speakerdb.model._countermeasure import Countermeasure

__all__ = ["screen_named_voices", "voice_audio"]


def voice_audio(
    audio: AudioInput,
    sample_rate: int | None,
    turns: dict[str, list[tuple[float, float]]],
    samples: int,
) -> dict[str, npt.NDArray[np.float32]]:
    """For each label of ``turns`` ((start s, end s) each), up to ``samples`` 16 kHz samples
    of its speech: its longest turns first, each in time order. Raises the decoder's
    AudioError subclasses."""
    from speakerdb.model._resampling import TORCHAUDIO_DEFAULT, StreamResampler

    wanted: list[tuple[int, int, str]] = []  # (first sample, end sample, label)
    for label, spans in turns.items():
        left = samples
        for start, end in sorted(spans, key=lambda s: s[0] - s[1]):
            if left <= 0:
                break
            first = round(start * SAMPLE_RATE)
            last = min(round(end * SAMPLE_RATE), first + left)
            if last > first:
                wanted.append((first, last, label))
                left -= last - first
    pieces: dict[str, list[tuple[int, npt.NDArray[np.float32]]]] = {label: [] for label in turns}
    if not wanted:
        return {label: np.zeros(0, np.float32) for label in turns}
    stop = max(last for _, last, _ in wanted)
    stream = open_source(audio, sample_rate or SAMPLE_RATE)
    resampler = StreamResampler(stream.rate, SAMPLE_RATE, TORCHAUDIO_DEFAULT)
    position = 0

    def take(block: npt.NDArray[np.float32]) -> None:
        nonlocal position
        end = position + block.size
        for first, last, label in wanted:
            lo, hi = max(first, position), min(last, end)
            if hi > lo:
                pieces[label].append((lo, block[lo - position : hi - position].copy()))
        position = end

    for block in stream.blocks:
        take(resampler.feed(downmix(block)))
        if position >= stop:
            break
    else:
        take(resampler.finish())
    close = getattr(stream.blocks, "close", None)
    if close is not None:
        close()  # the file is released now, not when the generator is collected
    return {
        label: np.concatenate([p for _, p in sorted(parts, key=lambda x: x[0])])
        if parts
        else np.zeros(0, np.float32)
        for label, parts in pieces.items()
    }


def screen_named_voices(
    result: Diarization,
    cm: Countermeasure,
    audio: AudioInput,
    sample_rate: int | None,
) -> Diarization:
    """``result`` with every named voice checked by ``cm`` (see the module docstring)."""
    named = {s.label for s in result.speakers if s.name is not None}
    if not named:
        return result
    spans: dict[str, list[tuple[float, float]]] = {label: [] for label in named}
    for t in result.turns:
        if t.label in spans:
            spans[t.label].append((t.start, t.end))
    heads = voice_audio(audio, sample_rate, spans, cm.input_samples)
    order = sorted(named)
    scored = dict(zip(order, cm.score([heads[label] for label in order]), strict=True))
    unknown = sum(1 for s in result.speakers if s.name is None)
    relabel: dict[str, str] = {}
    speakers = []
    for s in result.speakers:
        if s.name is None:
            speakers.append(s)
            continue
        answer = scored[s.label]
        spoof = spoof_answer(cm, answer) if answer.error is None else None
        if answer.error is None and answer.detected:
            unknown += 1
            relabel[s.label] = f"unknown_{unknown}"
            note = f"not named: the countermeasure detected an attack (spoof llr {answer.llr:.2f})"
            s = dataclasses.replace(s, label=relabel[s.label], name=None, note=note)
        speakers.append(dataclasses.replace(s, spoof=spoof))
    turns = [
        t._replace(label=relabel[t.label], name=None, score=None) if t.label in relabel else t
        for t in result.turns
    ]
    return dataclasses.replace(result, speakers=speakers, turns=turns)
