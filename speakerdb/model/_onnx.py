"""The "onnx" family: speaker models exported by WeSpeaker (``wespeaker/bin/export_onnx.py``).

Such a file is an ONNX graph with one input ``feats`` (B, T, F) -- Kaldi log mel filterbanks
with the utterance's mean removed -- and one output ``embs`` (B, D). What WeSpeaker does per
file, reproduced here:

* resampling to 16 kHz with ``torchaudio.transforms.Resample`` at its defaults
  (``Speaker.extract_embedding_from_pcm``);
* the waveform on the 16-bit integer scale (x 32768), as WeSpeaker's training data pipeline
  and ``bin/infer_onnx.py`` feed it;
* ``torchaudio.compliance.kaldi.fbank``: F mel bins, 25 ms frames every 10 ms, Hamming
  window, dither 0 (inference), no energy term, Kaldi's other defaults (pre-emphasis 0.97,
  DC removal, snip_edges, 20 Hz low cut, FFT size 512, log floor at float epsilon);
* CMN: the mean over time subtracted, no variance normalisation;
* the graph run by onnxruntime (CPU). The graph has no masks: its statistics pooling
  averages every frame it is given, padding included, so :attr:`exact_padding` is False and
  :meth:`encode` runs each distinct length separately.

Safety: the file is read once (size-limited), checked by :mod:`._onnx_graph` (a protobuf
reader of our own that walks the whole model and refuses external data anywhere, custom
operator domains, EPContext and unknown fields where tensors can sit), and handed to
onnxruntime as bytes; no custom-operator library is ever registered. As a second fence the
session resolves external data against an empty private directory, so even a tensor the
reader missed could not reach a file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from speakerdb.errors import MissingDependencyError, ModelError, TooLittleSpeechError
from speakerdb.model._encoder import SpeakerEncoder
from speakerdb.model._onnx_graph import (
    INPUT_NAME,
    MAX_GRAPH_DEPTH,
    OUTPUT_NAME,
    OnnxSummary,
    check_wespeaker_graph,
    summarize_onnx,
)
from speakerdb.model._resampling import torchaudio_resample

__all__ = [
    "MAX_GRAPH_DEPTH",
    "OnnxEncoder",
    "OnnxSummary",
    "is_onnx_model",
    "load_onnx",
    "summarize_onnx",
]

MAX_ONNX_BYTES = (2 << 30) - 1
"""Largest model read: protobuf's own 2 GiB limit (a WeSpeaker ResNet34 is about 26 MB)."""

MIN_FRAMES = 10
"""Fewest feature frames encoded (0.115 s): a ResNet's three stride-2 stages need at least
9 frames for its standard deviation pooling to be defined."""

THRESHOLD_NOTE = (
    "WeSpeaker's runtime default (asv_main --threshold 0.5 on its (cosine + 1) / 2 score), "
    "i.e. cosine >= 0.0; uncalibrated: calibrate on your data"
)

# --- front end ---------------------------------------------------------------------------------


def wespeaker_fbank(samples: torch.Tensor, num_mel_bins: int) -> torch.Tensor:
    """(n,) float32 in [-1, 1] at 16 kHz -> (T, num_mel_bins) float32, WeSpeaker's features:
    Kaldi fbank of the 16-bit-scaled waveform, mean over time removed. T may be 0."""
    import torchaudio.compliance.kaldi as kaldi

    with torch.inference_mode():
        feats = kaldi.fbank(
            samples[None, :] * (1 << 15),
            num_mel_bins=num_mel_bins,
            frame_length=25,
            frame_shift=10,
            dither=0.0,
            sample_frequency=16_000,
            window_type="hamming",
            use_energy=False,
        )
        out: torch.Tensor = feats if feats.shape[0] == 0 else feats - torch.mean(feats, dim=0)
        return out


# --- encoder -----------------------------------------------------------------------------------


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependencyError(
            "ONNX models need onnxruntime: pip install 'speakerdb[onnx]'"
        ) from None
    return onnxruntime


