"""SpeechBrain's ECAPA-TDNN (``speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN``), written
for speakerdb so that SpeechBrain is not needed at run time.

The layer names mirror SpeechBrain's (``blocks.0.conv.conv.weight``, ``asp_bn.norm.*`` ...)
so that its ``embedding_model.ckpt`` state dict loads as it is. What SpeechBrain does and this
module reproduces:

* Conv1d with ``padding="same"`` pads ``dilation * (kernel - 1) // 2`` frames on each side in
  **reflect** mode (not zeros) before a plain convolution;
* a TDNN block is conv -> activation -> BatchNorm (in that order, BatchNorm last);
* SE-Res2Net blocks: 1x1 TDNN, Res2Net (the first of ``scale`` channel groups passes through,
  each later group adds the previous group's output before its own TDNN), 1x1 TDNN,
  squeeze-excitation on the (length-masked) time mean, residual (1x1 conv when the width
  changes);
* multi-layer feature aggregation (MFA) over the SE-Res2Net outputs, attentive statistical
  pooling with global context (masked mean and std appended to every frame), BatchNorm on the
  pooled statistics, final 1x1 conv to the embedding.

Batching: SpeechBrain pads a batch with zeros and reflects at the *batch's* end, so a short
utterance in a batch sees zeros where alone it would see its own reflected frames. Here
every sequence is reflected at its *own* end (a gather with per-sequence indices) and every
time average is masked to its own length, so an utterance's embedding does not depend on what
else is in the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["EcapaConfig", "EcapaTdnn", "SequenceLayout"]


@dataclass(frozen=True)
class EcapaConfig:
    """ECAPA_TDNN's constructor arguments that change the computation (SpeechBrain names)."""

    input_size: int
    lin_neurons: int = 192
    channels: tuple[int, ...] = (512, 512, 512, 512, 1536)
    kernel_sizes: tuple[int, ...] = (5, 3, 3, 3, 1)
    dilations: tuple[int, ...] = (1, 2, 3, 4, 1)
    attention_channels: int = 128
    res2net_scale: int = 8
    se_channels: int = 128
    global_context: bool = True
    groups: tuple[int, ...] = (1, 1, 1, 1, 1)


class SequenceLayout:
    """Valid lengths of a padded batch and the per-sequence reflect-padding indices.

    lengths: (B,) int64 valid frames, all >= 1 and <= T; T: padded length. Index tensors
    are built once per padding width and shared by every convolution of that width.
    """

    def __init__(self, lengths: torch.Tensor, total: int) -> None:
        self.lengths = lengths
        self.total = total
        self.uniform = bool(torch.all(lengths == total))
        self._mask: torch.Tensor | None = None
        self._indices: dict[int, torch.Tensor] = {}

    def mask(self) -> torch.Tensor:
        """(B, 1, T) float32, 1.0 on valid frames."""
        if self._mask is None:
            steps = torch.arange(self.total, device=self.lengths.device)
            self._mask = (steps[None, :] < self.lengths[:, None]).to(torch.float32)[:, None, :]
        return self._mask

    def reflect_pad(self, x: torch.Tensor, pad: int) -> torch.Tensor:
        """(B, C, T) -> (B, C, T + 2 pad), each sequence reflected at its own start and end
        (frames past a sequence's end + pad hold copies of valid frames: finite, unused)."""
        if pad == 0:
            return x
        if self.uniform:
            return F.pad(x, (pad, pad), mode="reflect")
        index = self._indices.get(pad)
        if index is None:
            last = (self.lengths - 1)[:, None]
            t = torch.arange(-pad, self.total + pad, device=x.device)[None, :].abs()
            t = torch.where(t > last, 2 * last - t, t).clamp(min=0)
            index = torch.minimum(t, last)
            self._indices[pad] = index
        return x.gather(2, index[:, None, :].expand(x.shape[0], x.shape[1], -1))


