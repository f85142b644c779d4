"""Synthetic ONNX models with the real files' input and output signatures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

POOL = 8


def arcface_like_model(
    path: Path,
    *,
    input_name: str = "input.1",
    batch: str | int = "None",
    size: int = 112,
    out_dim: int = 512,
) -> tuple[np.ndarray, np.ndarray]:
    """Save an ONNX graph shaped like w600k_r50: 8×8 average pool, Flatten, MatMul, Add, Tanh.

    Returns the MatMul weight and bias so tests can redo the graph's maths in numpy.
    """
    rng = np.random.default_rng(0)
    features = 3 * (size // POOL) ** 2
    weight = rng.normal(size=(features, out_dim)).astype(np.float32)
    bias = rng.normal(size=out_dim).astype(np.float32)
    nodes = [
        helper.make_node(
            "AveragePool", [input_name], ["pooled"], kernel_shape=[POOL, POOL], strides=[POOL, POOL]
        ),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("MatMul", ["flat", "weight"], ["projected"]),
        helper.make_node("Add", ["projected", "bias"], ["shifted"]),
        helper.make_node("Tanh", ["shifted"], ["683"]),
    ]
    graph = helper.make_graph(
        nodes,
        "arcface_like",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, [batch, out_dim])],
        initializer=[
            numpy_helper.from_array(weight, "weight"),
            numpy_helper.from_array(bias, "bias"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return weight, bias


def inswapper_like_model(
    path: Path, *, size: int = 128, emap_shape: tuple[int, int] = (512, 512)
) -> tuple[np.ndarray, np.ndarray]:
    """Save an ONNX graph with inswapper_128's signature: ``target`` [1, 3, 128, 128] and
    ``source`` [1, 512] in, [1, 3, 128, 128] out, ``emap`` as the last initializer.

    Output: ``clip(0.5 * target + reshape(source @ weight, [1, 3, 1, 1]), 0, 1)``, so it
    depends on both inputs. Returns ``weight`` [512, 3] and ``emap`` for redoing the maths.
    """
    rng = np.random.default_rng(1)
    weight = rng.normal(scale=0.05, size=(512, 3)).astype(np.float32)
    emap = rng.normal(size=emap_shape).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["source", "weight"], ["shift"]),
        helper.make_node("Reshape", ["shift", "shape"], ["shift4"]),
        helper.make_node("Mul", ["target", "half"], ["dimmed"]),
        helper.make_node("Add", ["dimmed", "shift4"], ["moved"]),
        helper.make_node("Clip", ["moved", "zero", "one"], ["output"]),
    ]
    image = [1, 3, size, size]
    graph = helper.make_graph(
        nodes,
        "inswapper_like",
        [
            helper.make_tensor_value_info("target", TensorProto.FLOAT, image),
            helper.make_tensor_value_info("source", TensorProto.FLOAT, [1, 512]),
        ],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, image)],
        initializer=[
            numpy_helper.from_array(weight, "weight"),
            numpy_helper.from_array(np.array([1, 3, 1, 1], np.int64), "shape"),
            numpy_helper.from_array(np.array(0.5, np.float32), "half"),
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
            numpy_helper.from_array(np.array(1.0, np.float32), "one"),
            numpy_helper.from_array(emap, "emap"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return weight, emap
