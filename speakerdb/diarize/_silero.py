"""Silero VAD (MIT) run in torch from the tensors of the ``silero-vad`` package's ONNX file.

The package ships its trained weights several ways (TorchScript, ONNX, an older
safetensors copy); only the initializers (named float32 tensors) of
``data/silero_vad_16k_op15.onnx`` are read, with speakerdb's own protobuf reader: no pickle
or TorchScript is loaded and no ONNX graph is executed. The network is small and
written out below: a learned STFT (a 1-D convolution, 256 taps, hop 128) whose magnitude
goes through four convolutions and one LSTM cell, then a sigmoid; one speech probability
per 512-sample (32 ms) chunk at 16 kHz, each chunk seen with the 64 samples before it.

The convolutions of all chunks of a block run at once (a chunk depends only on its own
576 samples); only the LSTM runs in order, as one ``torch.nn.LSTM`` call per block.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from speakerdb.errors import ModelError

if TYPE_CHECKING:
    import torch

__all__ = [
    "CHUNK_SAMPLES",
    "CONTEXT_SAMPLES",
    "SileroVAD",
    "read_initializers",
    "silero_weights_path",
]

CHUNK_SAMPLES = 512
"""Samples per decision at 16 kHz (32 ms): the chunk size silero-vad was trained on."""
CONTEXT_SAMPLES = 64
"""Samples of the previous chunk each chunk is seen with."""
_PAD = 64  # reflection padding after the context + chunk, as the trained model expects
_BINS = 129  # n_fft 256 -> 129 frequency bins (real and imaginary rows of the STFT kernel)

# Our name -> (the initializer's name in the ONNX file, its shape).
_TENSORS: dict[str, tuple[str, tuple[int, ...]]] = {
    "stft_conv.weight": ("model.stft.forward_basis_buffer", (258, 1, 256)),
    "conv1.weight": ("model.encoder.0.reparam_conv.weight", (128, 129, 3)),
    "conv1.bias": ("model.encoder.0.reparam_conv.bias", (128,)),
    "conv2.weight": ("model.encoder.1.reparam_conv.weight", (64, 128, 3)),
    "conv2.bias": ("model.encoder.1.reparam_conv.bias", (64,)),
    "conv3.weight": ("model.encoder.2.reparam_conv.weight", (64, 64, 3)),
    "conv3.bias": ("model.encoder.2.reparam_conv.bias", (64,)),
    "conv4.weight": ("model.encoder.3.reparam_conv.weight", (128, 64, 3)),
    "conv4.bias": ("model.encoder.3.reparam_conv.bias", (128,)),
    "lstm_cell.weight_ih": ("model.decoder.rnn.weight_ih", (512, 128)),
    "lstm_cell.weight_hh": ("model.decoder.rnn.weight_hh", (512, 128)),
    "lstm_cell.bias_ih": ("model.decoder.rnn.bias_ih", (512,)),
    "lstm_cell.bias_hh": ("model.decoder.rnn.bias_hh", (512,)),
    "final_conv.weight": ("model.decoder.decoder.2.weight", (1, 128, 1)),
    "final_conv.bias": ("model.decoder.decoder.2.bias", (1,)),
}
_FLOAT = 1  # TensorProto.FLOAT


def silero_weights_path() -> Path:
    """The 16 kHz ONNX file of the installed ``silero-vad`` package, found without importing
    the package. Raises ModelError when it is missing."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "diarization's speech detector comes from the 'silero-vad' package, which is not "
            "installed (pip install silero-vad)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad_16k_op15.onnx"
    if not path.is_file():
        raise ModelError(f"silero-vad weights missing from the package: {path}")
    return path