class _Conv1d(nn.Module):
    """speechbrain.nnet.CNN.Conv1d, padding 'same' in reflect mode; state keys conv.*."""

    def __init__(
        self, cin: int, cout: int, kernel: int, dilation: int = 1, groups: int = 1
    ) -> None:
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel, dilation=dilation, groups=groups)
        self.pad = dilation * (kernel - 1) // 2

    def forward(self, x: torch.Tensor, layout: SequenceLayout) -> torch.Tensor:
        out: torch.Tensor = self.conv(layout.reflect_pad(x, self.pad))
        return out


class _BatchNorm1d(nn.Module):
    """speechbrain.nnet.normalization.BatchNorm1d (eval mode); state keys norm.*."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(size, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.norm(x)
        return out


class _Tdnn(nn.Module):
    """conv -> ReLU -> BatchNorm (SpeechBrain's TDNNBlock; dropout is off at inference)."""

    def __init__(self, cin: int, cout: int, kernel: int, dilation: int, groups: int = 1) -> None:
        super().__init__()
        self.conv = _Conv1d(cin, cout, kernel, dilation, groups)
        self.norm = _BatchNorm1d(cout)

    def forward(self, x: torch.Tensor, layout: SequenceLayout) -> torch.Tensor:
        out: torch.Tensor = self.norm(torch.relu(self.conv(x, layout)))
        return out


class _Res2Net(nn.Module):
    def __init__(self, channels: int, scale: int, kernel: int, dilation: int) -> None:
        super().__init__()
        width = channels // scale
        self.scale = scale
        self.blocks = nn.ModuleList(_Tdnn(width, width, kernel, dilation) for _ in range(scale - 1))

    def forward(self, x: torch.Tensor, layout: SequenceLayout) -> torch.Tensor:
        parts = torch.chunk(x, self.scale, dim=1)
        outputs = [parts[0]]
        previous: torch.Tensor | None = None
        for i, block in enumerate(self.blocks, start=1):
            inp = parts[i] if previous is None else parts[i] + previous
            previous = block(inp, layout)
            outputs.append(previous)
        return torch.cat(outputs, dim=1)


class _SqueezeExcite(nn.Module):
    def __init__(self, channels: int, se_channels: int) -> None:
        super().__init__()
        self.conv1 = _Conv1d(channels, se_channels, 1)
        self.conv2 = _Conv1d(se_channels, channels, 1)

    def forward(self, x: torch.Tensor, layout: SequenceLayout) -> torch.Tensor:
        mask = layout.mask()
        s = (x * mask).sum(dim=2, keepdim=True) / mask.sum(dim=2, keepdim=True)
        s = torch.relu(self.conv1(s, layout))
        s = torch.sigmoid(self.conv2(s, layout))
        return s * x


class _SeRes2NetBlock(nn.Module):
    def __init__(
        self,
        cin: int,
        cout: int,
        scale: int,
        se_channels: int,
        kernel: int,
        dilation: int,
        groups: int,
    ) -> None:
        super().__init__()
        self.tdnn1 = _Tdnn(cin, cout, 1, 1, groups)
        self.res2net_block = _Res2Net(cout, scale, kernel, dilation)
        self.tdnn2 = _Tdnn(cout, cout, 1, 1, groups)
        self.se_block = _SqueezeExcite(cout, se_channels)
        self.shortcut = _Conv1d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor, layout: SequenceLayout) -> torch.Tensor:
        residual = x if self.shortcut is None else self.shortcut(x, layout)
        x = self.tdnn1(x, layout)
        x = self.res2net_block(x, layout)
        x = self.tdnn2(x, layout)
        out: torch.Tensor = self.se_block(x, layout) + residual
        return out


