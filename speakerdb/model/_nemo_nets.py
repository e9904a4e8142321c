"""NeMo's speaker networks in plain torch, for inference only.

Each piece computes what its NeMo counterpart computes in eval mode (no dither, dropout or
spec augment), in float32:

* :class:`MelFrontEnd` — ``AudioToMelSpectrogramPreprocessor`` / ``FilterbankFeatures``:
  pre-emphasis (masked past the signal), ``torch.stft`` (centred with zero padding, or NeMo's
  "exact pad"), magnitude as ``sqrt(re^2 + im^2)``, power, the checkpoint's own mel matrix,
  log with NeMo's zero guard, per-feature (or all-feature) normalisation over the valid frames.
* :class:`JasperEncoder` — ``ConvASREncoder`` of ``JasperBlock`` s (TitaNet, SpeakerNet):
  masked (depthwise-separable) convolutions, BatchNorm, squeeze-excitation over the valid
  frames, residual branches.
* :class:`EcapaEncoder` — NeMo's ``ECAPAEncoder`` (TDNN + SE-TDNN blocks). Its convolutions
  are not masked in NeMo, so an utterance's result depends on the zero padding NeMo gives it
  (its feature length rounded up to ``pad_to``); the encoder reproduces that padding for every
  utterance of a batch (see :meth:`EcapaEncoder.forward`).
* :class:`AttentivePooling` / :class:`StatsPooling` and :class:`EmbeddingHead` —
  ``SpeakerDecoder``: attentive statistics pooling (TitaNet, ECAPA) or mean + standard
  deviation ("xvector", SpeakerNet) or mean ("tap"), then the embedding layers; the embedding
  is what NeMo returns from ``get_embedding`` (before the final classification layer).

At load time BatchNorm layers that directly follow a linear operation are folded into it
(exact up to float rounding). The Jasper encoder and the pooling work channels-last,
(B, T, C): a pointwise convolution is then one matrix product over all frames of the batch
(faster than a 1x1 convolution on this CPU), and a depthwise convolution k multiply-adds over
contiguous rows. Masks are skipped when no utterance of a batch is padded. The networks keep no
state between calls, so one instance can serve several threads.

Shapes: B utterances, C channels, T frames, F mel features, D embedding size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ACTIVATIONS",
    "AttentivePooling",
    "Dense",
    "EcapaEncoder",
    "EmbeddingHead",
    "JasperBlock",
    "JasperEncoder",
    "MelFrontEnd",
    "NemoSpeakerNet",
    "StatsPooling",
    "SubLayer",
    "TdnnLayer",
    "TdnnSeBlock",
]

# NeMo's activation registry (nemo.collections.common.parts.utils.activation_registry), with
# each module's default arguments (Hardtanh: [-1, 1]).
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "identity": lambda x: x,
    "hardtanh": F.hardtanh,
    "relu": F.relu,
    "selu": F.selu,
    "swish": F.silu,
    "silu": F.silu,
    "gelu": F.gelu,
}
# normalize_batch's guard against a zero standard deviation.
_STD_GUARD = 1e-5


def _time_mask(lengths: Tensor, frames: int, dtype: torch.dtype) -> Tensor:
    """(B,) valid frame counts -> (B, 1, frames) mask, 1 on valid frames, 0 on padding."""
    steps = torch.arange(frames, device=lengths.device)
    return (steps[None, :] < lengths[:, None]).to(dtype)[:, None, :]


@dataclass(frozen=True)
class MelFrontEnd:
    """NeMo's FilterbankFeatures in eval mode, for one utterance at a time.

    ``window`` (win_length,) and ``filterbank`` (1, F, n_fft // 2 + 1) are the checkpoint's own
    buffers (NeMo loads them over the ones it computes). Read-only, so thread-safe.
    """

    hop_length: int
    win_length: int
    n_fft: int
    exact_pad: bool
    preemph: float | None
    window: Tensor
    filterbank: Tensor
    mag_power: float
    log: bool
    log_guard_add: bool
    log_guard_value: float
    normalize: str | None

    @property
    def features(self) -> int:
        return int(self.filterbank.shape[1])

    def frames(self, samples: int) -> int:
        """NeMo's valid frame count (``get_seq_len``) for ``samples`` input samples."""
        pad = (self.n_fft - self.hop_length) // 2 * 2 if self.exact_pad else self.n_fft // 2 * 2
        return (samples + pad - self.n_fft) // self.hop_length

    def __call__(self, samples: npt.NDArray[np.float32]) -> Tensor:
        """(n,) float32 samples -> (T, F) float32 features, T = :meth:`frames` (n)."""
        x = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))[None, :]
        length = x.shape[1]
        frames = self.frames(length)
        if self.exact_pad:
            pad = (self.n_fft - self.hop_length) // 2
            x = F.pad(x[:, None, :], (pad, pad), "constant")[:, 0, :]
        if self.preemph is not None:
            x = torch.cat((x[:, :1], x[:, 1:] - self.preemph * x[:, :-1]), dim=1)
            # NeMo masks by the unpadded length even after exact padding: kept as it does.
            x = x.masked_fill(torch.arange(x.shape[1])[None, :] >= length, 0.0)
        spec = torch.stft(
            x,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            center=not self.exact_pad,
            window=self.window,
            return_complex=True,
            pad_mode="constant",
        )
        mag = torch.view_as_real(spec).pow(2).sum(-1).sqrt()
        if self.mag_power != 1.0:
            mag = mag.pow(self.mag_power)
        mel = torch.matmul(self.filterbank, mag)
        if self.log:
            if self.log_guard_add:
                mel = torch.log(mel + self.log_guard_value)
            else:
                mel = torch.log(torch.clamp(mel, min=self.log_guard_value))
        total = mel.shape[-1]
        valid = torch.arange(total)[None, :] < frames
        if self.normalize == "per_feature":
            count = valid.sum(dim=1)
            mean = torch.where(valid[:, None, :], mel, 0.0).sum(dim=2) / count[:, None]
            centred = torch.where(valid[:, None, :], mel - mean[:, :, None], 0.0)
            std = torch.sqrt(centred.pow(2).sum(dim=2) / (count[:, None] - 1.0))
            std = std.masked_fill(std.isnan(), 0.0) + _STD_GUARD
            mel = (mel - mean[:, :, None]) / std[:, :, None]
        elif self.normalize == "all_features":
            mean = mel[0, :, :frames].mean()
            std = mel[0, :, :frames].std() + _STD_GUARD
            mel = (mel - mean) / std
        return mel[0, :, :frames].T.contiguous()


