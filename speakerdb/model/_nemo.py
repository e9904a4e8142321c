"""The ``nemo`` model family: NVIDIA NeMo ``EncDecSpeakerLabelModel`` archives (``.nemo``),
loaded natively, without NeMo, giving the embeddings NeMo's ``get_embedding`` gives.

Supported, as NeMo 3.0 computes them: ``AudioToMelSpectrogramPreprocessor``;
``ConvASREncoder`` with Jasper blocks (TitaNet S/M/L, SpeakerNet: separable or full
convolutions, squeeze-excitation, residuals, any activation of NeMo's registry, kernel size
factors, dilation) and NeMo's ``ECAPAEncoder``; ``SpeakerDecoder`` with attention, xvector
or tap pooling. A config field or value that this module does not reproduce exactly is refused
with a ModelError naming it (for example strided or grouped convolutions, unmasked Jasper
convolutions, group/layer normalisation, ``pad_to: max``, frame splicing). Training-only
settings (dither, spec augment, dropout, losses, data sets, optimiser) are ignored.

How audio reaches the network, as in ``EncDecSpeakerLabelModel.infer_file``: samples are
resampled with librosa's default (soxr "HQ", then cut or zero-padded to
``ceil(n * target / rate)``) to the config's ``train_ds.sample_rate`` (16 kHz), the whole
recording is one chunk (no windows), and the embedding is the decoder's embedding layer.

For the engine: ``prepare`` and ``encode`` keep no state and may run in several threads at
once. On a shared CPU, run them with one torch thread per worker (``torch.set_num_threads(1)``,
one worker per core): with OpenMP's spinning threads both NeMo and this module slow down many
times when another process takes a core. A recording is encoded whole, as NeMo does (no
chunking: it would change the embedding); TitaNet-L on a 10-minute recording peaks at about
2 GB above the loaded model (NeMo: about 5 GB). Padding is masked, so batches of any lengths
give the same embeddings, but padded frames still cost time: batch similar lengths.
"""

from __future__ import annotations

import math
import mmap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from speakerdb.errors import ModelError, TooLittleSpeechError
from speakerdb.model._encoder import SpeakerEncoder
from speakerdb.model._nemo_archive import (
    MAX_WEIGHTS_BYTES,
    file_sha256,
    is_nemo_archive,
    parse_config,
    read_nemo_archive,
)
from speakerdb.model._nemo_nets import (
    ACTIVATIONS,
    AttentivePooling,
    EcapaEncoder,
    EmbeddingHead,
    JasperBlock,
    JasperEncoder,
    MelFrontEnd,
    NemoSpeakerNet,
    StatsPooling,
    SubLayer,
    TdnnLayer,
    TdnnSeBlock,
)
from speakerdb.model._weights import read_checkpoint

__all__ = ["NEMO_THRESHOLD_NOTE", "NemoEncoder", "is_nemo_archive", "load_nemo"]

# NeMo's verify_speakers accepts when (cosine + 1) / 2 >= 0.7, i.e. cosine >= 0.4.
_NEMO_DEFAULT_THRESHOLD = 2 * 0.7 - 1
NEMO_THRESHOLD_NOTE = (
    "NeMo's verify_speakers default, (cosine + 1) / 2 >= 0.7, i.e. cosine >= 0.4; "
    "not calibrated on your data"
)

_MODEL_TARGETS = {
    "nemo.collections.asr.models.label_models.EncDecSpeakerLabelModel",
    "nemo.collections.asr.models.EncDecSpeakerLabelModel",
}
_PREPROCESSOR = "AudioToMelSpectrogramPreprocessor"
_JASPER = "ConvASREncoder"
_ECAPA = "ECAPAEncoder"
_DECODER = "SpeakerDecoder"
_MODULE_PATHS = {
    _PREPROCESSOR: ("nemo.collections.asr.modules", "audio_preprocessing"),
    _JASPER: ("nemo.collections.asr.modules", "conv_asr"),
    _ECAPA: ("nemo.collections.asr.modules", "conv_asr"),
    _DECODER: ("nemo.collections.asr.modules", "conv_asr"),
}
_WINDOWS = ("hann", "hamming", "blackman", "bartlett")
# BatchNorm epsilons of NeMo's modules: JasperBlock sets 1e-3, the others keep torch's 1e-5.
_JASPER_BN_EPS = 1e-3
_BN_EPS = 1e-5
# Weights present in every checkpoint that the embedding does not use (speaker classifier).
_UNUSED_WEIGHTS = ("decoder.final.weight", "decoder.final.bias")


# --- config -------------------------------------------------------------------------------------


