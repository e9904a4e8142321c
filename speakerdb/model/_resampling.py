"""Resampling with a bounded cost for any pair of rates, streamed block by block.

Two windowed-sinc resamplers follow torchaudio's ``Resample`` exactly, because embeddings move
when the resampler changes (cosine 0.95-0.99):

* GE2E's own (Kaiser window, lowpass width 24, rolloff 0.945, beta 8.555), used since the
  first release, so stored voiceprints stay comparable;
* torchaudio's defaults (Hann window, width 6, rolloff 0.99), as SpeechBrain's
  ``AudioNormalizer`` and WeSpeaker resample.

torchaudio builds a kernel of ``new/g x (orig/g + 2 * width)`` taps, g = gcd(orig, new): a few
thousand for 44.1 or 48 kHz, but for a hostile pair such as 8001 Hz (g = 1) it is 16 000 x
8 000 doubles and takes gigabytes. Here the exact kernel is used when it has at most
:data:`MAX_KERNEL_TAPS` taps (every rate pair whose gcd is a multiple of 25 Hz, i.e. every
common rate), and past that limit the audio is resampled by soxr ("HQ", a polyphase filter
whose cost does not depend on the gcd). The trade: for such rare rates the result is an equally
good band-limited resampling, but not torchaudio's bit for bit (embeddings agree to cosine
~0.999). No kernel larger than the limit is ever built, and at most a few are cached.

The kernel is applied as torchaudio applies it (zero padding of ``width`` before and
``width + orig/g`` after, a strided convolution, length ``ceil(n * new / orig)``), but to
blocks of input with the overlap each output needs, so memory stays bounded however long the
recording is.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

__all__ = [
    "GE2E_RESAMPLING",
    "MAX_KERNEL_TAPS",
    "TORCHAUDIO_DEFAULT",
    "SincParams",
    "StreamResampler",
    "resample",
    "torchaudio_resample",
]

MAX_KERNEL_TAPS = 1 << 20
"""Largest exact kernel built (4 MB as float32; 11.025 -> 16 kHz needs 0.33 M taps)."""

_MIN_CALL = 1 << 17  # input samples per convolution, at least (see StreamResampler._convolve)
_MAX_CALL = 1 << 19  # and about at most: bounds the temporaries


@dataclass(frozen=True)
class SincParams:
    """torchaudio.transforms.Resample's filter parameters."""

    lowpass_filter_width: int = 6
    rolloff: float = 0.99
    resampling_method: str = "sinc_interp_hann"
    beta: float | None = None


TORCHAUDIO_DEFAULT = SincParams()
GE2E_RESAMPLING = SincParams(24, 0.945, "sinc_interp_kaiser", 8.555)


def kernel_taps(rate: int, new_rate: int, params: SincParams) -> int:
    """Taps of torchaudio's kernel for this pair, computed without building it."""
    g = math.gcd(rate, new_rate)
    orig, new = rate // g, new_rate // g
    width = math.ceil(params.lowpass_filter_width * orig / (min(orig, new) * params.rolloff))
    return new * (orig + 2 * width)


@functools.lru_cache(maxsize=8)
def _kernel(rate: int, new_rate: int, params: SincParams) -> tuple[torch.Tensor, int]:
    """torchaudio's kernel ((new/g, 1, orig/g + 2 * width) float32) and width; only called
    for pairs within :data:`MAX_KERNEL_TAPS`, so the cache holds at most 8 x 4 MB."""
    import torchaudio

    module = torchaudio.transforms.Resample(
        orig_freq=rate,
        new_freq=new_rate,
        lowpass_filter_width=params.lowpass_filter_width,
        rolloff=params.rolloff,
        resampling_method=params.resampling_method,
        beta=params.beta,
    )
    return module.kernel.to(torch.float32), int(module.width)


