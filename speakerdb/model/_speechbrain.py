"""The "speechbrain" family: a folder laid out like speechbrain/spkrec-ecapa-voxceleb.

Folder: ``hyperparams.yaml`` (HyperPyYAML), ``embedding_model.ckpt`` (the ECAPA-TDNN state
dict), optionally ``mean_var_norm_emb.ckpt``; ``classifier.ckpt`` and ``label_encoder.txt``
are ignored (speaker classification over the training speakers is not used here).

What SpeechBrain's ``EncoderClassifier`` does per file, reproduced here without SpeechBrain:

* ``load_audio``: decode to float32, resample with ``torchaudio.transforms.Resample(rate,
  16000)`` at its defaults (Hann-windowed sinc, width 6, rolloff 0.99), average channels;
* ``Fbank``: ``torch.stft`` (centred, **constant** padding, periodic Hamming window,
  win/hop in ms rounded to samples), power spectrum, triangular filters on the **HTK** mel
  scale (2595 log10(1 + f/700)) with SpeechBrain's band layout, then
  ``10 log10(max(x, amin)) - 10 log10(max(amin, ref))`` clipped at ``top_db`` below the
  utterance's maximum;
* ``InputNormalization(norm_type="sentence")``: the utterance's mean (and std if
  ``std_norm``) over time;
* ``ECAPA_TDNN`` (:mod:`speakerdb.model._ecapa`);
* ``encode_batch(normalize=False)``, the call ``SpeakerRecognition.verify_batch`` makes:
  ``mean_var_norm_emb`` is read but, like SpeechBrain's verification, not applied unless
  :func:`load_speechbrain` is asked to (``embedding_norm=True``, i.e.
  ``encode_batch(normalize=True)``).

Nothing in the folder is executed: the YAML goes through :mod:`speakerdb.model._hyperyaml`
(class names are compared with the ones implemented here, never imported) and checkpoints
through ``torch.load(weights_only=True)``. A configuration value this module does not
implement exactly is refused with a ModelError naming the field and the value.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from speakerdb.errors import ModelError, TooLittleSpeechError
from speakerdb.model._ecapa import EcapaConfig, EcapaTdnn, check_state_dict
from speakerdb.model._encoder import SpeakerEncoder
from speakerdb.model._hyperyaml import Resolver, Tagged, load_hyperyaml
from speakerdb.model._resampling import torchaudio_resample
from speakerdb.model._weights import read_checkpoint

__all__ = [
    "SpeechBrainEncoder",
    "SpeechBrainFbank",
    "is_speechbrain_folder",
    "load_speechbrain",
]

HYPERPARAMS = "hyperparams.yaml"
EMBEDDING_CKPT = "embedding_model.ckpt"
EMBEDDING_NORM_CKPT = "mean_var_norm_emb.ckpt"

MAX_CKPT_BYTES = 1 << 30
"""Largest embedding_model.ckpt read (1 GiB; ECAPA C=1024 is about 80 MB)."""
MAX_NORM_CKPT_BYTES = 16 << 20

THRESHOLD_NOTE = (
    "SpeechBrain's SpeakerRecognition.verify_batch default: same speaker iff cosine > 0.25 "
    "(uncalibrated for this data)"
)

_FBANK = "speechbrain.lobes.features.Fbank"
_NORM = "speechbrain.processing.features.InputNormalization"
_ECAPA = "speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN"
_NORMALIZER = "speechbrain.dataio.preprocess.AudioNormalizer"
_RELU = ("torch.nn.ReLU", "torch.nn.modules.activation.ReLU")


# --- configuration -------------------------------------------------------------------------


@dataclass(frozen=True)
class FbankConfig:
    """speechbrain.lobes.features.Fbank arguments that matter at inference."""

    sample_rate: int = 16_000
    n_fft: int = 400
    n_mels: int = 40
    f_min: float = 0.0
    f_max: float | None = None
    win_length: float = 25.0
    hop_length: float = 10.0


@dataclass(frozen=True)
class NormConfig:
    """speechbrain.processing.features.InputNormalization arguments used here."""

    norm_type: str
    std_norm: bool
    epsilon: float


@dataclass(frozen=True)
class SpeechBrainConfig:
    fbank: FbankConfig
    features_norm: NormConfig
    ecapa: EcapaConfig
    embedding_norm: NormConfig | None


class _Fields:
    """Reads one ``!new:`` node's keyword arguments, refusing anything not understood."""

    def __init__(self, field: str, node: Any, target: str, refs: Resolver) -> None:
        if not isinstance(node, Tagged) or node.kind != "new":
            shown = node.describe() if isinstance(node, Tagged) else repr(node)
            raise ModelError(f"hyperparams.yaml: {field} is {shown}, expected !new:{target}")
        if node.target != target:
            raise ModelError(
                f"hyperparams.yaml: {field} is !new:{node.target}, which speakerdb does not "
                f"implement (supported: {target})"
            )
        value = refs.resolve(node.value, field)
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ModelError(
                f"hyperparams.yaml: {field}: positional arguments {value!r} are not supported"
            )
        self.field = field
        self.values: dict[str, Any] = dict(value)

    def take(self, name: str, default: Any) -> Any:
        return self.values.pop(name, default)

    def number(self, name: str, default: float | None) -> float | None:
        value = self.take(name, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ModelError(f"hyperparams.yaml: {self.field}.{name} = {value!r} is not a number")
        return float(value)

    def integer(self, name: str, default: int) -> int:
        value = self.take(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ModelError(
                f"hyperparams.yaml: {self.field}.{name} = {value!r} is not a positive integer"
            )
        return value

    def flag(self, name: str, default: bool) -> bool:
        value = self.take(name, default)
        if not isinstance(value, bool):
            raise ModelError(f"hyperparams.yaml: {self.field}.{name} = {value!r} is not a boolean")
        return value

    def integers(self, name: str, default: tuple[int, ...]) -> tuple[int, ...]:
        value = self.take(name, list(default))
        if not isinstance(value, list | tuple) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
        ):
            raise ModelError(
                f"hyperparams.yaml: {self.field}.{name} = {value!r} is not a list of positive "
                "integers"
            )
        return tuple(value)

    def require(self, name: str, allowed: tuple[Any, ...], default: Any) -> Any:
        """A value that must be one of ``allowed`` (the only ones implemented)."""
        value = self.take(name, default)
        if not any(value == a and type(value) is type(a) for a in allowed):
            raise ModelError(
                f"hyperparams.yaml: {self.field}.{name} = {value!r} is not supported "
                f"(supported: {', '.join(repr(a) for a in allowed)})"
            )
        return value

    def ignore(self, *names: str) -> None:
        for name in names:
            self.values.pop(name, None)

    def done(self) -> None:
        if self.values:
            name, value = next(iter(self.values.items()))
            raise ModelError(f"hyperparams.yaml: {self.field}.{name} = {value!r} is not supported")


def _fbank_config(fields: _Fields) -> FbankConfig:
    fields.require("deltas", (False,), False)
    fields.require("context", (False,), False)
    fields.require("requires_grad", (False,), False)
    fields.require("filter_shape", ("triangular",), "triangular")
    # Only used when requires_grad (learned filters) or in training (random jitter), and
    # left/right_frames only with context: none change inference.
    fields.ignore("param_change_factor", "param_rand_factor", "left_frames", "right_frames")
    sample_rate = fields.integer("sample_rate", 16_000)
    if sample_rate != 16_000:
        raise ModelError(
            f"hyperparams.yaml: {fields.field}.sample_rate = {sample_rate} is not supported "
            "(supported: 16000)"
        )
    config = FbankConfig(
        sample_rate=sample_rate,
        n_fft=fields.integer("n_fft", 400),
        n_mels=fields.integer("n_mels", 40),
        f_min=float(fields.number("f_min", 0.0) or 0.0),
        f_max=fields.number("f_max", None),
        win_length=float(fields.number("win_length", 25.0) or 0.0),
        hop_length=float(fields.number("hop_length", 10.0) or 0.0),
    )
    fields.done()
    f_max = config.f_max if config.f_max is not None else sample_rate // 2
    if not 0 <= config.f_min < f_max <= sample_rate / 2:
        raise ModelError(
            f"hyperparams.yaml: {fields.field}: f_min = {config.f_min!r}, f_max = "
            f"{config.f_max!r} are not 0 <= f_min < f_max <= {sample_rate / 2:g}"
        )
    win = round(sample_rate / 1000.0 * config.win_length)
    hop = round(sample_rate / 1000.0 * config.hop_length)
    if not 0 < win <= config.n_fft or hop <= 0:
        raise ModelError(
            f"hyperparams.yaml: {fields.field}: win_length = {config.win_length!r} ms, "
            f"hop_length = {config.hop_length!r} ms do not fit n_fft = {config.n_fft}"
        )
    return config


def _norm_config(fields: _Fields, norm_types: tuple[str, ...]) -> NormConfig:
    fields.require("mean_norm", (True,), True)
    fields.require("avg_factor", (None,), None)
    fields.require("length_dim", (1,), 1)
    norm_type = fields.require("norm_type", norm_types, "global")
    std_norm = fields.flag("std_norm", True)
    epsilon = fields.number("epsilon", 1e-10)
    # update_until_epoch only matters in training; avoid_padding_norm only changes padded
    # frames (there are none: each utterance is normalised alone); device is placement.
    fields.ignore("update_until_epoch", "avoid_padding_norm", "device")
    fields.done()
    return NormConfig(norm_type, std_norm, float(epsilon or 0.0))


def _ecapa_config(fields: _Fields, n_mels: int) -> EcapaConfig:
    input_size = fields.integer("input_size", 0) if "input_size" in fields.values else 0
    if input_size != n_mels:
        raise ModelError(
            f"hyperparams.yaml: {fields.field}.input_size = {input_size!r} does not match the "
            f"{n_mels} mel bands of compute_features"
        )
    activation = fields.take("activation", None)
    if activation is not None and not (
        isinstance(activation, Tagged) and activation.kind == "name" and activation.target in _RELU
    ):
        shown = activation.describe() if isinstance(activation, Tagged) else repr(activation)
        raise ModelError(
            f"hyperparams.yaml: {fields.field}.activation = {shown} is not supported "
            "(supported: !name:torch.nn.ReLU)"
        )
    fields.ignore("device", "dropout")  # dropout is off at inference
    defaults = EcapaConfig(input_size=n_mels)
    config = EcapaConfig(
        input_size=n_mels,
        lin_neurons=fields.integer("lin_neurons", defaults.lin_neurons),
        channels=fields.integers("channels", defaults.channels),
        kernel_sizes=fields.integers("kernel_sizes", defaults.kernel_sizes),
        dilations=fields.integers("dilations", defaults.dilations),
        attention_channels=fields.integer("attention_channels", defaults.attention_channels),
        res2net_scale=fields.integer("res2net_scale", defaults.res2net_scale),
        se_channels=fields.integer("se_channels", defaults.se_channels),
        global_context=fields.flag("global_context", defaults.global_context),
        groups=fields.integers("groups", defaults.groups),
    )
    fields.done()
    n = len(config.channels)
    for name in ("kernel_sizes", "dilations", "groups"):
        if len(getattr(config, name)) != n or n < 3:
            raise ModelError(
                f"hyperparams.yaml: {fields.field}: channels and {name} must be lists of the "
                f"same length (at least 3), got {list(config.channels)} and "
                f"{list(getattr(config, name))}"
            )
    for k in config.kernel_sizes:
        if k % 2 == 0:
            raise ModelError(
                f"hyperparams.yaml: {fields.field}.kernel_sizes = {list(config.kernel_sizes)}: "
                "even kernel sizes are not supported"
            )
    for c in config.channels[1:-1]:
        if c % config.res2net_scale:
            raise ModelError(
                f"hyperparams.yaml: {fields.field}: channels {c} not divisible by "
                f"res2net_scale = {config.res2net_scale}"
            )
    return config


def parse_hyperparams(data: bytes, source: str = HYPERPARAMS) -> SpeechBrainConfig:
    """Read the configuration values of an spkrec-ecapa-style ``hyperparams.yaml``.

    Raises ModelError naming the field and value of anything not implemented exactly.
    """
    root = load_hyperyaml(data, source)
    refs = Resolver(root)  # one per file: each entry is resolved once, however often named
    for name in ("compute_features", "mean_var_norm", "embedding_model"):
        if name not in root:
            raise ModelError(f"{source}: no {name} entry (not a SpeechBrain speaker model)")
    fbank = _fbank_config(_Fields("compute_features", root["compute_features"], _FBANK, refs))
    features_norm = _norm_config(
        _Fields("mean_var_norm", root["mean_var_norm"], _NORM, refs), ("sentence",)
    )
    ecapa = _ecapa_config(
        _Fields("embedding_model", root["embedding_model"], _ECAPA, refs), fbank.n_mels
    )
    embedding_norm = None
    if "mean_var_norm_emb" in root:
        embedding_norm = _norm_config(
            _Fields("mean_var_norm_emb", root["mean_var_norm_emb"], _NORM, refs), ("global",)
        )
    if "audio_normalizer" in root:
        fields = _Fields("audio_normalizer", root["audio_normalizer"], _NORMALIZER, refs)
        fields.require("sample_rate", (16_000,), 16_000)
        fields.require("mix", ("avg-to-mono",), "avg-to-mono")
        fields.done()
    return SpeechBrainConfig(fbank, features_norm, ecapa, embedding_norm)


# --- front end -----------------------------------------------------------------------------


class SpeechBrainFbank:
    """Fbank + sentence InputNormalization, as SpeechBrain computes them for one utterance.

    Stateless after construction (tensors are only read), so one instance serves every
    thread. Works on the CPU.
    """

    def __init__(self, config: FbankConfig, norm: NormConfig) -> None:
        self.config = config
        self.norm = norm
        rate = config.sample_rate
        self.win_length = round(rate / 1000.0 * config.win_length)
        self.hop_length = round(rate / 1000.0 * config.hop_length)
        self.window = torch.hamming_window(self.win_length)
        self.matrix = self._filters()
        # Filterbank defaults (power 2, amin 1e-10, ref 1.0, top_db 80); not configurable
        # through Fbank's own arguments.
        self.amin, self.ref_value, self.top_db = 1e-10, 1.0, 80.0

    def _filters(self) -> torch.Tensor:
        """(n_fft // 2 + 1, n_mels) float32, built with SpeechBrain's operations and dtypes."""
        c = self.config
        f_max = c.f_max if c.f_max is not None else c.sample_rate // 2

        def to_mel(hz: float) -> float:
            return 2595 * math.log10(1 + hz / 700)

        mel = torch.linspace(to_mel(c.f_min), to_mel(f_max), c.n_mels + 2)
        hz = 700 * (10 ** (mel / 2595) - 1)
        band = (hz[1:] - hz[:-1])[:-1]
        central = hz[1:-1]
        freqs = torch.linspace(0, c.sample_rate // 2, c.n_fft // 2 + 1)
        slope = (freqs[None, :] - central[:, None]) / band[:, None]
        zero = torch.zeros(1)
        return torch.max(zero, torch.min(slope + 1.0, -slope + 1.0)).transpose(0, 1)

    def frames(self, n_samples: int) -> int:
        """Number of feature frames for ``n_samples`` samples (centred STFT)."""
        return 1 + n_samples // self.hop_length

    def __call__(self, samples: torch.Tensor) -> torch.Tensor:
        """(n,) float32 at 16 kHz -> (T, n_mels) float32 normalised features."""
        with torch.inference_mode():
            spec = torch.stft(
                samples[None, :],
                self.config.n_fft,
                self.hop_length,
                self.win_length,
                self.window,
                center=True,
                pad_mode="constant",
                normalized=False,
                onesided=True,
                return_complex=True,
            )
            power = torch.view_as_real(spec).transpose(2, 1).pow(2).sum(-1)  # (1, T, bins)
            mel = torch.matmul(power, self.matrix)
            db = 10 * torch.log10(torch.clamp(mel, min=self.amin))
            db -= 10 * math.log10(max(self.amin, self.ref_value))
            db = torch.max(db, db.amax(dim=(-2, -1)) - self.top_db)[0]
            count = db.shape[0]
            mean = db.sum(dim=0, keepdim=True) / count
            if self.norm.std_norm:
                std = (db - mean).square().sum(dim=0, keepdim=True).div(count).sqrt()
                return (db - mean) / std.clamp(min=self.norm.epsilon)
            return (db - mean) / torch.ones_like(mean).clamp(min=self.norm.epsilon)


# --- encoder -------------------------------------------------------------------------------


class SpeechBrainEncoder(SpeakerEncoder):
    """An spkrec-ecapa-style SpeechBrain model loaded without SpeechBrain."""

    family = "speechbrain"
    # 8 s per encoder call on a CPU: batches of 10 000 frames ran 1.5-1.7x slower per frame
    # than single files for TitaNet-L and ECAPA (C=1024) on a 2-core CPU (see _encoder.py).
    cpu_batch_frames = 800

    def __init__(
        self,
        config: SpeechBrainConfig,
        network: EcapaTdnn,
        weights_sha256: str,
        embedding_mean: torch.Tensor | None = None,
        embedding_std: torch.Tensor | None = None,
    ) -> None:
        self.config = config
        self.network = network.eval()
        self.front_end = SpeechBrainFbank(config.fbank, config.features_norm)
        self.dimension = config.ecapa.lin_neurons
        self.sample_rate = config.fbank.sample_rate
        self.default_threshold = 0.25
        self.threshold_note = THRESHOLD_NOTE
        self.weights_sha256 = weights_sha256
        self.exact_padding = True
        self.embedding_mean = embedding_mean
        self.embedding_std = embedding_std
        # Reflect padding of the widest dilated convolution needs more frames than its pad.
        pads = [
            d * (k - 1) // 2
            for k, d in zip(config.ecapa.kernel_sizes, config.ecapa.dilations, strict=True)
        ]
        self.min_frames = max(pads) + 1
        self._device = torch.device("cpu")
        self._lock = threading.Lock()

    def resample(self, samples: npt.NDArray[np.float32], rate: int) -> npt.NDArray[np.float32]:
        """torchaudio.transforms.Resample(rate, 16000) at its defaults, as SpeechBrain's
        ``load_audio`` (AudioNormalizer) does."""
        return torchaudio_resample(samples, rate, self.sample_rate)

    def prepare(self, samples: npt.NDArray[np.float32]) -> list[torch.Tensor]:
        """(n,) float32 at 16 kHz -> one chunk, (T, n_mels) float32 (whole utterance).
        Raises TooLittleSpeechError when T is below what the network's padding needs."""
        if self.front_end.frames(len(samples)) < self.min_frames:
            raise TooLittleSpeechError(
                "<audio>",
                f"{len(samples)} samples are too few for this model (at least "
                f"{self.min_frames} frames of {self.front_end.hop_length} samples)",
            )
        tensor = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
        return [self.front_end(tensor)]

    def encode(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, T, n_mels) float32 zero-padded, (B,) int64 -> (B, D) float32 (not normalised;
        mean_var_norm_emb applied only when the encoder was loaded with embedding_norm)."""
        with torch.inference_mode():
            out: torch.Tensor = self.network(features.to(self._device), lengths.to(self._device))
            if self.embedding_mean is not None:
                out = out - self.embedding_mean
                if self.embedding_std is not None:
                    eps = self.config.embedding_norm.epsilon if self.config.embedding_norm else 0
                    out = out / self.embedding_std.clamp(min=eps)
            return out.float()

    def to(self, device: torch.device) -> None:
        with self._lock:
            self.network.to(device)
            if self.embedding_mean is not None:
                self.embedding_mean = self.embedding_mean.to(device)
            if self.embedding_std is not None:
                self.embedding_std = self.embedding_std.to(device)
            self._device = device


# --- loading -------------------------------------------------------------------------------


def is_speechbrain_folder(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a directory holding hyperparams.yaml and embedding_model.ckpt
    whose YAML names an ECAPA_TDNN embedding model (content, not names alone). Never raises."""
    folder = Path(path)
    try:
        if not (folder / HYPERPARAMS).is_file() or not (folder / EMBEDDING_CKPT).is_file():
            return False
        if (folder / HYPERPARAMS).stat().st_size > (1 << 20):
            return False
        text = (folder / HYPERPARAMS).read_bytes()
    except OSError:
        return False
    return b"embedding_model" in text and b"ECAPA_TDNN" in text


def _read_limited(path: Path, limit: int) -> bytes:
    try:
        size = path.stat().st_size
        if size > limit:
            raise ModelError(f"{path}: {size} bytes is over the {limit}-byte limit")
        return path.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"{path}: missing") from None
    except OSError as exc:
        raise ModelError(f"{path}: cannot read ({exc.strerror or exc})") from None


def load_checkpoint(path: Path, limit: int) -> dict[str, Any]:
    """A checkpoint read with ``torch.load(weights_only=True)`` (no pickle runs code).
    Raises ModelError for missing, oversized, malformed or object-carrying files (one line,
    never with torch's warnings or its advice to load unsafely)."""
    state = read_checkpoint(_read_limited(path, limit), str(path), 2 * limit)
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise ModelError(f"{path}: not a checkpoint of named tensors")
    return state


def _folder_sha256(folder: Path, names: list[str]) -> str:
    """sha256 over (name, size, sha256) of the files that define the embeddings, in a fixed
    order, so the identity changes when the configuration or weights change."""
    total = hashlib.sha256()
    for name in names:
        data_hash = hashlib.sha256()
        size = 0
        with open(folder / name, "rb") as fh:
            while chunk := fh.read(1 << 20):
                data_hash.update(chunk)
                size += len(chunk)
        total.update(f"{name}\0{size}\0{data_hash.hexdigest()}\n".encode())
    return total.hexdigest()


def load_speechbrain(
    path: str | os.PathLike[str], *, embedding_norm: bool = False
) -> SpeechBrainEncoder:
    """Load an spkrec-ecapa-style folder. ``embedding_norm=True`` applies mean_var_norm_emb
    (SpeechBrain's ``encode_batch(normalize=True)``); the default matches its verification.

    Raises ModelError: not a folder, missing files, malformed or unsupported hyperparams,
    checkpoints that are not plain tensors or do not fit the configuration.
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ModelError(f"{folder}: not a SpeechBrain model folder (not a directory)")
    for name in (HYPERPARAMS, EMBEDDING_CKPT):
        if not (folder / name).is_file():
            raise ModelError(f"{folder}: missing {name} (not a SpeechBrain model folder)")
    config = parse_hyperparams(
        _read_limited(folder / HYPERPARAMS, 1 << 20), str(folder / HYPERPARAMS)
    )
    state = load_checkpoint(folder / EMBEDDING_CKPT, MAX_CKPT_BYTES)
    network = EcapaTdnn(config.ecapa)
    problems = check_state_dict(network, state, str(folder / EMBEDDING_CKPT))
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ModelError(problems[0] + more)
    for key, tensor in state.items():
        if not isinstance(tensor, torch.Tensor) or not torch.all(torch.isfinite(tensor.float())):
            raise ModelError(f"{folder / EMBEDDING_CKPT}: tensor {key} is not finite")
    network.load_state_dict(
        {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    )

    hashed = [HYPERPARAMS, EMBEDDING_CKPT]
    mean = std = None
    if embedding_norm:
        if config.embedding_norm is None or not (folder / EMBEDDING_NORM_CKPT).is_file():
            raise ModelError(
                f"{folder}: embedding_norm needs mean_var_norm_emb in hyperparams.yaml and "
                f"{EMBEDDING_NORM_CKPT}"
            )
        stats = load_checkpoint(folder / EMBEDDING_NORM_CKPT, MAX_NORM_CKPT_BYTES)
        mean = _stat_vector(stats, "glob_mean", config.ecapa.lin_neurons, folder)
        if config.embedding_norm.std_norm:
            std = _stat_vector(stats, "glob_std", config.ecapa.lin_neurons, folder)
        hashed.append(EMBEDDING_NORM_CKPT)
    digest = _folder_sha256(folder, hashed)
    return SpeechBrainEncoder(config, network, digest, mean, std)


def _stat_vector(stats: Mapping[str, Any], key: str, size: int, folder: Path) -> torch.Tensor:
    value = stats.get(key)
    if not isinstance(value, torch.Tensor) or value.numel() != size:
        raise ModelError(f"{folder / EMBEDDING_NORM_CKPT}: {key} is not a tensor of {size} values")
    return value.reshape(size).float()