class _Config:
    """One config section with typed, path-naming accessors; every key read is recorded so
    that :meth:`refuse_unknown` can name a key this loader does not know."""

    def __init__(self, data: dict[str, Any], path: str, source: str) -> None:
        self.data = data
        self.path = path
        self.source = source
        self.read: set[str] = set()

    def where(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def refuse(self, key: str, why: str) -> ModelError:
        value = self.data.get(key)
        return ModelError(f"{self.source}: unsupported {self.where(key)}={value!r} ({why})")

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return self.data.get(key, default)

    def integer(self, key: str, default: int | None = None, minimum: int | None = None) -> int:
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.refuse(key, "an integer is needed")
        if minimum is not None and value < minimum:
            raise self.refuse(key, f"must be at least {minimum}")
        return value

    def number(self, key: str, default: float | None = None) -> float:
        value = self.get(key, default)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise self.refuse(key, "a finite number is needed")
        return float(value)

    def optional_number(self, key: str, default: float | None) -> float | None:
        return None if self.get(key, default) is None else self.number(key, default)

    def flag(self, key: str, default: bool) -> bool:
        value = self.get(key, default)
        if not isinstance(value, bool):
            raise self.refuse(key, "true or false is needed")
        return value

    def text(self, key: str, default: str | None = None) -> str:
        value = self.get(key, default)
        if not isinstance(value, str):
            raise self.refuse(key, "a string is needed")
        return value

    def one_int_list(self, key: str, default: list[int] | None = None) -> int:
        """NeMo's per-block ``kernel`` / ``stride`` / ``dilation``: a one-element list."""
        value = self.get(key, default)
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        if (
            not isinstance(value, list)
            or len(value) != 1
            or isinstance(value[0], bool)
            or not isinstance(value[0], int)
            or value[0] < 1
        ):
            raise self.refuse(key, "a one-element list of a positive integer is needed")
        return int(value[0])

    def int_list(self, key: str) -> list[int]:
        value = self.get(key)
        if not isinstance(value, list) or not value:
            raise self.refuse(key, "a list of positive integers is needed")
        for item in value:
            if isinstance(item, bool) or not isinstance(item, int) or item < 1:
                raise self.refuse(key, "a list of positive integers is needed")
        return [int(v) for v in value]

    def section(self, key: str) -> _Config:
        value = self.get(key)
        if not isinstance(value, dict):
            raise ModelError(f"{self.source}: {self.where(key)} is missing or not a mapping")
        return _Config(_hydra_1(value), self.where(key), self.source)

    def refuse_unknown(self, ignored: frozenset[str] = frozenset()) -> None:
        for key in self.data:
            if key not in self.read and key not in ignored:
                raise ModelError(
                    f"{self.source}: unsupported {self.where(str(key))}={self.data[key]!r} "
                    "(not a parameter this loader knows)"
                )


def _hydra_1(section: dict[str, Any]) -> dict[str, Any]:
    """Old (Hydra 0.x) module configs as NeMo upgrades them: ``cls`` -> ``_target_`` and the
    ``params`` mapping merged into the section."""
    section = dict(section)
    if "cls" in section and "_target_" not in section:
        section["_target_"] = section.pop("cls")
    params = section.pop("params", None)
    if isinstance(params, dict):
        section.update(params)
    return section


def _target(cfg: _Config, *names: str) -> str:
    """The class a module section instantiates, among ``names`` (short names); refused
    otherwise."""
    target = cfg.get("_target_")
    for name in names:
        package, module = _MODULE_PATHS[name]
        if target in (f"{package}.{name}", f"{package}.{module}.{name}"):
            return name
    raise cfg.refuse("_target_", f"supported: {', '.join(names)}")


@dataclass(frozen=True)
class _FrontEndSpec:
    sample_rate: int
    win_length: int
    hop_length: int
    n_fft: int
    window: str
    normalize: str | None
    preemph: float | None
    features: int
    log: bool
    log_guard_add: bool
    log_guard_value: float
    pad_to: int
    exact_pad: bool
    pad_value: float
    mag_power: float


def _front_end_spec(cfg: _Config) -> _FrontEndSpec:
    _target(cfg, _PREPROCESSOR)
    sample_rate = cfg.integer("sample_rate", 16000, minimum=1)
    window_size = cfg.optional_number("window_size", 0.02)
    window_stride = cfg.optional_number("window_stride", 0.01)
    n_window_size = cfg.get("n_window_size")
    n_window_stride = cfg.get("n_window_stride")
    # The same rules and arithmetic as AudioToMelSpectrogramPreprocessor.__init__.
    if window_size and n_window_size:
        raise cfg.refuse("n_window_size", "NeMo refuses both window_size and n_window_size")
    if window_stride and n_window_stride:
        raise cfg.refuse("n_window_stride", "NeMo refuses both window_stride and n_window_stride")
    win = int(window_size * sample_rate) if window_size else cfg.integer("n_window_size", None, 1)
    hop = (
        int(window_stride * sample_rate)
        if window_stride
        else cfg.integer("n_window_stride", None, 1)
    )
    if win <= 0 or hop <= 0:
        raise cfg.refuse("window_size", "the window and hop must be positive")
    n_fft_value = cfg.get("n_fft")
    n_fft = 2 ** math.ceil(math.log2(win)) if n_fft_value is None else cfg.integer("n_fft", None, 1)
    window = cfg.get("window", "hann")
    if window not in _WINDOWS:
        raise cfg.refuse("window", f"supported: {', '.join(_WINDOWS)}")
    normalize = cfg.get("normalize", "per_feature")
    if normalize in (None, False, ""):
        normalize = None
    elif normalize not in ("per_feature", "all_features"):
        raise cfg.refuse("normalize", "supported: per_feature, all_features, null")
    guard_type = cfg.get("log_zero_guard_type", "add")
    if guard_type not in ("add", "clamp"):
        raise cfg.refuse("log_zero_guard_type", "supported: add, clamp")
    guard = cfg.get("log_zero_guard_value", 2**-24)
    if guard == "tiny":
        guard_value = float(torch.finfo(torch.float32).tiny)
    elif guard == "eps":
        guard_value = float(torch.finfo(torch.float32).eps)
    else:
        guard_value = cfg.number("log_zero_guard_value", 2**-24)
    pad_to = cfg.get("pad_to", 16)
    if isinstance(pad_to, bool) or not isinstance(pad_to, int) or pad_to < 0:
        raise cfg.refuse("pad_to", "a non-negative integer is needed ('max' is not supported)")
    if cfg.integer("frame_splicing", 1) != 1:
        raise cfg.refuse("frame_splicing", "only 1 is supported")
    exact_pad = cfg.flag("exact_pad", False)
    if exact_pad and hop % 2 == 1:
        raise cfg.refuse("exact_pad", "NeMo refuses exact padding with an odd hop")
    if cfg.get("rng") is not None:
        raise cfg.refuse("rng", "only null is supported")
    # Training-only (dither, narrow-band augmentation) or used only to build the mel matrix,
    # which comes from the checkpoint; deprecated flags NeMo 3.0 ignores.
    for key in ("dither", "nb_augmentation_prob", "nb_max_freq", "lowfreq"):
        cfg.number(key, 0.0)
    cfg.optional_number("highfreq", None)
    if cfg.get("mel_norm", "slaney") not in ("slaney", None):
        cfg.number("mel_norm")  # librosa also takes a number (a p-norm)
    for key in ("use_torchaudio", "stft_exact_pad", "stft_conv"):
        cfg.flag(key, False)
    spec = _FrontEndSpec(
        sample_rate=sample_rate,
        win_length=win,
        hop_length=hop,
        n_fft=n_fft,
        window=str(window),
        normalize=normalize,
        preemph=cfg.optional_number("preemph", 0.97),
        features=cfg.integer("features", 64, minimum=1),
        log=cfg.flag("log", True),
        log_guard_add=guard_type == "add",
        log_guard_value=guard_value,
        pad_to=pad_to,
        exact_pad=exact_pad,
        pad_value=cfg.number("pad_value", 0.0),
        mag_power=cfg.number("mag_power", 2.0),
    )
    cfg.refuse_unknown(frozenset({"_target_"}))
    return spec


@dataclass(frozen=True)
class _BlockSpec:
    filters: int
    repeat: int
    kernel: int
    dilation: int
    residual: bool
    separable: bool
    se: bool
    se_reduction: int


@dataclass(frozen=True)
class _JasperSpec:
    feat_in: int
    activation: str
    blocks: tuple[_BlockSpec, ...]


def _kernel_with_factor(kernel: int, factor: float) -> int:
    """NeMo's compute_new_kernel_size: scaled, at least 1, rounded up to an odd size."""
    size = max(int(kernel * factor), 1)
    return size + 1 if size % 2 == 0 else size


def _jasper_spec(cfg: _Config) -> _JasperSpec:
    activation = cfg.text("activation")
    if activation not in ACTIVATIONS:
        raise cfg.refuse("activation", f"supported: {', '.join(ACTIVATIONS)}")
    if cfg.get("normalization_mode", "batch") != "batch":
        raise cfg.refuse("normalization_mode", "only batch normalisation is supported")
    if not cfg.flag("conv_mask", True):
        raise cfg.refuse("conv_mask", "only masked convolutions are supported")
    if cfg.integer("frame_splicing", 1) != 1:
        raise cfg.refuse("frame_splicing", "only 1 is supported")
    if cfg.get("quantize", False) is not False:
        raise cfg.refuse("quantize", "quantised convolutions are not supported")
    default_mode = cfg.get("residual_mode", "add")
    if default_mode not in ("add", "stride_add"):
        raise cfg.refuse("residual_mode", "supported: add, stride_add")
    cfg.get("norm_groups")  # used by group normalisation only
    cfg.get("init_mode")  # initialisation only
    layers = cfg.get("jasper")
    if not isinstance(layers, list) or not layers:
        raise cfg.refuse("jasper", "a list of blocks is needed")
    blocks = []
    for i, raw in enumerate(layers):
        if not isinstance(raw, dict):
            raise ModelError(f"{cfg.source}: {cfg.where(f'jasper.{i}')} is not a mapping")
        block = _Config(raw, cfg.where(f"jasper.{i}"), cfg.source)
        if block.one_int_list("stride") != 1:
            raise block.refuse("stride", "only stride 1 is supported")
        factor = block.number("kernel_size_factor", 1.0)
        if factor <= 0:
            raise block.refuse("kernel_size_factor", "must be positive")
        if block.integer("groups", 1) != 1:
            raise block.refuse("groups", "grouped convolutions are not supported")
        if block.integer("heads", -1) != -1:
            raise block.refuse("heads", "convolution heads are not supported")
        if block.flag("residual_dense", False):
            raise block.refuse("residual_dense", "dense residuals are not supported")
        if block.get("residual_mode", default_mode) not in ("add", "stride_add"):
            raise block.refuse("residual_mode", "supported: add, stride_add")
        if block.integer("future_context", -1) != -1:
            raise block.refuse("future_context", "only symmetric ('same') padding is supported")
        # In eval mode NeMo 3.0 averages squeeze-excitation over the whole utterance whatever
        # the context size; the interpolation mode is unused; stride_last only matters with
        # strides; dropout is off.
        block.integer("se_context_size", -1)
        block.get("se_interpolation_mode")
        block.flag("stride_last", False)
        block.number("dropout")
        blocks.append(
            _BlockSpec(
                filters=block.integer("filters", None, 1),
                repeat=block.integer("repeat", None, 1),
                kernel=_kernel_with_factor(block.one_int_list("kernel"), factor),
                dilation=block.one_int_list("dilation"),
                residual=block.flag("residual", False),
                separable=block.flag("separable", False),
                se=block.flag("se", False),
                se_reduction=block.integer("se_reduction_ratio", 8, minimum=1),
            )
        )
        block.refuse_unknown()
    spec = _JasperSpec(cfg.integer("feat_in", None, 1), activation, tuple(blocks))
    cfg.refuse_unknown(frozenset({"_target_"}))
    return spec


@dataclass(frozen=True)
class _EcapaSpec:
    feat_in: int
    filters: tuple[int, ...]
    kernels: tuple[int, ...]
    dilations: tuple[int, ...]
    scale: int


def _ecapa_spec(cfg: _Config) -> _EcapaSpec:
    filters = cfg.int_list("filters")
    kernels = cfg.int_list("kernel_sizes")
    dilations = cfg.int_list("dilations")
    if len(filters) < 3 or len(kernels) != len(filters) or len(dilations) != len(filters):
        raise cfg.refuse("filters", "filters, kernel_sizes and dilations: equal lengths >= 3")
    if len(set(filters[:-1])) != 1 or sum(filters[1:-1]) != filters[-1]:
        raise cfg.refuse("filters", "NeMo's ECAPA needs equal block widths summing to the last")
    scale = cfg.integer("scale", 8, minimum=1)
    if filters[0] % scale:
        raise cfg.refuse("scale", "must divide the block width")
    cfg.get("init_mode")
    spec = _EcapaSpec(
        cfg.integer("feat_in", None, 1), tuple(filters), tuple(kernels), tuple(dilations), scale
    )
    cfg.refuse_unknown(frozenset({"_target_"}))
    return spec


@dataclass(frozen=True)
class _DecoderSpec:
    feat_in: int
    pool_mode: str
    emb_sizes: tuple[int, ...]
    attention_channels: int


def _decoder_spec(cfg: _Config) -> _DecoderSpec:
    _target(cfg, _DECODER)
    pool_mode = cfg.get("pool_mode", "xvector")
    if not isinstance(pool_mode, str) or pool_mode.lower() not in ("xvector", "tap", "attention"):
        raise cfg.refuse("pool_mode", "supported: xvector, tap, attention")
    sizes = cfg.get("emb_sizes", 256)
    if isinstance(sizes, int) and not isinstance(sizes, bool):
        sizes = [sizes]
    if (
        not isinstance(sizes, list)
        or not sizes
        or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes)
    ):
        raise cfg.refuse("emb_sizes", "a positive integer or a list of them is needed")
    cfg.integer("num_classes", None, 1)  # the classifier, not used for embeddings
    cfg.flag("angular", False)  # changes the classifier only
    cfg.get("init_mode")
    spec = _DecoderSpec(
        cfg.integer("feat_in", None, 1),
        pool_mode.lower(),
        tuple(int(s) for s in sizes),
        cfg.integer("attention_channels", 128, minimum=1),
    )
    cfg.refuse_unknown(frozenset({"_target_"}))
    return spec


