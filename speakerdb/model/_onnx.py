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

Safety: the file is read once (size-limited), checked as an ONNX protobuf by a small reader
of our own, and handed to onnxruntime as bytes. The reader walks the whole model -- the main
graph, control-flow subgraphs at any depth, training graphs, local functions -- and refuses
any tensor that points to external data (initializers, sparse initializers, Constant and
other node attributes), fields it does not know in messages that can hold tensors, operator
domains that would need a custom-operator library (none is ever registered) and operators
that load blobs for other runtimes (EPContext). As a second fence the session resolves
external data against an empty private directory, so even a tensor the reader missed could
not reach a file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from speakerdb.errors import MissingDependencyError, ModelError, TooLittleSpeechError
from speakerdb.model._encoder import SpeakerEncoder
from speakerdb.model._resampling import torchaudio_resample

__all__ = ["OnnxEncoder", "OnnxSummary", "is_onnx_model", "load_onnx", "summarize_onnx"]

MAX_ONNX_BYTES = (2 << 30) - 1
"""Largest model read: protobuf's own 2 GiB limit (a WeSpeaker ResNet34 is about 26 MB)."""

INPUT_NAME = "feats"
OUTPUT_NAME = "embs"
MIN_FRAMES = 10
"""Fewest feature frames encoded (0.115 s): a ResNet's three stride-2 stages need at least
9 frames for its standard deviation pooling to be defined."""

THRESHOLD_NOTE = (
    "WeSpeaker's runtime default (asv_main --threshold 0.5 on its (cosine + 1) / 2 score), "
    "i.e. cosine >= 0.0; uncalibrated: calibrate on your data"
)

# Operator domains whose kernels are built into onnxruntime itself.
_BUILTIN_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})
# Built-in operators that read files or hand the graph to another runtime: EPContext names
# a precompiled blob (possibly a file path) for an execution provider. A WeSpeaker export
# (torch.onnx.export of a ResNet/ECAPA) never contains one.
_REFUSED_OPS = frozenset({"EPContext"})


# --- a minimal protobuf reader ---------------------------------------------------------------


class _Malformed(Exception):
    pass


class _Refused(Exception):
    pass


