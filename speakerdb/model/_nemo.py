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

import mmap
from pathlib import Path

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
from speakerdb.model._nemo_config import (
    BlockSpec,
    DecoderSpec,
    EcapaSpec,
    FrontEndSpec,
    JasperSpec,
    nemo_model_spec,
)
from speakerdb.model._nemo_nets import (
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

# BatchNorm epsilons of NeMo's modules: JasperBlock sets 1e-3, the others keep torch's 1e-5.
_JASPER_BN_EPS = 1e-3
_BN_EPS = 1e-5
# Weights present in every checkpoint that the embedding does not use (speaker classifier).
_UNUSED_WEIGHTS = ("decoder.final.weight", "decoder.final.bias")


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


def _front_end(spec: FrontEndSpec, weights: _Weights) -> MelFrontEnd:
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
    weights: _Weights, prefix: str, index: int, c_in: int, c_out: int, block: BlockSpec
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


def _jasper_encoder(spec: JasperSpec, weights: _Weights) -> tuple[JasperEncoder, int]:
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
    spec: EcapaSpec, front: FrontEndSpec, weights: _Weights
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
    spec: DecoderSpec, channels: int, weights: _Weights
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
    spec = nemo_model_spec(parse_config(archive.config_text, source), source)
    weights = _Weights(_load_state(archive.weights, source), source)
    del archive  # the checkpoint's bytes: the tensors now hold their own copies
    front_end = _front_end(spec.front_end, weights)
    encoder: JasperEncoder | EcapaEncoder
    if isinstance(spec.encoder, JasperSpec):
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