def read_initializers(path: Path) -> dict[str, npt.NDArray[np.float32]]:
    """silero-vad's float32 weights from the initializers of its ONNX file, by our names,
    checked against the shapes the network needs. Raises ModelError for anything else (a
    truncated file, a missing tensor, another dtype or shape, non-finite values)."""
    from speakerdb.model._onnx_graph import MalformedProtobuf, protobuf_fields

    try:
        data = memoryview(path.read_bytes())
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc.strerror or exc}") from None
    wanted = {onnx_name: (ours, shape) for ours, (onnx_name, shape) in _TENSORS.items()}
    out: dict[str, npt.NDArray[np.float32]] = {}
    try:
        for number, wire, graph in protobuf_fields(data):
            if number != 7 or wire != 2:  # ModelProto.graph
                continue
            for field_number, kind, tensor in protobuf_fields(graph):
                if field_number != 5 or kind != 2:  # GraphProto.initializer
                    continue
                dims: list[int] = []
                dtype, name, raw = 0, "", None
                for f, w, value in protobuf_fields(tensor):
                    if f == 1 and w == 0:
                        dims.append(int(value))
                    elif f == 1 and w == 2:  # packed dims
                        pos = 0
                        while pos < len(value):
                            dim, pos = _varint_at(value, pos)
                            dims.append(dim)
                    elif f == 2 and w == 0:
                        dtype = int(value)
                    elif f == 8 and w == 2:
                        name = bytes(value).decode("utf-8", "replace")
                    elif f == 9 and w == 2:
                        raw = value
                if name not in wanted:
                    continue
                ours, shape = wanted[name]
                if dtype != _FLOAT or tuple(dims) != shape or raw is None:
                    raise ValueError(f"{name}: type {dtype} shape {dims}, expected float {shape}")
                if len(raw) != 4 * int(np.prod(shape)):
                    raise ValueError(f"{name}: {len(raw)} bytes of data for shape {shape}")
                array = np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float32)
                if not np.isfinite(array).all():
                    raise ValueError(f"{name}: non-finite values")
                out[ours] = array
        missing = sorted(set(_TENSORS) - set(out))
        if missing:
            raise ValueError(f"missing {', '.join(_TENSORS[m][0] for m in missing)}")
    except (ValueError, MalformedProtobuf) as exc:
        raise ModelError(f"{path} is not silero-vad's ONNX file: {exc}") from None
    return out


def _varint_at(data: memoryview, pos: int) -> tuple[int, int]:
    from speakerdb.model._onnx_graph import read_varint

    return read_varint(data, pos)