_MAX_FIELD_NUMBER = (1 << 29) - 1


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise _Malformed("truncated or oversized varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data: memoryview) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of one protobuf message; length-delimited values are
    memoryviews (no copy), varints ints. Raises _Malformed on anything inconsistent, and on
    what protobuf parsers might read differently from us (tags past 32 bits, groups)."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        value: Any
        if number == 0 or number > _MAX_FIELD_NUMBER:
            raise _Malformed(f"field number {number}")
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = None, pos + 8
        elif wire == 2:
            size, pos = _varint(data, pos)
            if pos + size > len(data):
                raise _Malformed("length-delimited field runs past the end")
            value, pos = data[pos : pos + size], pos + size
        elif wire == 5:
            value, pos = None, pos + 4
        else:
            raise _Malformed(f"wire type {wire}")
        if pos > len(data):
            raise _Malformed("field runs past the end")
        yield number, wire, value


def _text(value: Any) -> str:
    try:
        return bytes(value).decode("utf-8")
    except (TypeError, UnicodeDecodeError):
        raise _Malformed("invalid string") from None


@dataclass
class TensorInfo:
    """A graph input/output: name, element type (ONNX enum, 1 = float) and dimensions
    (an int for a fixed size, a str for a named dynamic axis, None when unspecified)."""

    name: str
    elem_type: int = 0
    dims: list[int | str | None] = field(default_factory=list)


@dataclass
class OnnxSummary:
    """What :func:`summarize_onnx` reads from an ONNX file without running it.

    ``node_domains`` and ``op_types`` cover every node: the main graph, subgraphs of
    control-flow nodes at any depth, training graphs and model-local functions.
    ``external_data`` names the first tensor anywhere in the model that points to data
    outside the file ("" when none does)."""

    ir_version: int = 0
    opsets: dict[str, int] = field(default_factory=dict)
    node_domains: set[str] = field(default_factory=set)
    op_types: set[str] = field(default_factory=set)
    inputs: list[TensorInfo] = field(default_factory=list)
    outputs: list[TensorInfo] = field(default_factory=list)
    initializers: set[str] = field(default_factory=set)
    external_data: str = ""
    producer: str = ""


def _value_info(data: memoryview) -> TensorInfo:
    info = TensorInfo("")
    for number, wire, value in _fields(data):
        if number == 1 and wire == 2:
            info.name = _text(value)
        elif number == 2 and wire == 2:  # TypeProto
            for n2, w2, v2 in _fields(value):
                if n2 == 1 and w2 == 2:  # TypeProto.Tensor
                    for n3, w3, v3 in _fields(v2):
                        if n3 == 1 and w3 == 0:
                            info.elem_type = v3
                        elif n3 == 2 and w3 == 2:  # TensorShapeProto
                            for n4, w4, v4 in _fields(v3):
                                if n4 == 1 and w4 == 2:
                                    info.dims.append(_dimension(v4))
    return info


def _dimension(data: memoryview) -> int | str | None:
    dim: int | str | None = None
    for number, wire, value in _fields(data):
        if number == 1 and wire == 0:
            dim = int(value)
        elif number == 2 and wire == 2:
            dim = _text(value)
    return dim


# The whole model is walked, not just the main graph's initializers: onnxruntime loads a
# tensor's bytes from a file named in the tensor wherever the tensor sits (a Constant node's
# attribute, a sparse initializer, the body of an If/Loop/Scan, a local function), resolving
# the name against the working directory for a model given as bytes. Every message that can
# hold a tensor is read with its full field list (onnx.proto, ONNX 1.23): a field we do not
# know there could be a place where a newer runtime finds tensors, so it is refused.
_MESSAGE_FIELDS = {
    "ModelProto": frozenset({1, 2, 3, 4, 5, 6, 7, 8, 14, 20, 25, 26}),
    "GraphProto": frozenset({1, 2, 5, 10, 11, 12, 13, 14, 15, 16}),
    "NodeProto": frozenset(range(1, 11)),
    "AttributeProto": frozenset({*range(1, 12), 13, 14, 15, 20, 21, 22, 23}),
    "TensorProto": frozenset({*range(1, 15), 16}),
    "SparseTensorProto": frozenset({1, 2, 3}),
    "TrainingInfoProto": frozenset({1, 2, 3, 4}),
    "FunctionProto": frozenset({1, *range(4, 15)}),
}
# Fields holding messages: (message, field) -> the field's message type.
_SUBMESSAGES = {
    ("ModelProto", 7): "GraphProto",
    ("ModelProto", 20): "TrainingInfoProto",
    ("ModelProto", 25): "FunctionProto",
    ("GraphProto", 1): "NodeProto",
    ("GraphProto", 5): "TensorProto",
    ("GraphProto", 15): "SparseTensorProto",
    ("NodeProto", 5): "AttributeProto",
    ("AttributeProto", 5): "TensorProto",
    ("AttributeProto", 6): "GraphProto",
    ("AttributeProto", 10): "TensorProto",
    ("AttributeProto", 11): "GraphProto",
    ("AttributeProto", 22): "SparseTensorProto",
    ("AttributeProto", 23): "SparseTensorProto",
    ("SparseTensorProto", 1): "TensorProto",
    ("SparseTensorProto", 2): "TensorProto",
    ("TrainingInfoProto", 1): "GraphProto",
    ("TrainingInfoProto", 2): "GraphProto",
    ("FunctionProto", 7): "NodeProto",
    ("FunctionProto", 11): "AttributeProto",
}
MAX_GRAPH_DEPTH = 16
"""Deepest nesting of graphs (control-flow bodies, functions) read; WeSpeaker exports have none."""


class _Walker:
    """Reads every node and tensor of a ModelProto into an :class:`OnnxSummary`."""

    def __init__(self, summary: OnnxSummary) -> None:
        self.summary = summary

    def fields(self, data: memoryview, kind: str) -> Iterator[tuple[int, int, Any]]:
        """The fields of one ``kind`` message, refusing unknown ones and message fields
        that are not length-delimited (a parser would keep those as unknown bytes)."""
        known = _MESSAGE_FIELDS[kind]
        for number, wire, value in _fields(data):
            if number not in known:
                raise _Malformed(f"{kind} field {number} is not in ONNX 1.23's format")
            if (kind, number) in _SUBMESSAGES and wire != 2:
                raise _Malformed(f"{kind} field {number} is not a message")
            yield number, wire, value

    def model(self, data: memoryview) -> bool:
        """Walk a ModelProto; True when it has a main graph."""
        summary, seen_graph = self.summary, False
        for number, wire, value in self.fields(data, "ModelProto"):
            if number == 1 and wire == 0:
                summary.ir_version = value
            elif number == 2 and wire == 2:
                summary.producer = _text(value)
            elif number == 7:
                self.graph(value, 0, "the graph", main=True)
                seen_graph = True
            elif number == 8 and wire == 2:
                domain, version = "", 0
                for n2, w2, v2 in _fields(value):
                    if n2 == 1 and w2 == 2:
                        domain = _text(v2)
                    elif n2 == 2 and w2 == 0:
                        version = v2
                summary.opsets[domain] = version
            elif number == 20:
                for n2, _, v2 in self.fields(value, "TrainingInfoProto"):
                    if n2 in (1, 2):
                        self.graph(v2, 1, "a training graph")
            elif number == 25:
                self.function(value)
        return seen_graph

    def graph(self, data: memoryview, depth: int, where: str, *, main: bool = False) -> None:
        if depth > MAX_GRAPH_DEPTH:
            raise _Refused(f"graphs nested deeper than {MAX_GRAPH_DEPTH} levels")
        summary = self.summary
        for number, _, value in self.fields(data, "GraphProto"):
            if number == 1:
                self.node(value, depth, where)
            elif number == 5:
                name = self.tensor(value, "initializer", where)
                if main:
                    summary.initializers.add(name)
            elif number == 15:
                self.sparse(value, "sparse initializer", where)
            elif main and number == 11:
                summary.inputs.append(_value_info(value))
            elif main and number == 12:
                summary.outputs.append(_value_info(value))

    def node(self, data: memoryview, depth: int, where: str) -> None:
        domain = op = ""
        attributes = []
        for number, wire, value in self.fields(data, "NodeProto"):
            if number == 7 and wire == 2:
                domain = _text(value)
            elif number == 4 and wire == 2:
                op = _text(value)
            elif number == 5:
                attributes.append(value)
        self.summary.node_domains.add(domain)
        self.summary.op_types.add(op)
        for attribute in attributes:
            self.attribute(attribute, depth, op, where)

    def attribute(self, data: memoryview, depth: int, op: str, where: str) -> None:
        """An attribute of an ``op`` node (or a function's default) in ``where``."""
        name = ""
        subgraphs, tensors, sparse = [], [], []
        for number, wire, value in self.fields(data, "AttributeProto"):
            if number == 1 and wire == 2:
                name = _text(value)
            elif number in (5, 10):
                tensors.append(value)
            elif number in (6, 11):
                subgraphs.append(value)
            elif number in (22, 23):
                sparse.append(value)
        here = f"attribute {name!r} of {op!r} in {where}"
        for tensor in tensors:
            self.tensor(tensor, "tensor", here)
        for tensor in sparse:
            self.sparse(tensor, "sparse tensor", here)
        for graph in subgraphs:
            self.graph(graph, depth + 1, f"a subgraph ({op}.{name}, depth {depth + 1})")

    def function(self, data: memoryview) -> None:
        name, nodes = "", []
        for number, wire, value in self.fields(data, "FunctionProto"):
            if number == 1 and wire == 2:
                name = _text(value)
            elif number == 7:
                nodes.append(value)
            elif number == 11:
                self.attribute(value, 1, "(default)", f"function {name!r}")
            elif number == 9 and wire == 2:
                for n2, w2, v2 in _fields(value):
                    if n2 == 1 and w2 == 2:
                        self.summary.node_domains.add(_text(v2))
        for node in nodes:
            self.node(node, 1, f"function {name!r}")

    def sparse(self, data: memoryview, what: str, where: str) -> None:
        for number, _, value in self.fields(data, "SparseTensorProto"):
            if number in (1, 2):
                self.tensor(value, what, where)

    def tensor(self, data: memoryview, what: str, where: str) -> str:
        """Record a tensor pointing outside the file (external data locations, or any
        data_location but DEFAULT, however encoded); return the tensor's name."""
        name, external = "", False
        for number, wire, value in self.fields(data, "TensorProto"):
            if number == 8 and wire == 2:
                name = _text(value)
            elif number == 13 or (number == 14 and value != 0):
                external = True
        if external and not self.summary.external_data:
            self.summary.external_data = f"{what} {name!r} in {where}"[:300]
        return name


def summarize_onnx(data: bytes) -> OnnxSummary:
    """Read an ONNX ModelProto's inputs, outputs, opsets, operators and external data
    references, walking every graph, subgraph and function. Raises ModelError (without a
    path; callers add it) when ``data`` is not one, or nests graphs past MAX_GRAPH_DEPTH."""
    summary = OnnxSummary()
    try:
        seen_graph = _Walker(summary).model(memoryview(data))
    except _Malformed as exc:
        raise ModelError(f"not an ONNX model ({exc})") from None
    except _Refused as exc:
        raise ModelError(str(exc)) from None
    if not seen_graph or summary.ir_version <= 0 or not summary.opsets:
        raise ModelError("not an ONNX model (no graph, IR version or opset)")
    return summary


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


def check_wespeaker_graph(summary: OnnxSummary, source: str) -> None:
    """Raise ModelError unless the graph looks like a WeSpeaker export we can run exactly
    and safely (see the module's docstring)."""
    if summary.external_data:
        raise ModelError(
            f"{source}: points to external files for its {summary.external_data}; "
            "tensors are read only from the model file itself"
        )
    custom = sorted((set(summary.opsets) | summary.node_domains) - _BUILTIN_DOMAINS)
    if custom:
        raise ModelError(
            f"{source}: needs custom operators (domain {custom[0]!r}), which are never loaded"
        )
    refused_ops = sorted(summary.op_types & _REFUSED_OPS)
    if refused_ops:
        raise ModelError(f"{source}: uses operator {refused_ops[0]!r}, which is never run")
    inputs = [i for i in summary.inputs if i.name not in summary.initializers]
    names = [i.name for i in inputs]
    if names != [INPUT_NAME]:
        raise ModelError(
            f"{source}: inputs are {names}, expected one input {INPUT_NAME!r} (a WeSpeaker export)"
        )
    if OUTPUT_NAME not in [o.name for o in summary.outputs]:
        found = [o.name for o in summary.outputs]
        raise ModelError(f"{source}: outputs are {found}, expected {OUTPUT_NAME!r}")
    feats = inputs[0]
    if feats.elem_type != 1 or len(feats.dims) != 3:
        raise ModelError(
            f"{source}: input {INPUT_NAME} is not a float tensor (B, T, F) "
            f"(type {feats.elem_type}, dims {feats.dims})"
        )
    batch, frames, bins = feats.dims
    if isinstance(batch, int) or isinstance(frames, int):
        raise ModelError(
            f"{source}: input {INPUT_NAME} has fixed dimensions {feats.dims} (exported with "
            "--num_frames?); re-export with dynamic batch and time axes"
        )
    if not isinstance(bins, int) or not 1 <= bins <= 512:
        raise ModelError(f"{source}: input {INPUT_NAME} feature size {bins!r} is not supported")


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