@dataclass(frozen=True)
class _ModelSpec:
    sample_rate: int
    front_end: _FrontEndSpec
    encoder: _JasperSpec | _EcapaSpec
    decoder: _DecoderSpec


def _model_spec(data: dict[str, Any], source: str) -> _ModelSpec:
    root = _Config(data, "", source)
    target = root.get("target")
    if target is not None and target not in _MODEL_TARGETS:
        raise ModelError(
            f"{source}: a {target} model is not a speaker embedding model (EncDecSpeakerLabelModel)"
        )
    front_end = _front_end_spec(root.section("preprocessor"))
    encoder_cfg = root.section("encoder")
    kind = _target(encoder_cfg, _JASPER, _ECAPA)
    encoder = _jasper_spec(encoder_cfg) if kind == _JASPER else _ecapa_spec(encoder_cfg)
    decoder = _decoder_spec(root.section("decoder"))
    # get_embedding resamples to train_ds.sample_rate (16 kHz when absent).
    sample_rate = 16000
    train = data.get("train_ds")
    if isinstance(train, dict) and train.get("sample_rate") is not None:
        sample_rate = _Config(train, "train_ds", source).integer("sample_rate", None, 1)
    if encoder.feat_in != front_end.features:
        raise ModelError(
            f"{source}: encoder.feat_in={encoder.feat_in} does not match "
            f"preprocessor.features={front_end.features}"
        )
    return _ModelSpec(sample_rate, front_end, encoder, decoder)