class SileroVAD:
    """The trained network; :meth:`start` gives a fresh stream state.

    ``probabilities(chunks, state)``: (n, 576) float32 context + chunk -> (n,) float32
    speech probabilities and the LSTM state after the last chunk.
    """

    _cached: SileroVAD | None = None

    def __init__(self, path: Path | None = None) -> None:
        import torch

        tensors = read_initializers(path or silero_weights_path())
        self._w = {k: torch.from_numpy(v) for k, v in tensors.items()}
        self._lstm = torch.nn.LSTM(128, 128, batch_first=True)
        self._lstm.load_state_dict(
            {
                f"{part}_l0": self._w[f"lstm_cell.{part}"]
                for part in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
            }
        )
        self._lstm.eval()

    @classmethod
    def shared(cls) -> SileroVAD:
        """One network per process (it is stateless; the stream state lives with the caller)."""
        if cls._cached is None:
            cls._cached = cls()
        return cls._cached

    def probabilities(
        self,
        chunks: npt.NDArray[np.float32],
        state: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[npt.NDArray[np.float32], tuple[torch.Tensor, torch.Tensor]]:
        import torch

        with torch.inference_mode():
            features = self._features([chunks])
            # (n, 128): one step of the LSTM cell per chunk, in order.
            h, (h_n, c_n) = self._lstm(features.unsqueeze(0), state)
            probs = self._decode(h[0])
        return probs.numpy().astype(np.float32), (h_n, c_n)

    def probabilities_many(
        self,
        streams: Sequence[tuple[npt.NDArray[np.float32], tuple[torch.Tensor, torch.Tensor] | None]],
    ) -> list[tuple[npt.NDArray[np.float32], tuple[torch.Tensor, torch.Tensor]]]:
        """:meth:`probabilities` of several independent streams in one pass: each item is a
        stream's (n_i, 576) float32 chunks (n_i >= 1) and its state; the answer, in order,
        each stream's (n_i,) probabilities and its state after its last chunk, as separate
        calls give them (to float rounding). The convolutions run over all chunks at once
        and the LSTM over all streams as one packed batch, each from its own state."""
        import torch
        from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

        if not streams:
            return []
        counts = [int(chunks.shape[0]) for chunks, _ in streams]
        if min(counts) < 1:
            raise ValueError("every stream needs at least one chunk")
        if len(streams) == 1:  # packing one stream only costs (0.4 ms of 2 on 3 chunks)
            return [self.probabilities(*streams[0])]
        with torch.inference_mode():
            features = self._features([chunks for chunks, _ in streams])
            rows = torch.split(features, counts)
            padded = torch.nn.utils.rnn.pad_sequence(list(rows), batch_first=True)
            fresh = torch.zeros(1, 1, self._lstm.hidden_size)
            h0 = torch.cat([s[0] if s is not None else fresh for _, s in streams], dim=1)
            c0 = torch.cat([s[1] if s is not None else fresh for _, s in streams], dim=1)
            # Packed: each stream's state is taken after its own last chunk, not the
            # longest stream's (torch orders the streams by length and back again).
            packed = pack_padded_sequence(
                padded, torch.tensor(counts), batch_first=True, enforce_sorted=False
            )
            out, (h_n, c_n) = self._lstm(packed, (h0, c0))
            h, _ = pad_packed_sequence(out, batch_first=True)
            outputs = torch.cat([h[i, :n] for i, n in enumerate(counts)])
            probs = self._decode(outputs).numpy().astype(np.float32)
        answers = []
        offset = 0
        for i, n in enumerate(counts):
            state = (h_n[:, i : i + 1].clone(), c_n[:, i : i + 1].clone())
            answers.append((probs[offset : offset + n], state))
            offset += n
        return answers

    def _features(self, blocks: Sequence[npt.NDArray[np.float32]]) -> torch.Tensor:
        """Each block (n_i, 576) float32 context + chunk -> (sum n_i, 128) inputs of the
        LSTM (a chunk's depend only on its own samples)."""
        import torch
        import torch.nn.functional as F

        w = self._w
        joined = np.concatenate(blocks) if len(blocks) > 1 else blocks[0]
        x = torch.from_numpy(np.ascontiguousarray(joined, dtype=np.float32)).unsqueeze(1)
        x = F.pad(x, (0, _PAD), mode="reflect")
        x = F.conv1d(x, w["stft_conv.weight"], stride=CHUNK_SAMPLES // 4)
        x = torch.sqrt(x[:, :_BINS] ** 2 + x[:, _BINS:] ** 2)
        x = F.relu(F.conv1d(x, w["conv1.weight"], w["conv1.bias"], padding=1))
        x = F.relu(F.conv1d(x, w["conv2.weight"], w["conv2.bias"], stride=2, padding=1))
        x = F.relu(F.conv1d(x, w["conv3.weight"], w["conv3.bias"], stride=2, padding=1))
        x = F.relu(F.conv1d(x, w["conv4.weight"], w["conv4.bias"], padding=1))
        return x.squeeze(-1)  # (n, 128, 1) -> (n, 128)

    def _decode(self, h: torch.Tensor) -> torch.Tensor:
        """(n, 128) LSTM outputs -> (n,) speech probabilities."""
        import torch
        import torch.nn.functional as F

        w = self._w
        logits = F.conv1d(F.relu(h).unsqueeze(-1), w["final_conv.weight"], w["final_conv.bias"])
        return torch.sigmoid(logits).reshape(-1)