class OnnxEncoder(SpeakerEncoder):
    """A WeSpeaker-exported ONNX speaker model run by onnxruntime.

    ``session.run`` is safe to call from several threads at once (onnxruntime's guarantee);
    :meth:`to` swaps the session under a lock.
    """

    family = "onnx"
    # 8 s per encoder call on a CPU: batches of 10 000 frames ran 1.5-1.7x slower per frame
    # than single files for TitaNet-L and ECAPA (C=1024) on a 2-core CPU (see _encoder.py).
    cpu_batch_frames = 800

    def __init__(self, model: bytes, summary: OnnxSummary, sha256: str, threads: int = 0) -> None:
        self._model = model
        self.summary = summary
        self.weights_sha256 = sha256
        self.threads = threads
        feats = next(i for i in summary.inputs if i.name == INPUT_NAME)
        bins = feats.dims[2]
        assert isinstance(bins, int)  # checked by check_wespeaker_graph
        self.num_mel_bins = bins
        self.sample_rate = 16_000
        self.default_threshold = 0.0
        self.threshold_note = THRESHOLD_NOTE
        self.exact_padding = False
        self._lock = threading.Lock()
        self._providers: list[Any] = ["CPUExecutionProvider"]
        self._session = self._new_session()
        probe = self._run(np.zeros((1, 200, self.num_mel_bins), np.float32))
        if probe.ndim != 2 or probe.shape[0] != 1:
            raise ModelError(f"output {OUTPUT_NAME} has shape {probe.shape}, expected (B, D)")
        self.dimension = int(probe.shape[1])

    def _new_session(self) -> Any:
        ort = _onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # Only the ONNX protobuf format (already checked), never ORT's own format.
        options.add_session_config_entry("session.load_model_format", "ONNX")
        try:
            # A model given as bytes resolves external data against the working directory
            # (summarize_onnx refuses any); here against an empty directory of our own.
            with tempfile.TemporaryDirectory(prefix="speakerdb-onnx-") as empty:
                options.add_session_config_entry(
                    "session.model_external_initializers_file_folder_path", empty
                )
                return ort.InferenceSession(self._model, options, providers=self._providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/...
            raise ModelError(f"onnxruntime cannot load the model: {_first_line(exc)}") from None

    def _run(self, feats: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        try:
            out = self._session.run([OUTPUT_NAME], {INPUT_NAME: feats})[0]
        except Exception as exc:
            raise ModelError(f"onnxruntime failed to run the model: {_first_line(exc)}") from None
        return np.asarray(out, dtype=np.float32)

    def resample(self, samples: npt.NDArray[np.float32], rate: int) -> npt.NDArray[np.float32]:
        """torchaudio.transforms.Resample(rate, 16000) at its defaults, as WeSpeaker does."""
        return torchaudio_resample(samples, rate, self.sample_rate)

    def prepare(self, samples: npt.NDArray[np.float32]) -> list[torch.Tensor]:
        """(n,) float32 at 16 kHz -> one chunk (T, F) float32: WeSpeaker's fbank + CMN.
        Raises TooLittleSpeechError below :data:`MIN_FRAMES` frames."""
        tensor = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
        feats = wespeaker_fbank(tensor, self.num_mel_bins)
        if feats.shape[0] < MIN_FRAMES:
            raise TooLittleSpeechError(
                "<audio>",
                f"{len(samples)} samples give {feats.shape[0]} frames, fewer than "
                f"the {MIN_FRAMES} this model needs",
            )
        return [feats]

    def encode(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, T, F) float32 zero-padded, (B,) int64 -> (B, D) float32.

        The graph has no masks, so rows are run in groups of equal length, each cut to its
        own length: padding never reaches the network (the engine sends equal lengths)."""
        feats = features.detach().to("cpu", torch.float32).numpy()
        sizes = [int(n) for n in lengths.tolist()]
        out = np.empty((len(sizes), self.dimension), np.float32)
        for size in sorted(set(sizes)):
            rows = [i for i, n in enumerate(sizes) if n == size]
            out[rows] = self._run(np.ascontiguousarray(feats[rows, :size]))
        return torch.from_numpy(out)

    def to(self, device: torch.device) -> None:
        """onnxruntime runs on the CPU here; a CUDA device is used only when the installed
        onnxruntime provides CUDAExecutionProvider (onnxruntime-gpu), else the CPU stays."""
        ort = _onnxruntime()
        wanted: list[Any] = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            wanted = [("CUDAExecutionProvider", {"device_id": device.index or 0}), *wanted]
        with self._lock:
            if wanted != self._providers:
                self._providers = wanted
                self._session = self._new_session()


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


# --- loading -----------------------------------------------------------------------------------


def _read(path: Path) -> bytes:
    try:
        if path.is_dir():
            raise ModelError(f"{path}: is a directory, not an ONNX file")
        size = path.stat().st_size
        if size > MAX_ONNX_BYTES:
            raise ModelError(f"{path}: {size} bytes is over the {MAX_ONNX_BYTES}-byte limit")
        if size == 0:
            raise ModelError(f"{path}: empty file")
        with open(path, "rb") as fh:
            # ONNX serialisers write fields in number order: a ModelProto starts with its
            # ir_version (field 1, varint: byte 0x08). Anything else is not read further.
            if fh.read(1) != b"\x08":
                raise ModelError(f"{path}: not an ONNX model (no IR version first)")
            return b"\x08" + fh.read()
    except FileNotFoundError:
        raise ModelError(f"{path}: no such file") from None
    except OSError as exc:
        raise ModelError(f"{path}: cannot read ({exc.strerror or exc})") from None


def is_onnx_model(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a file holding an ONNX graph with a ``feats`` input and an
    ``embs`` output (by content, not extension). Never raises. Whether it is one that can be
    run (and safely) is for :func:`load_onnx` to say, with its reason."""
    try:
        summary = summarize_onnx(_read(Path(path)))
    except ModelError:
        return False
    return INPUT_NAME in [i.name for i in summary.inputs] and OUTPUT_NAME in [
        o.name for o in summary.outputs
    ]


def load_onnx(path: str | os.PathLike[str], *, threads: int = 0) -> OnnxEncoder:
    """Load a WeSpeaker-exported ONNX model. ``threads``: onnxruntime intra-op threads
    (0: its default, one per physical core).

    Raises ModelError (unreadable, oversized, not ONNX, wrong inputs/outputs, custom
    operators, external data, onnxruntime refuses it) or MissingDependencyError (no
    onnxruntime).
    """
    file = Path(path).expanduser()
    data = _read(file)
    try:
        summary = summarize_onnx(data)
    except ModelError as exc:
        raise ModelError(f"{file}: {exc.message}") from None
    check_wespeaker_graph(summary, str(file))
    try:
        return OnnxEncoder(data, summary, hashlib.sha256(data).hexdigest(), threads)
    except ModelError as exc:
        raise ModelError(f"{file}: {exc.message}") from None