# --- weights ------------------------------------------------------------------------------------


class _Weights:
    """The checkpoint's tensors, handed out by key with shape checks, float32; keys never
    taken are refused at the end (the architecture would differ from the config)."""

    def __init__(self, state: dict[str, Tensor], source: str) -> None:
        self.state = state
        self.source = source
        self.taken: set[str] = set()

    def take(self, key: str, shape: tuple[int, ...]) -> Tensor:
        tensor = self.state.get(key)
        if tensor is None:
            raise ModelError(f"{self.source}: weight {key} is missing from model_weights.ckpt")
        if tuple(tensor.shape) != shape:
            raise ModelError(
                f"{self.source}: weight {key} has shape {tuple(tensor.shape)}, the config "
                f"implies {shape}"
            )
        if not tensor.is_floating_point():
            raise ModelError(f"{self.source}: weight {key} is not floating point")
        self.taken.add(key)
        out = tensor.detach().to(torch.float32).contiguous()
        if not bool(torch.isfinite(out).all()):
            raise ModelError(f"{self.source}: weight {key} has NaN or infinite values")
        return out

    def batchnorm(
        self, prefix: str, channels: int, eps: float, affine: bool = True
    ) -> tuple[Tensor, Tensor]:
        """Eval-mode BatchNorm as a per-channel (scale, shift)."""
        mean = self.take(f"{prefix}.running_mean", (channels,))
        var = self.take(f"{prefix}.running_var", (channels,))
        if f"{prefix}.num_batches_tracked" in self.state:
            self.taken.add(f"{prefix}.num_batches_tracked")
        scale = 1.0 / torch.sqrt(var + eps)
        if affine:
            scale = scale * self.take(f"{prefix}.weight", (channels,))
            shift = self.take(f"{prefix}.bias", (channels,)) - mean * scale
        else:
            shift = -mean * scale
        return scale, shift

    def finish(self) -> None:
        for key in self.state:
            if key not in self.taken and key not in _UNUSED_WEIGHTS:
                raise ModelError(
                    f"{self.source}: unexpected weight {key} in model_weights.ckpt (the network "
                    "differs from what its config describes)"
                )


