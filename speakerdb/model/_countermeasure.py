"""Spoofing countermeasures: load an AASIST checkpoint safely and score recordings with it.

A countermeasure says how much a recording looks like bona fide speech rather than a
synthetic or converted one. The one family loaded natively is AASIST (and AASIST-L, the
same code with another configuration; :mod:`speakerdb.model._aasist`). The file is read as
tensors only (``torch.load(weights_only=True)`` behind :func:`read_checkpoint`'s checks),
never unpickled as code, and its state dict must match the architecture exactly: same keys,
same shapes, floating-point parameters, finite values.

The configuration comes from a ``.conf`` beside the weights (the original repository's JSON,
``model_config`` block) when there is one, else from the shapes in the state dict, which
tell the two published configurations apart.

Scores follow the original evaluation: the recording decoded to 16 kHz mono, its first
``nb_samp`` samples (64 600, 4.04 s) taken, a shorter one repeated until long enough; the
score is the bona fide logit (output index 1), as the original writes it. ``llr_input`` is
bona fide minus spoof logit, the uncalibrated log-odds that calibration maps to an LLR.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from speakerdb._quality import speech_bandwidth_hz
from speakerdb._spoof_calibration import SpoofCalibration, bundled_spoof_calibration
from speakerdb.errors import ModelError, ModelNotFoundError, SpeakerDBError, UsageError
from speakerdb.model._audio import (
    SAMPLE_RATE,
    AudioInput,
    collect_resampled,
    open_source,
    source_label,
)
from speakerdb.model._weights import read_checkpoint, weights_sha256

if TYPE_CHECKING:
    import torch

    from speakerdb.model._aasist import AasistConfig, AasistNet

__all__ = [
    "COUNTERMEASURE_ENV",
    "COUNTERMEASURE_FAMILIES",
    "MAX_COUNTERMEASURE_BYTES",
    "MEMO_ENTRIES",
    "MIN_COUNTERMEASURE_SECONDS",
    "Countermeasure",
    "CountermeasureIdentity",
    "SpoofScore",
    "fit_length",
    "load_countermeasure",
]

COUNTERMEASURE_ENV = "SPEAKERDB_SPOOF_MODEL"
"""Environment variable naming the countermeasure file where none is given."""

COUNTERMEASURE_FAMILIES = ("aasist",)

MAX_COUNTERMEASURE_BYTES = 64 << 20
"""Largest countermeasure checkpoint read (AASIST is 1.3 MB; the bound keeps a hostile file
from filling memory)."""

MIN_COUNTERMEASURE_SECONDS = 2.0
"""Shortest recording judged: AASIST sees 4.04 s; a shorter recording is repeated to fill it,
and below half of that the repetition, not the voice, dominates (1 s keywords of real people
score like TTS). Shorter recordings get a score and an LLR but ``detected`` None."""

_BATCH = 1
"""Recordings per forward pass. One: four at once measured no faster per recording (the
convolutions are compute-bound; docs/spoofing.md), and one keeps the activations small."""

MEMO_ENTRIES = 1024
"""Recordings whose logits a Countermeasure remembers (by content; see the class doc)."""


@dataclass(frozen=True)
class CountermeasureIdentity:
    """What made a spoof score: family ("aasist"), variant ("AASIST", "AASIST-L" or the
    ``.conf`` file's name), the weights' sha256 and the path they were read from."""

    family: str
    variant: str
    weights_sha256: str
    path: str

    @property
    def label(self) -> str:
        """Short text for messages and JSON: ``aasist/AASIST@51d2d9cf0738``."""
        return f"{self.family}/{self.variant}@{self.weights_sha256[:12]}"

    def to_dict(self) -> dict[str, str]:
        return {
            "family": self.family,
            "variant": self.variant,
            "weights_sha256": self.weights_sha256,
            "path": self.path,
        }


@dataclass(frozen=True)
class SpoofScore:
    """One recording's countermeasure output.

    score: the bona fide logit (the original's score; higher = more bona fide);
    llr_input: bona fide minus spoof logit (uncalibrated natural-log odds); bandwidth_hz: the
    decoded recording's audio bandwidth (:func:`speakerdb._quality.speech_bandwidth_hz`);
    seconds: its duration at 16 kHz; llr: the calibrated bona fide-vs-spoof LLR and
    detected: ``llr`` below the calibration's threshold (both None without a calibration;
    ``detected`` None for recordings under :data:`MIN_COUNTERMEASURE_SECONDS`).
    On failure only ``source`` and ``error`` are set.
    """

    source: str
    score: float | None = None
    llr_input: float | None = None
    bandwidth_hz: float | None = None
    seconds: float | None = None
    llr: float | None = None
    detected: bool | None = None
    error: SpeakerDBError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (``error`` left out: callers render it their way)."""
        return {
            "source": self.source,
            "score": self.score,
            "raw": self.llr_input,
            "llr": self.llr,
            "detected": self.detected,
            "bandwidth_hz": self.bandwidth_hz,
            "seconds": self.seconds,
        }


def fit_length(samples: npt.NDArray[np.float32], length: int) -> npt.NDArray[np.float32]:
    """(n,) -> (length,): the first ``length`` samples, a shorter signal repeated from its
    start until long enough (the original evaluation's padding). Raises UsageError if empty."""
    if samples.size == 0:
        raise UsageError("no samples to score")
    return np.ascontiguousarray(np.resize(samples, length), dtype=np.float32)


class Countermeasure:
    """A loaded countermeasure. Thread-safe: forward passes are serialised.

    ``calibration``: the spoof calibration applied to every score (the one bundled for these
    weights, if any; assign another or None).

    The logits of the last :data:`MEMO_ENTRIES` recordings scored are remembered, keyed by a
    BLAKE2b digest of the samples the network read: the same audio checked twice (enrolled,
    then verified; a file in several ``compare`` pairs; a retried request) costs one forward
    pass. The logits depend on those samples and the weights only, so a remembered answer
    is the one a new pass would give."""

    def __init__(
        self,
        net: AasistNet,
        identity: CountermeasureIdentity,
        calibration: SpoofCalibration | None = None,
    ) -> None:
        self.net = net
        self.identity = identity
        self.config: AasistConfig = net.config
        self.calibration = calibration
        self._lock = threading.Lock()
        self._memo: OrderedDict[bytes, npt.NDArray[np.float32]] = OrderedDict()
        self._memo_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Countermeasure({self.identity.label})"

    @property
    def input_samples(self) -> int:
        """Samples per forward pass (16 kHz)."""
        return self.config.nb_samp

    def logits(self, waves: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """(B, nb_samp) float32 16 kHz waveforms -> (B, 2) float32 logits (spoof, bona fide).

        The network's pieces (:attr:`AasistNet.tile`) run on one thread per intra-op thread
        torch had, with torch at one thread meanwhile (as the speaker engine's encoders):
        on this shared 2-core CPU, oneDNN's two-thread barriers made a forward pass 1.5-3x
        slower than one thread whenever other processes held the cores (docs/spoofing.md)."""
        import torch

        from speakerdb.model._embedder import single_threaded_torch

        batch = np.asarray(waves, dtype=np.float32)
        if batch.ndim != 2 or batch.shape[1] != self.input_samples:
            raise UsageError(
                f"countermeasure input must be shaped (B, {self.input_samples}), not {batch.shape}"
            )
        wave = torch.from_numpy(np.ascontiguousarray(batch))
        workers = torch.get_num_threads() if self.net.tile is not None else 1
        with self._lock, torch.inference_mode(), single_threaded_torch():
            if workers > 1:
                with ThreadPoolExecutor(workers, thread_name_prefix="speakerdb-cm") as pool:
                    out = self.net(wave, pool)
            else:
                out = self.net(wave)
        return np.asarray(out.numpy(), dtype=np.float32)

    def score_samples(self, samples: npt.NDArray[np.float32]) -> tuple[float, float]:
        """(n,) float32 mono 16 kHz -> (score, llr_input) as the class doc defines them."""
        logits = self.logits(fit_length(samples, self.input_samples)[None])[0]
        return float(logits[1]), float(logits[1] - logits[0])

    def score(
        self,
        sources: Iterable[AudioInput],
        max_seconds: float | None = None,
        sample_rate: int | None = None,
    ) -> list[SpoofScore]:
        """Score each source (a path, or an array at ``sample_rate``, default 16 kHz); a
        source that cannot be decoded gets a SpoofScore with ``error`` set, the others are
        still scored."""
        pending: list[tuple[int, npt.NDArray[np.float32]]] = []
        results: list[SpoofScore] = []
        for source in sources:
            label = source_label(source)
            try:
                samples = _decode(source, max_seconds, sample_rate)
                bandwidth = speech_bandwidth_hz(samples, SAMPLE_RATE)
            except SpeakerDBError as exc:
                results.append(SpoofScore(label, error=exc))
                continue
            results.append(
                SpoofScore(label, bandwidth_hz=bandwidth, seconds=samples.size / SAMPLE_RATE)
            )
            pending.append((len(results) - 1, fit_length(samples, self.input_samples)))
        return self._score_pending(results, pending)

    def score_decoded(
        self, decoded: Sequence[tuple[str, npt.NDArray[np.float32], float | None, float]]
    ) -> list[SpoofScore]:
        """Score recordings decoded already (by the speaker model's engine: one decode per
        file): ``(source label, head, bandwidth_hz, seconds)`` each, ``head`` being the
        16 kHz recording's first (up to :attr:`input_samples`) samples, ``bandwidth_hz``
        and ``seconds`` measured on the whole recording. Same answers as :meth:`score`."""
        results = [SpoofScore(label, bandwidth_hz=bw, seconds=sec) for label, _, bw, sec in decoded]
        pending = [
            (i, fit_length(np.asarray(head, np.float32), self.input_samples))
            for i, (_, head, _, _) in enumerate(decoded)
        ]
        return self._score_pending(results, pending)

    def _score_pending(
        self, results: list[SpoofScore], pending: list[tuple[int, npt.NDArray[np.float32]]]
    ) -> list[SpoofScore]:
        keys = [hashlib.blake2b(wave.tobytes(), digest_size=16).digest() for _, wave in pending]
        known = self._remembered(keys)
        # Each distinct recording not remembered, once (a list may repeat a file).
        todo = list(
            {
                key: wave for key, (_, wave) in zip(keys, pending, strict=True) if key not in known
            }.items()
        )
        for start in range(0, len(todo), _BATCH):
            chunk = todo[start : start + _BATCH]
            logits = self.logits(np.stack([wave for _, wave in chunk]))
            fresh = {key: row for (key, _), row in zip(chunk, logits, strict=True)}
            self._remember(fresh)
            known.update(fresh)
        for (index, _), key in zip(pending, keys, strict=True):
            results[index] = self._finish(results[index], known[key])
        return results

    def _remembered(self, keys: Sequence[bytes]) -> dict[bytes, npt.NDArray[np.float32]]:
        with self._memo_lock:
            found = {key: self._memo[key] for key in keys if key in self._memo}
            for key in found:
                self._memo.move_to_end(key)
        return found

    def _remember(self, fresh: dict[bytes, npt.NDArray[np.float32]]) -> None:
        with self._memo_lock:
            self._memo.update(fresh)
            while len(self._memo) > MEMO_ENTRIES:
                self._memo.popitem(last=False)

    def _finish(self, partial: SpoofScore, logits: npt.NDArray[np.float32]) -> SpoofScore:
        raw = float(logits[1] - logits[0])
        llr = detected = None
        if self.calibration is not None and partial.bandwidth_hz is not None:
            llr = self.calibration.llr(raw, partial.bandwidth_hz)
            if (partial.seconds or 0.0) >= MIN_COUNTERMEASURE_SECONDS:
                detected = self.calibration.detected(llr)
        return SpoofScore(
            partial.source,
            float(logits[1]),
            raw,
            partial.bandwidth_hz,
            partial.seconds,
            llr,
            detected,
        )

    def score_files(self, paths: Sequence[AudioInput]) -> npt.NDArray[np.float32]:
        """(N,) float32 scores (bona fide logits) of ``paths``, in order. Raises the first
        file's error (AudioError ...) if any file cannot be decoded; use :meth:`score` to get
        per-file errors instead."""
        results = self.score(paths)
        for r in results:
            if r.error is not None:
                raise r.error
        return np.array([r.score for r in results], dtype=np.float32)


def _decode(
    source: AudioInput, max_seconds: float | None, sample_rate: int | None = None
) -> npt.NDArray[np.float32]:
    """A path or an array (at ``sample_rate``, default 16 kHz) -> (n,) float32 mono 16 kHz."""
    from speakerdb.model._resampling import TORCHAUDIO_DEFAULT, StreamResampler

    stream = open_source(source, sample_rate or SAMPLE_RATE, max_seconds)
    resampler = StreamResampler(stream.rate, SAMPLE_RATE, TORCHAUDIO_DEFAULT)
    samples, _ = collect_resampled(stream, resampler.feed, resampler.finish)
    return samples


# --- loading -----------------------------------------------------------------------------------


def load_countermeasure(path: str | os.PathLike[str] | None = None) -> Countermeasure:
    """Load an AASIST / AASIST-L checkpoint (a plain PyTorch state dict) on the CPU.

    path: the ``.pth`` file; None reads ``$SPEAKERDB_SPOOF_MODEL``. A ``<stem>.conf`` beside
    it (the original repository's JSON) gives the configuration; without one, the state
    dict's shapes must match one of the published configurations.

    Raises ModelNotFoundError (no path, or no file there) and ModelError (over
    :data:`MAX_COUNTERMEASURE_BYTES`, not a tensors-only checkpoint, keys or shapes that are
    not the architecture's, non-finite values, a malformed ``.conf``).
    """
    if path is None or not os.fspath(path):
        path = os.environ.get(COUNTERMEASURE_ENV) or None
        if path is None:
            raise ModelNotFoundError(
                f"no countermeasure given (pass a path or set {COUNTERMEASURE_ENV})"
            )
    file = Path(os.fspath(path)).expanduser()
    if not file.is_file():
        raise ModelNotFoundError(f"no countermeasure file at {file}")
    file = file.absolute()
    try:
        size = file.stat().st_size
        if size > MAX_COUNTERMEASURE_BYTES:
            raise ModelError(
                f"{file}: {size} bytes, over the {MAX_COUNTERMEASURE_BYTES} byte limit for a "
                "countermeasure"
            )
        data = file.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read countermeasure {file}: {exc.strerror or exc}") from None
    state = read_checkpoint(data, str(file), MAX_COUNTERMEASURE_BYTES)
    tensors = _tensor_dict(state, file)
    conf = file.with_suffix(".conf")
    if conf.is_file():
        variant, config = conf.stem, read_conf(conf)
    else:
        variant, config = _config_from_shapes(tensors, file)
    net = _build(config, tensors, file)
    identity = CountermeasureIdentity("aasist", variant, weights_sha256(file), str(file))
    return Countermeasure(net, identity, bundled_spoof_calibration(identity.weights_sha256))


def _tensor_dict(state: Any, file: Path) -> dict[str, torch.Tensor]:
    import torch

    if not isinstance(state, dict) or not state:
        raise ModelError(
            f"{file}: not an AASIST state dict (holds {type(state).__name__}, expected a "
            "mapping of parameter names to tensors)"
        )
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ModelError(
                f"{file}: not an AASIST state dict ({key!r} holds {type(value).__name__}, "
                "not a tensor)"
            )
    return dict(state)


@functools.lru_cache(maxsize=8)
def _expected_shapes(config: AasistConfig) -> dict[str, tuple[int, ...]]:
    from speakerdb.model._aasist import AasistNet

    return {k: tuple(v.shape) for k, v in AasistNet(config).state_dict().items()}


def _config_from_shapes(tensors: dict[str, torch.Tensor], file: Path) -> tuple[str, AasistConfig]:
    from speakerdb.model._aasist import AASIST_CONFIGS

    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    for name, config in AASIST_CONFIGS.items():
        if _expected_shapes(config) == shapes:
            return name, config
    # Name the first difference from the closest published configuration.
    reference = _expected_shapes(AASIST_CONFIGS["AASIST"])
    raise ModelError(
        f"{file}: not an AASIST or AASIST-L state dict ({_difference(reference, shapes)})"
    )


def _difference(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]]) -> str:
    missing = sorted(set(expected) - set(found))
    if missing:
        return f"{len(missing)} parameters missing, e.g. {missing[0]!r}"
    extra = sorted(set(found) - set(expected))
    if extra:
        return f"{len(extra)} unexpected parameters, e.g. {extra[0]!r}"
    for key in expected:
        if expected[key] != found[key]:
            return f"{key!r} is shaped {list(found[key])}, expected {list(expected[key])}"
    return "no difference"


