"""AASIST (Jung et al., "AASIST: Audio Anti-Spoofing using Integrated Spectro-Temporal Graph
Attention Networks", ICASSP 2022), written for speakerdb from the paper and the public
clovaai/aasist code, so that trained AASIST / AASIST-L state dicts load as they are.

Attribute names mirror the original's (``encoder.0.0.conv1.weight``,
``HtrgGAT_layer_ST11.att_weight12`` ...) because the checkpoints are keyed by them. What the
original computes, and this module reproduces because the trained weights depend on it:

* a fixed (untrained, not in the state dict) sinc band-pass front end: ``filts[0]`` filters of
  ``first_conv + 1`` taps with band edges equally spaced on the mel scale over 0-8 kHz,
  Hamming-windowed; the sinc is evaluated in float32, as the original evaluates it;
* ``|x|``, 3x3 max-pooling, BatchNorm, SELU, then six residual blocks of 2-D convolutions.
  A block's ``bn1`` exists in the checkpoint but its output is discarded in the original (the
  first convolution reads the block's input), so it is kept for loading and never applied;
* a spectral graph (one node per sinc band group, learned positional embedding) and a
  temporal graph (one node per frame), each through graph attention and top-k graph pooling;
* two branches of heterogeneous stacked graph attention over both graphs with a learned
  master node, merged by an element-wise maximum; max|.| and mean readouts of both node sets
  plus the master node feed a linear layer giving two logits (spoof, bona fide).

Inference only: dropout and the training-time frequency mask are left out.

Speed (:meth:`AasistNet.prepare_for_inference`, docs/spoofing.md "Throughput"): the sinc front
end and the widest residual blocks can run in pieces of a few thousand frames (``tile``), so
that a piece's activations stay in the core's cache between the operations instead of
streaming 15-65 MB tensors through memory several times per block, and the pieces can run on
several threads at once (``pool``). Each value is the same sum of the same products as at full
width; only the summation order inside oneDNN may differ.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "AASIST_CONFIGS",
    "DEFAULT_TILE",
    "SPECTRAL_NODES",
    "AasistConfig",
    "AasistNet",
    "sinc_filterbank",
]

SPECTRAL_NODES = 23
"""Spectral graph nodes: the sinc bands (70) after 3x max-pooling; fixed by ``pos_S``."""

DEFAULT_TILE = 1536
"""Frames (pre-pooling columns, a multiple of 3) per piece of the front end and of a wide
residual block, for one probe, in a prepared network: at 32 channels x 24 rows a piece's
activations are ~4.7 MB. 768-3072 measured alike; whole width ~1.4x slower on one thread."""


@dataclass(frozen=True)
class AasistConfig:
    """The ``model_config`` block of an AASIST ``.conf`` (the original's names).

    nb_samp: input samples (64 600 = 4.04 s at 16 kHz); first_conv: sinc filter length
    (made odd by adding one); filts: ``[sinc bands, [in, out] of each of the residual
    stages...]``; gat_dims: widths of the graph layers; pool_ratios: fraction of nodes kept
    by the spectral, temporal and heterogeneous poolings; temperatures: attention softmax
    temperatures of the spectral, temporal and heterogeneous graph layers.
    """

    nb_samp: int
    first_conv: int
    sinc_bands: int
    stages: tuple[tuple[int, int], ...]
    gat_dims: tuple[int, int]
    pool_ratios: tuple[float, float, float, float]
    temperatures: tuple[float, float, float, float]


AASIST_CONFIGS = {
    "AASIST": AasistConfig(
        nb_samp=64600,
        first_conv=128,
        sinc_bands=70,
        stages=((1, 32), (32, 32), (32, 64), (64, 64)),
        gat_dims=(64, 32),
        pool_ratios=(0.5, 0.7, 0.5, 0.5),
        temperatures=(2.0, 2.0, 100.0, 100.0),
    ),
    "AASIST-L": AasistConfig(
        nb_samp=64600,
        first_conv=128,
        sinc_bands=70,
        stages=((1, 32), (32, 32), (32, 24), (24, 24)),
        gat_dims=(24, 32),
        pool_ratios=(0.4, 0.5, 0.7, 0.5),
        temperatures=(2.0, 2.0, 100.0, 100.0),
    ),
}
"""The two published configurations (clovaai/aasist ``config/AASIST*.conf``)."""


def sinc_filterbank(bands: int, taps: int, sample_rate: int = 16_000) -> torch.Tensor:
    """The fixed front-end filters: (bands, 1, taps') float32, taps' = taps made odd.

    Band edges: ``bands + 1`` points equally spaced in mel (2595 log10(1 + f/700)) between
    the lowest and highest frequency of a 512-point FFT grid (0 and sample_rate/2 Hz); each
    filter is the difference of two ideal low-pass sinc responses, times a Hamming window.
    """
    taps = taps + 1 if taps % 2 == 0 else taps
    grid = (sample_rate // 2) * np.linspace(0.0, 1.0, 257)
    mel = 2595.0 * np.log10(1.0 + grid / 700.0)
    edges = 700.0 * (10.0 ** (np.linspace(mel.min(), mel.max(), bands + 1) / 2595.0) - 1.0)
    # The original evaluates the sinc on float32 sample offsets in float32; kept, so that the
    # filters match it to the last bit rather than to float64 accuracy.
    offsets = torch.arange(-(taps - 1) / 2, (taps - 1) / 2 + 1)
    window = torch.from_numpy(np.hamming(taps)).to(torch.float32)
    rows = []
    for low, high in itertools.pairwise(edges):
        upper = (2 * high / sample_rate) * np.sinc((2 * high * offsets / sample_rate).numpy())
        lower = (2 * low / sample_rate) * np.sinc((2 * low * offsets / sample_rate).numpy())
        rows.append(window * torch.from_numpy(np.asarray(upper - lower)).to(torch.float32))
    return torch.stack(rows)[:, None, :]


class _SincFrontEnd(nn.Module):
    """(B, n) waveform -> (B, bands, n - taps + 1) band-passed signals (no parameters)."""

    filters: torch.Tensor

    def __init__(self, bands: int, taps: int) -> None:
        super().__init__()
        # Not a parameter nor a persistent buffer: the checkpoints do not hold it.
        self.register_buffer("filters", sinc_filterbank(bands, taps), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = F.conv1d(wave[:, None, :], self.filters)
        return out


class _ResidualBlock(nn.Module):
    """(B, C_in, H, W) -> (B, C_out, H, W // 3): two (2, 3) convolutions with BatchNorm and
    SELU between them, a (1, 3) projection of the input where the width changes, 1x3 max-pool."""

    def __init__(self, channels_in: int, channels_out: int, first: bool) -> None:
        super().__init__()
        if not first:
            # Loaded, never applied: the original discards its output (see the module doc).
            self.bn1 = nn.BatchNorm2d(channels_in)
        self.conv1 = nn.Conv2d(channels_in, channels_out, (2, 3), padding=(1, 1))
        self.bn2 = nn.BatchNorm2d(channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, (2, 3), padding=(0, 1))
        self.project = channels_in != channels_out
        if self.project:
            self.conv_downsample = nn.Conv2d(channels_in, channels_out, (1, 3), padding=(0, 1))

    def fold_batch_norm(self) -> None:
        """Fold ``bn2`` (eval statistics) into ``conv1``: one pass over the activations
        fewer; the outputs move by float32 rounding only. Inference only, irreversible."""
        from torch.nn.utils.fusion import fuse_conv_bn_eval

        if isinstance(self.bn2, nn.BatchNorm2d):
            self.conv1 = fuse_conv_bn_eval(self.conv1, self.bn2)
            self.bn2 = nn.Identity()  # type: ignore[assignment]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In place where the tensor is our own: these activations are tens of MB per probe
        # and allocation, not arithmetic, is much of their cost.
        out = self.conv2(F.selu(self.bn2(self.conv1(x)), inplace=True))
        out = out.add_(self.conv_downsample(x) if self.project else x)
        return F.max_pool2d(out, (1, 3))

    def piece(self, window: torch.Tensor, first: bool, last: bool) -> torch.Tensor:
        """The block's pooled output over frames ``start .. stop`` of its input.

        window: (B, C_in, H, stop - start + 4) the input's frames ``start - 2 .. stop + 2``,
        zeros where those fall outside the input; ``stop - start`` a multiple of 3. first /
        last: the piece starts at frame 0 / ends at the input's last frame. Returns
        (B, C_out, H, (stop - start) // 3), equal to those columns of :meth:`forward`.

        The convolutions run unpadded in width; :meth:`forward`'s zero padding of ``conv1``'s
        output (what ``conv2`` reads beyond the edges) is reproduced by zeroing the columns of
        ``conv1`` that fall outside the input.
        """
        h = F.conv2d(window, self.conv1.weight, self.conv1.bias, padding=(1, 0))
        h = F.selu(self.bn2(h), inplace=True)
        if first:
            h[..., 0] = 0.0
        if last:
            h[..., -1] = 0.0
        out = F.conv2d(h, self.conv2.weight, self.conv2.bias)
        if self.project:
            residual = F.conv2d(
                window[..., 1:-1], self.conv_downsample.weight, self.conv_downsample.bias
            )
        else:
            residual = window[..., 2:-2]
        return F.max_pool2d(out.add_(residual), (1, 3))


def _spans(width: int, tile: int) -> list[tuple[int, int]]:
    """Pieces ``(start, stop)`` covering the frames a (1, 3) max-pool keeps (the first
    ``width // 3 * 3``), ``tile`` frames each but the last."""
    usable = width // 3 * 3
    return [(start, min(start + tile, usable)) for start in range(0, usable, tile)]


def _window(x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Frames ``start - 2 .. stop + 2`` of (B, C, H, W) ``x``, zeros beyond its edges,
    as a channels-last copy."""
    width = x.shape[-1]
    low, high = max(start - 2, 0), min(stop + 2, width)
    window = x[..., low:high]
    if low != start - 2 or high != stop + 2:
        window = F.pad(window, (low - (start - 2), stop + 2 - high))
    return window.contiguous(memory_format=torch.channels_last)


def _map_pieces(
    pool: Executor | None,
    compute: Callable[[tuple[int, int]], torch.Tensor],
    spans: Sequence[tuple[int, int]],
) -> torch.Tensor:
    """``compute`` over ``spans`` (on ``pool``'s threads if given), concatenated in width."""
    if pool is None:
        return torch.cat([compute(span) for span in spans], dim=-1)

    def run(span: tuple[int, int]) -> torch.Tensor:
        # Grad and inference modes are per thread: without this a worker would record
        # autograd history and refuse the caller's inference tensors.
        with torch.inference_mode():
            return compute(span)

    return torch.cat(list(pool.map(run, spans)), dim=-1)


def _attention_logits(nodes: torch.Tensor, proj: nn.Linear) -> torch.Tensor:
    """(B, N, D) -> (B, N, N, D'): tanh(proj(x_i * x_j)) for every pair of nodes."""
    return torch.tanh(proj(nodes[:, :, None, :] * nodes[:, None, :, :]))


def _batch_norm_nodes(bn: nn.BatchNorm1d, x: torch.Tensor) -> torch.Tensor:
    """BatchNorm1d over the feature axis of (B, N, D) nodes."""
    flat: torch.Tensor = bn(x.reshape(-1, x.shape[-1]))
    return flat.reshape(x.shape)


class _GraphAttention(nn.Module):
    """(B, N, D_in) -> (B, N, D_out): attention over all node pairs (weights from the
    element-wise product of the two nodes, softmax over neighbours at ``temperature``),
    aggregated and self projections summed, BatchNorm, SELU."""

    def __init__(self, dim_in: int, dim_out: int, temperature: float) -> None:
        super().__init__()
        self.att_proj = nn.Linear(dim_in, dim_out)
        self.att_weight = nn.Parameter(torch.empty(dim_out, 1))
        self.proj_with_att = nn.Linear(dim_in, dim_out)
        self.proj_without_att = nn.Linear(dim_in, dim_out)
        self.bn = nn.BatchNorm1d(dim_out)
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.matmul(_attention_logits(x, self.att_proj), self.att_weight)
        weights = F.softmax(logits / self.temperature, dim=-2)[..., 0]
        out = self.proj_with_att(torch.matmul(weights, x)) + self.proj_without_att(x)
        return F.selu(_batch_norm_nodes(self.bn, out))


class _HeteroGraphAttention(nn.Module):
    """Two node types and a master node.

    (B, N1, D_in), (B, N2, D_in), master (B or 1, 1, D_in) -> (B, N1, D_out), (B, N2, D_out),
    (B, 1, D_out). Pair attention uses one weight vector within type 1, one within type 2 and
    one shared by both cross-type directions; the master node attends to every node.
    """

    def __init__(self, dim_in: int, dim_out: int, temperature: float) -> None:
        super().__init__()
        self.proj_type1 = nn.Linear(dim_in, dim_in)
        self.proj_type2 = nn.Linear(dim_in, dim_in)
        self.att_proj = nn.Linear(dim_in, dim_out)
        self.att_projM = nn.Linear(dim_in, dim_out)
        self.att_weight11 = nn.Parameter(torch.empty(dim_out, 1))
        self.att_weight22 = nn.Parameter(torch.empty(dim_out, 1))
        self.att_weight12 = nn.Parameter(torch.empty(dim_out, 1))
        self.att_weightM = nn.Parameter(torch.empty(dim_out, 1))
        self.proj_with_att = nn.Linear(dim_in, dim_out)
        self.proj_without_att = nn.Linear(dim_in, dim_out)
        self.proj_with_attM = nn.Linear(dim_in, dim_out)
        self.proj_without_attM = nn.Linear(dim_in, dim_out)
        self.bn = nn.BatchNorm1d(dim_out)
        self.temperature = temperature

    def forward(
        self, first: torch.Tensor, second: torch.Tensor, master: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n1 = first.shape[1]
        x = torch.cat([self.proj_type1(first), self.proj_type2(second)], dim=1)

        pairs = _attention_logits(x, self.att_proj)
        logits = torch.empty((*pairs.shape[:-1], 1), dtype=x.dtype, device=x.device)
        logits[:, :n1, :n1] = torch.matmul(pairs[:, :n1, :n1], self.att_weight11)
        logits[:, n1:, n1:] = torch.matmul(pairs[:, n1:, n1:], self.att_weight22)
        logits[:, :n1, n1:] = torch.matmul(pairs[:, :n1, n1:], self.att_weight12)
        logits[:, n1:, :n1] = torch.matmul(pairs[:, n1:, :n1], self.att_weight12)
        weights = F.softmax(logits / self.temperature, dim=-2)[..., 0]

        master_logits = torch.matmul(torch.tanh(self.att_projM(x * master)), self.att_weightM)
        master_weights = F.softmax(master_logits / self.temperature, dim=-2)[..., 0]
        new_master = self.proj_with_attM(
            torch.matmul(master_weights[:, None, :], x)
        ) + self.proj_without_attM(master)

        out = self.proj_with_att(torch.matmul(weights, x)) + self.proj_without_att(x)
        out = F.selu(_batch_norm_nodes(self.bn, out))
        return out[:, :n1], out[:, n1:], new_master


class _GraphPool(nn.Module):
    """(B, N, D) -> (B, max(int(N * ratio), 1), D): nodes gated by sigmoid(proj(x)), the
    highest-gated ones kept (in descending gate order)."""

    def __init__(self, ratio: float, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, 1)
        self.ratio = ratio

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        gates = torch.sigmoid(self.proj(h))
        keep = max(int(h.shape[1] * self.ratio), 1)
        _, index = torch.topk(gates, keep, dim=1)
        return torch.gather(h * gates, 1, index.expand(-1, -1, h.shape[2]))


class AasistNet(nn.Module):
    """(B, nb_samp) float32 16 kHz waveform -> (B, 2) logits (spoof, bona fide).

    Built from an :class:`AasistConfig`; parameters uninitialised until a state dict is
    loaded (``load_state_dict(strict=True)``).
    """

    def __init__(self, config: AasistConfig) -> None:
        super().__init__()
        self.config = config
        stages = config.stages
        gat_in, gat_out = stages[-1][1], config.gat_dims[0]
        hetero = config.gat_dims[1]
        temps = config.temperatures
        ratios = config.pool_ratios

        self.conv_time = _SincFrontEnd(config.sinc_bands, config.first_conv)
        self.first_bn = nn.BatchNorm2d(1)
        plan = [stages[0], stages[1], stages[2], stages[3], stages[3], stages[3]]
        self.encoder = nn.Sequential(
            *(
                nn.Sequential(_ResidualBlock(c_in, c_out, first=i == 0))
                for i, (c_in, c_out) in enumerate(plan)
            )
        )
        self.pos_S = nn.Parameter(torch.empty(1, SPECTRAL_NODES, gat_in))
        self.master1 = nn.Parameter(torch.empty(1, 1, gat_out))
        self.master2 = nn.Parameter(torch.empty(1, 1, gat_out))
        self.GAT_layer_S = _GraphAttention(gat_in, gat_out, temps[0])
        self.GAT_layer_T = _GraphAttention(gat_in, gat_out, temps[1])
        self.HtrgGAT_layer_ST11 = _HeteroGraphAttention(gat_out, hetero, temps[2])
        self.HtrgGAT_layer_ST12 = _HeteroGraphAttention(hetero, hetero, temps[2])
        self.HtrgGAT_layer_ST21 = _HeteroGraphAttention(gat_out, hetero, temps[2])
        self.HtrgGAT_layer_ST22 = _HeteroGraphAttention(hetero, hetero, temps[2])
        self.pool_S = _GraphPool(ratios[0], gat_out)
        self.pool_T = _GraphPool(ratios[1], gat_out)
        self.pool_hS1 = _GraphPool(ratios[2], hetero)
        self.pool_hT1 = _GraphPool(ratios[2], hetero)
        self.pool_hS2 = _GraphPool(ratios[2], hetero)
        self.pool_hT2 = _GraphPool(ratios[2], hetero)
        self.out_layer = nn.Linear(5 * hetero, 2)
        self.tile: int | None = None
        """Frames per piece of the front end and of the residual blocks wider than it, for
        one probe (:data:`DEFAULT_TILE` once prepared); None computes every stage at full
        width, as the original does."""

    def _branch(
        self,
        temporal: torch.Tensor,
        spectral: torch.Tensor,
        master: torch.Tensor,
        layers: tuple[_HeteroGraphAttention, _HeteroGraphAttention],
        pools: tuple[_GraphPool, _GraphPool],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One heterogeneous branch: attention, pooling, a second attention added back."""
        t, s, m = layers[0](temporal, spectral, master)
        s, t = pools[0](s), pools[1](t)
        t_more, s_more, m_more = layers[1](t, s, m)
        return t + t_more, s + s_more, m + m_more

    def _stem(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, n) -> (B, 1, 23, (n - taps + 1) // 3): sinc, |.|, 3x3 max-pool, BN, SELU."""
        x = self.conv_time(wave).abs_()[:, None]
        return F.selu(self.first_bn(F.max_pool2d(x, (3, 3))), inplace=True)

    def _stem_window(self, wave: torch.Tensor, start: int, stop: int, width: int) -> torch.Tensor:
        """Frames ``start - 2 .. stop + 2`` of :meth:`_stem` (``width`` frames in all), zeros
        beyond its edges, computed from the samples those frames read only."""
        low, high = max(start - 2, 0), min(stop + 2, width)
        taps = self.conv_time.filters.shape[-1]
        x = self._stem(wave[:, 3 * low : 3 * high + taps - 1])
        if low != start - 2 or high != stop + 2:
            x = F.pad(x, (low - (start - 2), stop + 2 - high))
        return x.contiguous(memory_format=torch.channels_last)

    def _encode(self, wave: torch.Tensor, pool: Executor | None) -> torch.Tensor:
        """(B, n) -> the encoder's output (B, C, 23, frames), before ``abs``."""
        blocks = [m for m in self.encoder.modules() if isinstance(m, _ResidualBlock)]
        if self.tile is None:
            x = self._stem(wave)
            for block in blocks:
                x = block(x)
            return x
        # Frames per piece for the whole batch, so that a piece's activations take the same
        # cache whatever the batch size; a multiple of 3.
        tile = max(self.tile // wave.shape[0] // 3 * 3, 9)
        first = blocks[0]
        width = (wave.shape[-1] - self.conv_time.filters.shape[-1] + 1) // 3
        x = _map_pieces(
            pool,
            lambda span: first.piece(
                self._stem_window(wave, *span, width), span[0] == 0, span[1] == width
            ),
            _spans(width, tile),
        )
        for block in blocks[1:]:
            if x.shape[-1] <= tile:
                x = block(x)
                continue
            x = _map_pieces(pool, _piece_of(block, x), _spans(x.shape[-1], tile))
        return x

    def forward(self, wave: torch.Tensor, pool: Executor | None = None) -> torch.Tensor:
        """pool: threads to run the pieces on when :attr:`tile` is set (the caller keeps
        torch's own intra-op threads at one meanwhile); None runs them in this thread."""
        e = self._encode(wave, pool).abs_()  # (B, C, spectral nodes, frames)

        spectral = self.pool_S(self.GAT_layer_S(e.amax(dim=3).transpose(1, 2) + self.pos_S))
        temporal = self.pool_T(self.GAT_layer_T(e.amax(dim=2).transpose(1, 2)))

        t1, s1, m1 = self._branch(
            temporal,
            spectral,
            self.master1,
            (self.HtrgGAT_layer_ST11, self.HtrgGAT_layer_ST12),
            (self.pool_hS1, self.pool_hT1),
        )
        t2, s2, m2 = self._branch(
            temporal,
            spectral,
            self.master2,
            (self.HtrgGAT_layer_ST21, self.HtrgGAT_layer_ST22),
            (self.pool_hS2, self.pool_hT2),
        )
        t, s = torch.maximum(t1, t2), torch.maximum(s1, s2)
        master = torch.maximum(m1, m2).expand(t.shape[0], -1, -1)
        readout = torch.cat(
            [t.abs().amax(dim=1), t.mean(dim=1), s.abs().amax(dim=1), s.mean(dim=1), master[:, 0]],
            dim=1,
        )
        return self.out_layer(readout)  # type: ignore[no-any-return]

    def prepare_for_inference(self) -> AasistNet:
        """Make this (eval-mode, loaded) network faster on the CPU without changing what it
        computes beyond float32 rounding: BatchNorm folded into the convolution before it,
        channels-last memory (oneDNN's native layout for these 2-D convolutions: measured
        ~2x on the residual stages), the front end and the wide blocks computed in pieces
        of :data:`DEFAULT_TILE` frames. The state dict no longer matches a checkpoint's
        keys afterwards. Returns self."""
        for block in self.modules():
            if isinstance(block, _ResidualBlock):
                block.fold_batch_norm()
        self.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.tile = DEFAULT_TILE
        return self


def _piece_of(block: _ResidualBlock, x: torch.Tensor) -> Callable[[tuple[int, int]], torch.Tensor]:
    """The function computing ``block``'s output over one span of input ``x``."""
    width = x.shape[-1]

    def compute(span: tuple[int, int]) -> torch.Tensor:
        return block.piece(_window(x, *span), span[0] == 0, span[1] == width)

    return compute