def _load_state(weights: bytearray | mmap.mmap, source: str) -> dict[str, Tensor]:
    state = read_checkpoint(weights, f"{source}: model_weights.ckpt", MAX_WEIGHTS_BYTES)
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
    ):
        raise ModelError(f"{source}: model_weights.ckpt is not a state dict of named tensors")
    return state


def _front_end(spec: _FrontEndSpec, weights: _Weights) -> MelFrontEnd:
    window = weights.take("preprocessor.featurizer.window", (spec.win_length,))
    filterbank = weights.take("preprocessor.featurizer.fb", (1, spec.features, spec.n_fft // 2 + 1))
    if spec.n_fft < spec.win_length:
        raise ModelError(f"{weights.source}: n_fft={spec.n_fft} is shorter than the window")
    return MelFrontEnd(
        hop_length=spec.hop_length,
        win_length=spec.win_length,
        n_fft=spec.n_fft,
        exact_pad=spec.exact_pad,
        preemph=spec.preemph,
        window=window,
        filterbank=filterbank,
        mag_power=spec.mag_power,
        log=spec.log,
        log_guard_add=spec.log_guard_add,
        log_guard_value=spec.log_guard_value,
        normalize=spec.normalize,
    )


def _jasper_conv(
    weights: _Weights, prefix: str, index: int, c_in: int, c_out: int, block: _BlockSpec
) -> tuple[SubLayer, int]:
    """Sub-layer ``index`` of a block's ``mconv`` list starting at module ``prefix.mconv.N``:
    its convolution(s) and BatchNorm folded together. Returns it and the next module index."""
    k = block.kernel
    if block.separable:
        depthwise = weights.take(f"{prefix}.mconv.{index}.conv.weight", (c_in, 1, k))
        point = weights.take(f"{prefix}.mconv.{index + 1}.conv.weight", (c_out, c_in, 1))[:, :, 0]
        scale, shift = weights.batchnorm(f"{prefix}.mconv.{index + 2}", c_out, _JASPER_BN_EPS)
        point = point * scale[:, None]
        if k == 1:  # a 1-wide depthwise convolution is a per-channel scale: fold it too
            point = point * depthwise[:, 0, 0][None, :]
            return SubLayer(None, None, 1, point.contiguous(), shift), index + 3
        taps = depthwise[:, 0, :].T.contiguous()  # (k, C) for channels-last time steps
        return SubLayer(taps, None, block.dilation, point.contiguous(), shift), index + 3
    full = weights.take(f"{prefix}.mconv.{index}.conv.weight", (c_out, c_in, k))
    scale, shift = weights.batchnorm(f"{prefix}.mconv.{index + 1}", c_out, _JASPER_BN_EPS)
    full = full * scale[:, None, None]
    if k == 1:
        return SubLayer(None, None, 1, full[:, :, 0].contiguous(), shift), index + 2
    return SubLayer(None, full.contiguous(), block.dilation, None, shift), index + 2


def _jasper_encoder(spec: _JasperSpec, weights: _Weights) -> tuple[JasperEncoder, int]:
    blocks = []
    c_in = spec.feat_in
    for b, block in enumerate(spec.blocks):
        prefix = f"encoder.encoder.{b}"
        layers = []
        index = 0
        channels = c_in
        for r in range(block.repeat):
            layer, index = _jasper_conv(weights, prefix, index, channels, block.filters, block)
            layers.append(layer)
            channels = block.filters
            if r < block.repeat - 1:
                index += 2  # activation and dropout modules hold no weights
        se = None
        if block.se:
            hidden = block.filters // block.se_reduction
            se = (
                weights.take(f"{prefix}.mconv.{index}.fc.0.weight", (hidden, block.filters)),
                weights.take(f"{prefix}.mconv.{index}.fc.2.weight", (block.filters, hidden)),
            )
        residual = None
        if block.residual:
            point = weights.take(f"{prefix}.res.0.0.conv.weight", (block.filters, c_in, 1))
            scale, shift = weights.batchnorm(f"{prefix}.res.0.1", block.filters, _JASPER_BN_EPS)
            point = (point[:, :, 0] * scale[:, None]).contiguous()
            residual = SubLayer(None, None, 1, point, shift)
        blocks.append(JasperBlock(layers, spec.activation, se, residual))
        c_in = block.filters
    return JasperEncoder(blocks), c_in


def _tdnn(weights: _Weights, prefix: str, c_in: int, c_out: int, k: int, d: int) -> TdnnLayer:
    weight = weights.take(f"{prefix}.conv_layer.weight", (c_out, c_in, k))
    bias = weights.take(f"{prefix}.conv_layer.bias", (c_out,))
    return TdnnLayer(weight, bias, d, weights.batchnorm(f"{prefix}.bn", c_out, _BN_EPS))


def _ecapa_encoder(
    spec: _EcapaSpec, front: _FrontEndSpec, weights: _Weights
) -> tuple[EcapaEncoder, int]:
    f, k, d = spec.filters, spec.kernels, spec.dilations
    first = _tdnn(weights, "encoder.layers.0", spec.feat_in, f[0], k[0], d[0])
    blocks = []
    se_channels = 128  # fixed in NeMo's ECAPAEncoder
    for i in range(len(f) - 2):
        prefix = f"encoder.layers.{i + 1}"
        c_in, c = f[i], f[i + 1]
        one = _tdnn(weights, f"{prefix}.group_tdnn_block.0", c_in, c, 1, 1)
        group_w = weights.take(
            f"{prefix}.group_tdnn_block.1.weight", (c, c // spec.scale, k[i + 1])
        )
        group_b = weights.take(f"{prefix}.group_tdnn_block.1.bias", (c,))
        bn = weights.batchnorm(f"{prefix}.group_tdnn_block.3", c, _BN_EPS)
        two = _tdnn(weights, f"{prefix}.group_tdnn_block.4", c, c, 1, 1)
        se = f"{prefix}.se_layer.se_layer"
        se_weights = (
            weights.take(f"{se}.0.weight", (se_channels, c, 1))[:, :, 0].contiguous(),
            weights.take(f"{se}.0.bias", (se_channels,)),
            weights.batchnorm(f"{se}.2", se_channels, _BN_EPS),
            weights.take(f"{se}.3.weight", (c, se_channels, 1))[:, :, 0].contiguous(),
            weights.take(f"{se}.3.bias", (c,)),
        )
        blocks.append(TdnnSeBlock(one, group_w, group_b, spec.scale, d[i + 1], bn, two, se_weights))
    aggregate = _tdnn(weights, "encoder.feature_agg", f[-1], f[-1], k[-1], d[-1])
    return EcapaEncoder(first, blocks, aggregate, front.pad_to, front.pad_value), f[-1]


def _decoder(
    spec: _DecoderSpec, channels: int, weights: _Weights
) -> tuple[AttentivePooling | StatsPooling, EmbeddingHead, int]:
    if spec.feat_in != channels:
        raise ModelError(
            f"{weights.source}: decoder.feat_in={spec.feat_in} does not match the encoder's "
            f"{channels} output channels"
        )
    pooling: AttentivePooling | StatsPooling
    a = spec.attention_channels
    prefix = "decoder._pooling.attention_layer"
    if spec.pool_mode == "attention":
        pooling = AttentivePooling(
            weights.take(f"{prefix}.0.conv_layer.weight", (a, 3 * channels, 1))[:, :, 0],
            weights.take(f"{prefix}.0.conv_layer.bias", (a,)),
            weights.batchnorm(f"{prefix}.0.bn", a, _BN_EPS),
            weights.take(f"{prefix}.2.weight", (channels, a, 1))[:, :, 0].contiguous(),
            weights.take(f"{prefix}.2.bias", (channels,)),
        )
        width = 2 * channels
    else:
        pooling = StatsPooling(with_std=spec.pool_mode == "xvector")
        width = 2 * channels if spec.pool_mode == "xvector" else channels
    layers: list[tuple[Tensor, Tensor, bool]] = []
    for i, size in enumerate(spec.emb_sizes):
        prefix = f"decoder.emb_layers.{i}"
        last = i == len(spec.emb_sizes) - 1
        if spec.pool_mode == "attention":
            # BatchNorm(in) then a 1x1 convolution, no activation: BN folds into the input side.
            scale, shift = weights.batchnorm(f"{prefix}.0", width, _BN_EPS)
            weight = weights.take(f"{prefix}.1.weight", (size, width, 1))[:, :, 0]
            bias = weights.take(f"{prefix}.1.bias", (size,))
            layers.append(((weight * scale[None, :]).contiguous(), bias + weight @ shift, False))
        else:
            # Linear then BatchNorm without affine then ReLU; the embedding is taken before the
            # last layer's ReLU.
            weight = weights.take(f"{prefix}.0.weight", (size, width))
            bias = weights.take(f"{prefix}.0.bias", (size,))
            scale, shift = weights.batchnorm(f"{prefix}.1", size, _BN_EPS, affine=False)
            layers.append(((weight * scale[:, None]).contiguous(), bias * scale + shift, not last))
        width = size
    return pooling, EmbeddingHead(layers), width


# --- the encoder --------------------------------------------------------------------------------


class NemoEncoder(SpeakerEncoder):
    """A NeMo speaker model behind speakerdb's SpeakerEncoder interface.

    ``prepare`` gives one chunk per recording (the whole recording, as NeMo embeds it);
    ``encode`` masks every padded frame, so a chunk's embedding does not depend on the batch
    (``exact_padding``). ``architecture`` describes the network in one line.
    """

    family = "nemo"
    # 8 s per encoder call on a CPU: batches of 10 000 frames ran 1.5-1.7x slower per frame
    # than single files for TitaNet-L and ECAPA (C=1024) on a 2-core CPU (see _encoder.py).
    cpu_batch_frames = 800

    def __init__(
        self,
        front_end: MelFrontEnd,
        net: NemoSpeakerNet,
        dimension: int,
        sample_rate: int,
        weights_sha256: str,
        architecture: str,
    ) -> None:
        self.front_end = front_end
        self.net = net.eval()
        self.dimension = dimension
        self.sample_rate = sample_rate
        self.default_threshold = _NEMO_DEFAULT_THRESHOLD
        self.threshold_note = NEMO_THRESHOLD_NOTE
        self.weights_sha256 = weights_sha256
        self.exact_padding = True
        self.architecture = architecture
        self.device = torch.device("cpu")

    def resample(self, samples: npt.NDArray[np.float32], rate: int) -> npt.NDArray[np.float32]:
        """(n,) float32 at ``rate`` Hz -> (m,) float32 at :attr:`sample_rate`, as
        ``librosa.resample`` does by default: soxr "HQ" on float64, length fixed to
        ``ceil(n * sample_rate / rate)``. Unchanged when the rate already matches."""
        if rate == self.sample_rate:
            return np.ascontiguousarray(samples, dtype=np.float32)
        import soxr

        data = np.asarray(samples, dtype=np.float64)
        target = int(np.ceil(data.shape[-1] * (float(self.sample_rate) / rate)))
        out = soxr.resample(data, rate, self.sample_rate, quality="soxr_hq")
        if out.shape[0] > target:
            out = out[:target]
        elif out.shape[0] < target:
            out = np.pad(out, (0, target - out.shape[0]))
        resampled: npt.NDArray[np.float32] = out.astype(np.float32)
        return resampled

    def prepare(self, samples: npt.NDArray[np.float32]) -> list[Tensor]:
        """(n,) float32 at :attr:`sample_rate` -> [(T, F) float32 features], T = n // hop
        (10 ms frames). Raises TooLittleSpeechError when not one frame fits."""
        if self.front_end.frames(len(samples)) < 1:
            raise TooLittleSpeechError("<array>", "shorter than one feature frame")
        with torch.inference_mode():
            return [self.front_end(samples)]

    def encode(self, features: Tensor, lengths: Tensor) -> Tensor:
        """(B, T, F) float32 zero-padded features, (B,) int64 valid frames -> (B, D) float32
        embeddings (not normalised), on the network's device."""
        with torch.inference_mode():
            embeddings: Tensor = self.net(features.to(self.device), lengths.to(self.device))
        return embeddings

    def to(self, device: torch.device) -> None:
        self.net.to(device)
        self.device = torch.device(device)


def load_nemo(path: Path) -> NemoEncoder:
    """Load a NeMo ``EncDecSpeakerLabelModel`` archive (``.nemo``) without NeMo.

    Every archive member is checked before anything is read; the config is parsed as plain
    YAML and validated field by field; the weights are read with ``weights_only=True`` and
    checked key by key against the config. Raises ModelError (one line) for a missing,
    unreadable, hostile or unsupported file, naming the reason, field or weight.
    """
    path = Path(path).expanduser()
    source = path.name
    archive = read_nemo_archive(path)
    spec = _model_spec(parse_config(archive.config_text, source), source)
    weights = _Weights(_load_state(archive.weights, source), source)
    del archive  # the checkpoint's bytes: the tensors now hold their own copies
    front_end = _front_end(spec.front_end, weights)
    encoder: JasperEncoder | EcapaEncoder
    if isinstance(spec.encoder, _JasperSpec):
        encoder, channels = _jasper_encoder(spec.encoder, weights)
        kind = (
            f"ConvASREncoder ({len(spec.encoder.blocks)} Jasper blocks, "
            f"{max(b.filters for b in spec.encoder.blocks[:-1] or spec.encoder.blocks)} channels"
            f"{', SE' if any(b.se for b in spec.encoder.blocks) else ''})"
        )
    else:
        encoder, channels = _ecapa_encoder(spec.encoder, spec.front_end, weights)
        kind = f"ECAPAEncoder ({len(spec.encoder.filters) - 2} SE-TDNN blocks)"
    pooling, head, dimension = _decoder(spec.decoder, channels, weights)
    weights.finish()
    net = NemoSpeakerNet(encoder, pooling, head)
    architecture = f"{kind}, {spec.decoder.pool_mode} pooling, {dimension}-d embeddings"
    return NemoEncoder(front_end, net, dimension, spec.sample_rate, file_sha256(path), architecture)
