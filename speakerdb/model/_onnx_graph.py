"""Reading and checking an ONNX file without running it: a minimal protobuf reader of our
own (the ``onnx`` package is not needed) that walks the whole model -- the main graph, the
subgraphs of control-flow nodes at any depth, training graphs and local functions -- and the
checks a WeSpeaker export must pass before onnxruntime sees it (see :mod:`._onnx`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from speakerdb.errors import ModelError

__all__ = [
    "INPUT_NAME",
    "MAX_GRAPH_DEPTH",
    "OUTPUT_NAME",
    "MalformedProtobuf",
    "OnnxSummary",
    "TensorInfo",
    "check_wespeaker_graph",
    "protobuf_fields",
    "read_varint",
    "summarize_onnx",
]

INPUT_NAME = "feats"
OUTPUT_NAME = "embs"

# Operator domains whose kernels are built into onnxruntime itself.
_BUILTIN_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})
# Built-in operators that read files or hand the graph to another runtime: EPContext names
# a precompiled blob (possibly a file path) for an execution provider. A WeSpeaker export
# (torch.onnx.export of a ResNet/ECAPA) never contains one.
_REFUSED_OPS = frozenset({"EPContext"})


# --- a minimal protobuf reader ---------------------------------------------------------------


class MalformedProtobuf(Exception):
    """The bytes are not well-formed protobuf (also raised for a diarization network's
    ONNX file, read with :func:`protobuf_fields`)."""


class _Refused(Exception):
    pass


_MAX_FIELD_NUMBER = (1 << 29) - 1


def read_varint(data: memoryview, pos: int) -> tuple[int, int]:
    """The protobuf varint at ``pos`` and the position after it. Raises MalformedProtobuf."""
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise MalformedProtobuf("truncated or oversized varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def protobuf_fields(data: memoryview) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of one protobuf message; length-delimited values are
    memoryviews (no copy), varints ints. Raises MalformedProtobuf on anything inconsistent, and on
    what protobuf parsers might read differently from us (tags past 32 bits, groups)."""
    pos = 0
    while pos < len(data):
        key, pos = read_varint(data, pos)
        number, wire = key >> 3, key & 7
        value: Any
        if number == 0 or number > _MAX_FIELD_NUMBER:
            raise MalformedProtobuf(f"field number {number}")
        if wire == 0:
            value, pos = read_varint(data, pos)
        elif wire == 1:
            value, pos = None, pos + 8
        elif wire == 2:
            size, pos = read_varint(data, pos)
            if pos + size > len(data):
                raise MalformedProtobuf("length-delimited field runs past the end")
            value, pos = data[pos : pos + size], pos + size
        elif wire == 5:
            value, pos = None, pos + 4
        else:
            raise MalformedProtobuf(f"wire type {wire}")
        if pos > len(data):
            raise MalformedProtobuf("field runs past the end")
        yield number, wire, value


def _text(value: Any) -> str:
    try:
        return bytes(value).decode("utf-8")
    except (TypeError, UnicodeDecodeError):
        raise MalformedProtobuf("invalid string") from None


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
    for number, wire, value in protobuf_fields(data):
        if number == 1 and wire == 2:
            info.name = _text(value)
        elif number == 2 and wire == 2:  # TypeProto
            for n2, w2, v2 in protobuf_fields(value):
                if n2 == 1 and w2 == 2:  # TypeProto.Tensor
                    for n3, w3, v3 in protobuf_fields(v2):
                        if n3 == 1 and w3 == 0:
                            info.elem_type = v3
                        elif n3 == 2 and w3 == 2:  # TensorShapeProto
                            for n4, w4, v4 in protobuf_fields(v3):
                                if n4 == 1 and w4 == 2:
                                    info.dims.append(_dimension(v4))
    return info


def _dimension(data: memoryview) -> int | str | None:
    dim: int | str | None = None
    for number, wire, value in protobuf_fields(data):
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
        for number, wire, value in protobuf_fields(data):
            if number not in known:
                raise MalformedProtobuf(f"{kind} field {number} is not in ONNX 1.23's format")
            if (kind, number) in _SUBMESSAGES and wire != 2:
                raise MalformedProtobuf(f"{kind} field {number} is not a message")
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
                for n2, w2, v2 in protobuf_fields(value):
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
                for n2, w2, v2 in protobuf_fields(value):
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
    except MalformedProtobuf as exc:
        raise ModelError(f"not an ONNX model ({exc})") from None
    except _Refused as exc:
        raise ModelError(str(exc)) from None
    if not seen_graph or summary.ir_version <= 0 or not summary.opsets:
        raise ModelError("not an ONNX model (no graph, IR version or opset)")
    return summary


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