class StreamResampler:
    """Resamples one recording given in consecutive blocks.

    ``feed(block)``: (k,) float32 at ``rate`` -> (m,) float32 at ``new_rate`` now available;
    ``finish()``: the rest. The concatenated output equals the whole-array result (exactly
    torchaudio's for pairs within :data:`MAX_KERNEL_TAPS`), ``ceil(n * new_rate / rate)``
    samples for n input samples.

    min_call: input samples held back before a convolution (see :meth:`_convolve`); the
    default makes the output bit-exact with a single call; a live stream passes a small
    value (e.g. 0) for low latency, and its output then differs in the last bits only.
    """

    def __init__(
        self,
        rate: int,
        new_rate: int,
        params: SincParams = TORCHAUDIO_DEFAULT,
        *,
        min_call: int = _MIN_CALL,
    ) -> None:
        self.rate, self.new_rate = int(rate), int(new_rate)
        self._min_call = max(0, int(min_call))
        self._n_in = 0
        self._n_out = 0
        self._soxr = None
        self._kernel: torch.Tensor | None = None
        if self.rate == self.new_rate:
            return
        if kernel_taps(self.rate, self.new_rate, params) <= MAX_KERNEL_TAPS:
            g = math.gcd(self.rate, self.new_rate)
            self._orig, self._new = self.rate // g, self.new_rate // g
            self._kernel, self._width = _kernel(self.rate, self.new_rate, params)
            self._span = self._kernel.shape[-1]  # input samples one position reads
            self._buffer = np.zeros(self._width, np.float32)  # the leading zero padding
        else:
            import soxr

            self._soxr = soxr.ResampleStream(
                self.rate, self.new_rate, 1, dtype="float32", quality="HQ"
            )

    def feed(self, block: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        block = np.ascontiguousarray(block, dtype=np.float32)
        self._n_in += block.shape[0]
        if self.rate == self.new_rate:
            out = block
        elif self._soxr is not None:
            out = self._soxr.resample_chunk(block, last=False)
        else:
            self._buffer = np.concatenate([self._buffer, block])
            out = self._convolve()
        return self._limit(out)

    def finish(self) -> npt.NDArray[np.float32]:
        target = math.ceil(self.new_rate * self._n_in / self.rate) if self._n_in else 0
        if self.rate == self.new_rate:
            return np.zeros(0, np.float32)
        if self._soxr is not None:
            out = self._soxr.resample_chunk(np.zeros(0, np.float32), last=True)
        else:
            self._buffer = np.concatenate(
                [self._buffer, np.zeros(self._width + self._orig, np.float32)]
            )
            out = self._convolve(final=True)
        out = self._limit(out, target)
        missing = target - self._n_out
        if missing > 0:  # soxr may end a few samples short of torchaudio's length
            out = np.concatenate([out, np.zeros(missing, np.float32)])
            self._n_out += missing
        return np.asarray(out, dtype=np.float32)

    def _limit(
        self, out: npt.NDArray[np.float32], target: int | None = None
    ) -> npt.NDArray[np.float32]:
        if target is not None and self._n_out + out.shape[0] > target:
            out = out[: max(0, target - self._n_out)]
        self._n_out += out.shape[0]
        return np.ascontiguousarray(out, dtype=np.float32)

    def _convolve(self, final: bool = False) -> npt.NDArray[np.float32]:
        """Kernel positions the buffer covers, then drop the input they consumed.

        torch's convolution picks its algorithm by size, and a short input rounds differently
        in the last bit. So every call reads at least :data:`_MIN_CALL` samples (holding back
        that many until the end) unless the whole recording is shorter: the result then equals
        torchaudio's single call bit for bit."""
        assert self._kernel is not None
        available = (self._buffer.shape[0] - self._span) // self._orig + 1
        if final:
            positions = max(0, available)
        else:
            held = self._min_call
            positions = min(available, (self._buffer.shape[0] - held) // self._orig)
            if positions <= 0 or positions * self._orig < held:
                return np.zeros(0, np.float32)
        per_call = max(1, _MAX_CALL // self._orig)
        parts = []
        first = 0
        with torch.inference_mode():
            while first < positions:
                count = positions - first
                if count >= 2 * per_call:
                    count = per_call
                start = first * self._orig
                piece = torch.from_numpy(
                    self._buffer[start : start + (count - 1) * self._orig + self._span]
                )
                out = torch.nn.functional.conv1d(piece[None, None], self._kernel, stride=self._orig)
                parts.append(out[0].T.reshape(-1).numpy())
                first += count
        self._buffer = self._buffer[positions * self._orig :].copy()
        if not parts:
            return np.zeros(0, np.float32)
        return np.concatenate(parts) if len(parts) > 1 else parts[0]


def resample(
    samples: npt.NDArray[np.float32],
    rate: int,
    new_rate: int,
    params: SincParams = TORCHAUDIO_DEFAULT,
    block: int = 1 << 20,
) -> npt.NDArray[np.float32]:
    """(n,) float32 at ``rate`` -> (ceil(n * new_rate / rate),) float32 at ``new_rate``,
    processed in blocks of ``block`` input samples (see :class:`StreamResampler`)."""
    if rate == new_rate:
        return np.ascontiguousarray(samples, dtype=np.float32)
    stream = StreamResampler(rate, new_rate, params)
    parts = [stream.feed(samples[i : i + block]) for i in range(0, samples.shape[0], block)]
    parts.append(stream.finish())
    return np.concatenate(parts)


def torchaudio_resample(
    samples: npt.NDArray[np.float32], rate: int, new_rate: int
) -> npt.NDArray[np.float32]:
    """(n,) float32 at ``rate`` -> (m,) float32 at ``new_rate`` as
    ``torchaudio.transforms.Resample(rate, new_rate)`` at its defaults (identity if equal),
    with the bounded fallback described in the module docstring."""
    return resample(samples, int(rate), int(new_rate), TORCHAUDIO_DEFAULT)