def _build(config: AasistConfig, tensors: dict[str, torch.Tensor], file: Path) -> AasistNet:
    import torch

    from speakerdb.model._aasist import AasistNet

    expected = _expected_shapes(config)
    found = {k: tuple(v.shape) for k, v in tensors.items()}
    if expected != found:
        raise ModelError(
            f"{file}: does not match its AASIST configuration ({_difference(expected, found)})"
        )
    for key, value in tensors.items():
        integral = key.endswith("num_batches_tracked")
        if value.dtype.is_floating_point == integral or value.is_complex():
            raise ModelError(f"{file}: {key!r} has dtype {value.dtype}, not a float parameter")
        if not integral and not bool(torch.isfinite(value).all()):
            raise ModelError(f"{file}: {key!r} holds non-finite values")
    net = AasistNet(config)
    net.load_state_dict(
        {k: v.to(torch.float32) if v.is_floating_point() else v for k, v in tensors.items()},
        strict=True,
    )
    return net.eval().prepare_for_inference()


def read_conf(path: Path) -> AasistConfig:
    """The ``model_config`` block of an original AASIST ``.conf`` (JSON) as an AasistConfig.

    Raises ModelError naming the file and the field for anything else than the AASIST
    architecture with positive sizes, ratios in (0, 1] and positive temperatures.
    """
    from speakerdb.model._aasist import SPECTRAL_NODES, AasistConfig

    try:
        if path.stat().st_size > 1 << 20:
            raise ModelError(f"{path}: over 1 MB, not an AASIST configuration")
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: not a readable AASIST configuration ({exc})") from None
    block = document.get("model_config") if isinstance(document, dict) else None
    if not isinstance(block, dict) or block.get("architecture") != "AASIST":
        raise ModelError(f'{path}: no model_config with architecture "AASIST"')
    try:
        filts = block["filts"]
        stages = tuple((_positive(a), _positive(b)) for a, b in filts[1:])
        config = AasistConfig(
            nb_samp=_positive(block["nb_samp"]),
            first_conv=_positive(block["first_conv"]),
            sinc_bands=_positive(filts[0]),
            stages=stages,
            gat_dims=(_positive(block["gat_dims"][0]), _positive(block["gat_dims"][1])),
            pool_ratios=_four(block["pool_ratios"], upper=1.0),
            temperatures=_four(block["temperatures"], upper=math.inf),
        )
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ModelError(f"{path}: malformed AASIST model_config ({exc!s:.80})") from None
    if len(config.stages) != 4 or config.stages[0][0] != 1:
        raise ModelError(
            f"{path}: filts must give the sinc bands and 4 stages starting at 1 channel"
        )
    if config.sinc_bands // 3 != SPECTRAL_NODES or config.nb_samp > 16 * SAMPLE_RATE:
        raise ModelError(f"{path}: unsupported sinc bands or input length for AASIST")
    return config


def _positive(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 1 << 20:
        raise ValueError(f"expected a positive integer, got {value!r}")
    return value


def _four(values: Any, upper: float) -> tuple[float, float, float, float]:
    if not isinstance(values, list) or len(values) != 4:
        raise ValueError(f"expected 4 numbers, got {values!r}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v <= upper:
            raise ValueError(f"expected numbers in (0, {upper}], got {v!r}")
        out.append(float(v))
    return out[0], out[1], out[2], out[3]