def _masked(x: Tensor, mask: Tensor | None) -> Tensor:
    return x if mask is None else x * mask


def _activation_(name: str, x: Tensor) -> Tensor:
    """The named activation, in place where torch allows it (``x`` is always a fresh
    intermediate here)."""
    if name == "relu":
        return x.relu_()
    if name == "hardtanh":
        return F.hardtanh(x, inplace=True)
    if name == "selu":
        return F.selu(x, inplace=True)
    if name in ("swish", "silu"):
        return F.silu(x, inplace=True)
    return ACTIVATIONS[name](x)


def _depthwise(x: Tensor, taps: Tensor, dilation: int) -> Tensor:
    """Depthwise "same" convolution along time of channels-last ``x`` (B, T, C) with ``taps``
    (k, C), k odd (NeMo makes every Jasper kernel odd), zero padding outside: one fused
    multiply-add per tap over the rows it reaches (contiguous slices, no padded copy)."""
    centre = taps.shape[0] // 2
    frames = x.shape[1]
    out = x * taps[centre]
    for j in range(taps.shape[0]):
        shift = (j - centre) * dilation
        if shift == 0 or abs(shift) >= frames:
            continue
        if shift > 0:
            out[:, : frames - shift].addcmul_(x[:, shift:], taps[j])
        else:
            out[:, -shift:].addcmul_(x[:, : frames + shift], taps[j])
    return out


def _onednn_linear() -> bool:
    mkldnn = torch.ops.mkldnn
    return (
        torch.backends.mkldnn.is_available()  # type: ignore[no-untyped-call]
        and hasattr(mkldnn, "_linear_pointwise")
        and hasattr(mkldnn, "_reorder_linear_weight")
    )