class _AttentiveStatsPool(nn.Module):
    def __init__(self, channels: int, attention_channels: int, global_context: bool) -> None:
        super().__init__()
        self.global_context = global_context
        self.tdnn = _Tdnn(channels * 3 if global_context else channels, attention_channels, 1, 1)
        self.conv = _Conv1d(attention_channels, channels, 1)

    @staticmethod
    def _stats(x: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # SpeechBrain's order of operations; the clamp (1e-12) keeps sqrt finite.
        mean = (weights * x).sum(2)
        var = (weights * (x - mean.unsqueeze(2)).pow(2)).sum(2)
        return mean, torch.sqrt(var.clamp(1e-12))

    def forward(self, x: torch.Tensor, layout: SequenceLayout) -> torch.Tensor:
        mask = layout.mask()
        if self.global_context:
            mean, std = self._stats(x, mask / mask.sum(dim=2, keepdim=True))
            frames = x.shape[2]
            attn = torch.cat(
                [
                    x,
                    mean.unsqueeze(2).expand(-1, -1, frames),
                    std.unsqueeze(2).expand(-1, -1, frames),
                ],
                dim=1,
            )
        else:
            attn = x
        attn = self.conv(torch.tanh(self.tdnn(attn, layout)), layout)
        attn = attn.masked_fill(mask == 0, float("-inf"))
        mean, std = self._stats(x, torch.softmax(attn, dim=2))
        return torch.cat((mean, std), dim=1).unsqueeze(2)


class EcapaTdnn(nn.Module):
    """ECAPA-TDNN: (B, T, F) features + (B,) valid frames -> (B, lin_neurons) embeddings."""

    def __init__(self, config: EcapaConfig) -> None:
        super().__init__()
        c, k, d, g = config.channels, config.kernel_sizes, config.dilations, config.groups
        self.blocks = nn.ModuleList([_Tdnn(config.input_size, c[0], k[0], d[0], g[0])])
        for i in range(1, len(c) - 1):
            self.blocks.append(
                _SeRes2NetBlock(
                    c[i - 1], c[i], config.res2net_scale, config.se_channels, k[i], d[i], g[i]
                )
            )
        self.mfa = _Tdnn(c[-2] * (len(c) - 2), c[-1], k[-1], d[-1], g[-1])
        self.asp = _AttentiveStatsPool(c[-1], config.attention_channels, config.global_context)
        self.asp_bn = _BatchNorm1d(c[-1] * 2)
        self.fc = _Conv1d(c[-1] * 2, config.lin_neurons, 1)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """features: (B, T, F) float32 (frames past a sequence's length are ignored);
        lengths: (B,) int64 valid frames, each in [1, T]. Returns (B, lin_neurons) float32."""
        layout = SequenceLayout(lengths.to(features.device), features.shape[1])
        x = features.transpose(1, 2)
        outputs: list[torch.Tensor] = []
        for i, block in enumerate(self.blocks):
            x = block(x, layout)
            if i > 0:
                outputs.append(x)
        x = self.mfa(torch.cat(outputs, dim=1), layout)
        x = self.asp_bn(self.asp(x, layout))
        one = SequenceLayout(torch.ones_like(layout.lengths), 1)
        out: torch.Tensor = self.fc(x, one)
        return out[:, :, 0]


def check_state_dict(
    model: nn.Module, state: dict[str, torch.Tensor], source: str
) -> Sequence[str]:
    """Problems with loading ``state`` into ``model``: missing/unexpected keys, wrong shapes.
    Returns one message per problem (empty when the state dict fits exactly)."""
    expected = model.state_dict()
    problems: list[str] = []
    for key, tensor in expected.items():
        if key not in state:
            problems.append(f"{source}: missing tensor {key}")
        elif tuple(state[key].shape) != tuple(tensor.shape):
            problems.append(
                f"{source}: tensor {key} has shape {tuple(state[key].shape)}, the configuration "
                f"needs {tuple(tensor.shape)}"
            )
    problems.extend(f"{source}: unexpected tensor {key}" for key in state if key not in expected)
    return problems
