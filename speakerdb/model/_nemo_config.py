"""Reading a NeMo speaker model's config (``model_config.yaml`` of a ``.nemo`` archive) into
the specs :mod:`speakerdb.model._nemo` builds its networks from: the mel front end, the
Jasper (TitaNet, SpeakerNet) or ECAPA encoder, the pooling decoder. Every key is read through
typed accessors that name its path; a value this package does not reproduce exactly raises a
ModelError naming it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from speakerdb.errors import ModelError
from speakerdb.model._nemo_nets import ACTIVATIONS

__all__ = [
    "BlockSpec",
    "DecoderSpec",
    "EcapaSpec",
    "FrontEndSpec",
    "JasperSpec",
    "NemoModelSpec",
    "nemo_model_spec",
]

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
class FrontEndSpec:
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


def _front_end_spec(cfg: _Config) -> FrontEndSpec:
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
    spec = FrontEndSpec(
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
class BlockSpec:
    filters: int
    repeat: int
    kernel: int
    dilation: int
    residual: bool
    separable: bool
    se: bool
    se_reduction: int


@dataclass(frozen=True)
class JasperSpec:
    feat_in: int
    activation: str
    blocks: tuple[BlockSpec, ...]


def _kernel_with_factor(kernel: int, factor: float) -> int:
    """NeMo's compute_new_kernel_size: scaled, at least 1, rounded up to an odd size."""
    size = max(int(kernel * factor), 1)
    return size + 1 if size % 2 == 0 else size


def _jasper_spec(cfg: _Config) -> JasperSpec:
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
            BlockSpec(
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
    spec = JasperSpec(cfg.integer("feat_in", None, 1), activation, tuple(blocks))
    cfg.refuse_unknown(frozenset({"_target_"}))
    return spec


@dataclass(frozen=True)
class EcapaSpec:
    feat_in: int
    filters: tuple[int, ...]
    kernels: tuple[int, ...]
    dilations: tuple[int, ...]
    scale: int


def _ecapa_spec(cfg: _Config) -> EcapaSpec:
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
    spec = EcapaSpec(
        cfg.integer("feat_in", None, 1), tuple(filters), tuple(kernels), tuple(dilations), scale
    )
    cfg.refuse_unknown(frozenset({"_target_"}))
    return spec


@dataclass(frozen=True)
class DecoderSpec:
    feat_in: int
    pool_mode: str
    emb_sizes: tuple[int, ...]
    attention_channels: int


def _decoder_spec(cfg: _Config) -> DecoderSpec:
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
    spec = DecoderSpec(
        cfg.integer("feat_in", None, 1),
        pool_mode.lower(),
        tuple(int(s) for s in sizes),
        cfg.integer("attention_channels", 128, minimum=1),
    )
    cfg.refuse_unknown(frozenset({"_target_"}))
    return spec


@dataclass(frozen=True)
class NemoModelSpec:
    sample_rate: int
    front_end: FrontEndSpec
    encoder: JasperSpec | EcapaSpec
    decoder: DecoderSpec


def nemo_model_spec(data: dict[str, Any], source: str) -> NemoModelSpec:
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
    return NemoModelSpec(sample_rate, front_end, encoder, decoder)