class Dense(nn.Module):
    """``x @ weight.T + bias`` over the last dimension of channels-last ``x``, optionally with
    a ReLU or the addition of a tensor of the output's shape fused into it.

    On the CPU, with torch's oneDNN build, the weight is re-laid out once at load time for
    oneDNN's inner-product kernel (torch.ops.mkldnn, the path torch.compile uses for frozen
    CPU models): about 1.2-1.3x faster than MKL's sgemm behind ``F.linear`` on this machine,
    same float32 arithmetic up to summation order. The packed path is checked against
    ``F.linear`` when it is made and dropped (plain ``F.linear``) if torch lacks it, if it
    disagrees, or on another device."""

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.weight: Tensor
        self.bias: Tensor | None
        self.register_buffer("weight", weight.contiguous())
        self.register_buffer("bias", bias)
        self.packed: Tensor | None = None
        self._pack()

    def _pack(self) -> None:
        self.packed = None
        if self.weight.device.type != "cpu" or not _onednn_linear():
            return
        try:
            packed = torch.ops.mkldnn._reorder_linear_weight(self.weight, 1024)
            probe = torch.randn(7, self.weight.shape[1], generator=torch.Generator().manual_seed(0))
            got = torch.ops.mkldnn._linear_pointwise(probe, packed, self.bias, "none", [], "")
            if torch.allclose(got, F.linear(probe, self.weight, self.bias), rtol=1e-4, atol=1e-4):
                self.packed = packed
        except (RuntimeError, TypeError, AttributeError):  # an older or different torch
            self.packed = None

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> Dense:
        super()._apply(fn, recurse)  # type: ignore[no-untyped-call]
        self._pack()  # packed for the CPU only: redone (or dropped) after a device move
        return self

    def forward(self, x: Tensor, relu: bool = False, add: Tensor | None = None) -> Tensor:
        if self.packed is not None and x.device.type == "cpu" and x.dtype == torch.float32:
            ops = torch.ops.mkldnn
            if add is None:
                fused: Tensor = ops._linear_pointwise(
                    x, self.packed, self.bias, "relu" if relu else "none", [], ""
                )
                return fused
            summed: Tensor = ops._linear_pointwise(x, add, self.packed, self.bias, "add")
            return summed.relu_() if relu else summed
        y = F.linear(x, self.weight, self.bias)
        if add is not None:
            y = y.add_(add)
        return y.relu_() if relu else y


class SubLayer(nn.Module):
    """One convolution of a Jasper block with its BatchNorm folded in, on channels-last
    (B, T, C) tensors: an optional depthwise convolution (taps ``(k, Cin)``) or full
    convolution (``(Cout, Cin, k)``) whose input is masked as NeMo's MaskedConv1d masks it,
    then (separable blocks) the pointwise ``(Cout, Cin)`` convolution, a matrix product.
    Pointwise convolutions need no input mask: they cannot carry padding into valid frames,
    and every later wider operation masks its own input."""

    def __init__(
        self,
        depthwise: Tensor | None,
        full: Tensor | None,
        dilation: int,
        point: Tensor | None,
        bias: Tensor,
    ) -> None:
        super().__init__()
        self.depthwise: Tensor | None
        self.full: Tensor | None
        self.bias: Tensor
        self.register_buffer("depthwise", depthwise)
        self.register_buffer("full", full)
        self.register_buffer("bias", bias)
        self.point = None if point is None else Dense(point, bias)
        self.dilation = dilation

    def forward(
        self, x: Tensor, mask: Tensor | None, relu: bool = False, add: Tensor | None = None
    ) -> Tensor:
        """(B, T, Cin) -> (B, T, Cout); ``relu`` applies a ReLU and ``add`` adds a tensor to
        the result (fused into the matrix product when possible)."""
        if self.depthwise is not None:
            x = _depthwise(_masked(x, mask), self.depthwise, self.dilation)
        elif self.full is not None:
            kernel = self.full.shape[-1]
            x = F.conv1d(
                _masked(x, mask).transpose(1, 2),
                self.full,
                self.bias,
                padding=self.dilation * (kernel - 1) // 2,
                dilation=self.dilation,
            ).transpose(1, 2)
        if self.point is not None:
            out: Tensor = self.point(x, relu, add)
            return out
        if add is not None:
            x = x + add
        return x.relu() if relu else x


class JasperBlock(nn.Module):
    """``JasperBlock`` in eval mode on channels-last (B, T, C) tensors: ``repeat`` sub-layers
    with the activation between them, optional squeeze-excitation over the valid frames,
    optional residual (pointwise conv + BatchNorm of the block input, added), then the
    activation."""

    def __init__(
        self,
        layers: list[SubLayer],
        activation: str,
        se: tuple[Tensor, Tensor] | None,
        residual: SubLayer | None,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.activation = activation
        self.se_squeeze: Tensor | None
        self.se_excite: Tensor | None
        self.register_buffer("se_squeeze", None if se is None else se[0])
        self.register_buffer("se_excite", None if se is None else se[1])
        self.residual = residual

    def forward(self, x: Tensor, mask: Tensor | None, lengths: Tensor) -> Tensor:
        out = x
        fuse = self.activation == "relu"
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            out = layer(out, mask, relu=fuse and i < last)
            if i < last and not fuse:
                out = _activation_(self.activation, out)
        if self.se_squeeze is not None and self.se_excite is not None:
            if mask is not None:
                out = out.mul_(mask)
            context = out.sum(dim=1) / lengths[:, None]
            hidden = ACTIVATIONS[self.activation](F.linear(context, self.se_squeeze))
            out = out.mul_(torch.sigmoid(F.linear(hidden, self.se_excite))[:, None, :])
        if self.residual is not None:
            out = self.residual(x, mask, add=out)
        return _activation_(self.activation, out)


class JasperEncoder(nn.Module):
    """``ConvASREncoder`` (stride 1, masked convolutions): channels-last (B, T, F) features
    and (B,) valid frame counts -> (B, T, C) with padded frames zeroed; lengths unchanged."""

    def __init__(self, blocks: list[JasperBlock]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        mask = _frame_mask(lengths, x.shape[1], x.dtype)
        lengths_f = lengths.to(x.dtype)
        for block in self.blocks:
            x = block(x, mask, lengths_f)
        return _masked(x, mask), lengths


def _frame_mask(lengths: Tensor, frames: int, dtype: torch.dtype) -> Tensor | None:
    """(B, frames, 1) channels-last mask, or None when no utterance is padded (a batch of
    one, or of equal lengths: masking would change nothing)."""
    if bool((lengths == frames).all()):
        return None
    steps = torch.arange(frames, device=lengths.device)
    return (steps[None, :] < lengths[:, None]).to(dtype)[:, :, None]


class TdnnLayer(nn.Module):
    """NeMo's ``TDNNModule``: convolution (with bias, "same" padding) -> ReLU -> BatchNorm
    (kept as a per-channel scale and shift: it follows the ReLU, so it cannot be folded)."""

    def __init__(
        self, weight: Tensor, bias: Tensor, dilation: int, bn: tuple[Tensor, Tensor]
    ) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.register_buffer("scale", bn[0])
        self.register_buffer("shift", bn[1])
        self.weight: Tensor
        self.bias: Tensor
        self.scale: Tensor
        self.shift: Tensor
        self.dilation = dilation
        self.kernel = int(weight.shape[-1])
        self.padding = dilation * (self.kernel - 1) // 2

    def forward(self, x: Tensor, edge: Tensor) -> Tensor:
        if self.kernel > 1:
            x = x * edge
        x = F.conv1d(x, self.weight, self.bias, padding=self.padding, dilation=self.dilation)
        return F.relu(x) * self.scale[:, None] + self.shift[:, None]


class TdnnSeBlock(nn.Module):
    """NeMo's ``TDNNSEModule``: TDNN (1x1) -> grouped convolution -> ReLU -> BatchNorm ->
    TDNN (1x1) -> squeeze-excitation over the valid frames -> + input."""

    def __init__(
        self,
        first: TdnnLayer,
        group_weight: Tensor,
        group_bias: Tensor,
        groups: int,
        dilation: int,
        bn: tuple[Tensor, Tensor],
        second: TdnnLayer,
        se: tuple[Tensor, Tensor, tuple[Tensor, Tensor], Tensor, Tensor],
    ) -> None:
        super().__init__()
        self.first = first
        self.second = second
        self.register_buffer("group_weight", group_weight)
        self.register_buffer("group_bias", group_bias)
        self.register_buffer("scale", bn[0])
        self.register_buffer("shift", bn[1])
        squeeze, squeeze_bias, (se_scale, se_shift), excite, excite_bias = se
        self.register_buffer("squeeze", squeeze)
        self.register_buffer("squeeze_bias", squeeze_bias)
        self.register_buffer("se_scale", se_scale)
        self.register_buffer("se_shift", se_shift)
        self.register_buffer("excite", excite)
        self.register_buffer("excite_bias", excite_bias)
        self.group_weight: Tensor
        self.group_bias: Tensor
        self.scale: Tensor
        self.shift: Tensor
        self.squeeze: Tensor
        self.squeeze_bias: Tensor
        self.se_scale: Tensor
        self.se_shift: Tensor
        self.excite: Tensor
        self.excite_bias: Tensor
        self.groups = groups
        self.dilation = dilation
        self.kernel = int(group_weight.shape[-1])
        self.padding = dilation * (self.kernel - 1) // 2

    def forward(self, x: Tensor, edge: Tensor, valid: Tensor, lengths: Tensor) -> Tensor:
        h: Tensor = self.first(x, edge)
        if self.kernel > 1:
            h = h * edge
        h = F.conv1d(
            h,
            self.group_weight,
            self.group_bias,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
        )
        h = F.relu(h) * self.scale[:, None] + self.shift[:, None]
        h = self.second(h, edge)
        context = (h * valid).sum(dim=2) / lengths[:, None]
        s = F.relu(F.linear(context, self.squeeze, self.squeeze_bias))
        s = s * self.se_scale + self.se_shift
        s = torch.sigmoid(F.linear(s, self.excite, self.excite_bias))
        return s[:, :, None] * h + x


class EcapaEncoder(nn.Module):
    """NeMo's ``ECAPAEncoder``: TDNN, SE-TDNN blocks, concatenation of the blocks' outputs,
    aggregation TDNN. Channels-last (B, T, F) features + (B,) valid frame counts ->
    channels-last (B, T', C) and the lengths (computed in NeMo's (B, C, T) layout inside).

    NeMo runs these convolutions unmasked on one utterance padded with ``pad_value`` up to a
    multiple of ``pad_to`` frames (one frame more than the valid ones, at least), with zeros
    beyond. In a batch each utterance gets exactly that: ``pad_value`` up to its own padded
    length, and every convolution wider than 1 sees zeros past it, as it would at the end of
    the utterance's own tensor. So batching changes nothing.
    """

    def __init__(
        self,
        first: TdnnLayer,
        blocks: list[TdnnSeBlock],
        aggregate: TdnnLayer,
        pad_to: int,
        pad_value: float,
    ) -> None:
        super().__init__()
        self.first = first
        self.blocks = nn.ModuleList(blocks)
        self.aggregate = aggregate
        self.pad_to = pad_to
        self.pad_value = pad_value

    def padded_frames(self, lengths: Tensor) -> Tensor:
        """NeMo's tensor length for one utterance of ``lengths`` valid frames."""
        total = lengths + 1  # the feature extractor's one extra (masked) frame
        if self.pad_to > 0:
            total = (total + self.pad_to - 1) // self.pad_to * self.pad_to
        return total

    def forward(self, features: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        x = features.transpose(1, 2)  # (B, F, T): NeMo's layout, kept for its convolutions
        padded = self.padded_frames(lengths)
        frames = int(padded.max())
        if x.shape[-1] < frames:
            x = F.pad(x, (0, frames - x.shape[-1]))
        x = x[:, :, :frames]
        valid = _time_mask(lengths, frames, x.dtype)
        edge = _time_mask(padded, frames, x.dtype)
        x = x * valid + self.pad_value * (edge - valid)
        lengths_f = lengths.to(x.dtype)
        x = self.first(x, edge)
        outputs = []
        for block in self.blocks:
            x = block(x, edge, valid, lengths_f)
            outputs.append(x)
        x = self.aggregate(torch.cat(outputs, dim=1), edge)
        out: Tensor = (x * valid)[:, :, : int(lengths.max())].transpose(1, 2)
        return out, lengths


def _weighted_stats(x: Tensor, weights: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """NeMo's get_statistics_with_mask on channels-last ``x`` (B, T, C) with ``weights``
    (B, T, 1) or (B, T, C) summing to 1 over time: weighted mean and standard deviation
    sqrt(max(sum w (x - mean)^2, eps)), each (B, C)."""
    if weights.shape[-1] == 1:  # one weight per frame: matrix-vector products, no temporaries
        mean = torch.bmm(weights.transpose(1, 2), x)[:, 0]
        centred = (x - mean[:, None, :]).pow_(2)
        var = torch.bmm(weights.transpose(1, 2), centred)[:, 0]
    else:  # one temporary of x's size at a time: long recordings make these large
        mean = (weights * x).sum(dim=1)
        var = (x - mean[:, None, :]).pow_(2).mul_(weights).sum(dim=1)
    return mean, var.clamp(eps).sqrt()


class AttentivePooling(nn.Module):
    """NeMo's ``AttentivePoolLayer``: attention weights from [x, mean, std] (the concatenation
    is never built: the first 1x1 convolution is split into its x part and its statistics
    part), then the attention-weighted mean and standard deviation.
    Channels-last (B, T, C) and (B,) valid frames -> (B, 2C)."""

    def __init__(
        self,
        weight: Tensor,
        bias: Tensor,
        bn: tuple[Tensor, Tensor],
        out_weight: Tensor,
        out_bias: Tensor,
        eps: float = 1e-10,
    ) -> None:
        super().__init__()
        channels = out_weight.shape[0]
        self.frames = Dense(weight[:, :channels], None)
        self.register_buffer("w_stats", weight[:, channels:].contiguous())
        self.register_buffer("bias", bias)
        self.register_buffer("scale", bn[0])
        self.register_buffer("shift", bn[1])
        self.scores = Dense(out_weight, out_bias)
        self.w_stats: Tensor
        self.bias: Tensor
        self.scale: Tensor
        self.shift: Tensor
        self.eps = eps

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        frames = x.shape[1]
        steps = torch.arange(frames, device=x.device)
        valid = (steps[None, :] < lengths[:, None])[:, :, None]  # (B, T, 1)
        uniform = valid.to(x.dtype) / lengths.to(x.dtype)[:, None, None]
        mean, std = _weighted_stats(x, uniform, self.eps)
        stats_term = F.linear(torch.cat((mean, std), dim=1), self.w_stats, self.bias)
        h = self.frames(x).add_(stats_term[:, None, :]).relu_()
        h = torch.tanh_(h.mul_(self.scale).add_(self.shift))
        scores = self.scores(h)
        del h
        if not bool(valid.all()):
            scores = scores.masked_fill_(~valid, float("-inf"))
        attention = torch.softmax(scores, dim=1)
        del scores  # (B, T, C) each: freed before the weighted statistics
        mu, sigma = _weighted_stats(x, attention, self.eps)
        return torch.cat((mu, sigma), dim=1)


class StatsPooling(nn.Module):
    """NeMo's ``StatsPoolLayer`` with lengths: mean ("tap"), or mean and unbiased standard
    deviation ("xvector"). Channels-last (B, T, C) -> (B, C) or (B, 2C)."""

    def __init__(self, with_std: bool, eps: float = 1e-10) -> None:
        super().__init__()
        self.with_std = with_std
        self.eps = eps

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        frames = x.shape[1]
        keep = (torch.arange(frames, device=x.device)[None, :] < lengths[:, None])[:, :, None]
        keep = keep.to(x.dtype)
        x = x * keep
        lengths_f = lengths.to(x.dtype)
        means = x.mean(dim=1) * (frames / lengths_f)[:, None]
        if not self.with_std:
            return means
        var = ((x - means[:, None, :]) * keep).pow_(2.0).sum(1) / (lengths_f - 1)[:, None]
        return torch.cat((means, var.clamp(min=self.eps).sqrt()), dim=-1)


class EmbeddingHead(nn.Module):
    """The SpeakerDecoder's embedding layers, BatchNorm folded in: a chain of affine maps
    ``(out, in)``, a ReLU after those marked so. (B, in) -> (B, D)."""

    def __init__(self, layers: list[tuple[Tensor, Tensor, bool]]) -> None:
        super().__init__()
        self.relu_after = [relu for _, _, relu in layers]
        for i, (weight, bias, _) in enumerate(layers):
            self.register_buffer(f"weight{i}", weight)
            self.register_buffer(f"bias{i}", bias)

    def forward(self, pooled: Tensor) -> Tensor:
        x = pooled
        for i, relu in enumerate(self.relu_after):
            x = F.linear(x, getattr(self, f"weight{i}"), getattr(self, f"bias{i}"))
            if relu:
                x = F.relu(x)
        return x


class NemoSpeakerNet(nn.Module):
    """Encoder + pooling + embedding head: (B, T, F) features zero-padded to the longest,
    (B,) int64 valid frames -> (B, D) float32 embeddings (not normalised)."""

    def __init__(
        self,
        encoder: JasperEncoder | EcapaEncoder,
        pooling: AttentivePooling | StatsPooling,
        head: EmbeddingHead,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.head = head

    def forward(self, features: Tensor, lengths: Tensor) -> Tensor:
        encoded, lengths = self.encoder(features, lengths)
        embeddings: Tensor = self.head(self.pooling(encoded, lengths))
        return embeddings
