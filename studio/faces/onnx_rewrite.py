"""ONNX graph rewrites that make ONNX Runtime's CPU provider run our face models well.

ONNX Runtime's CPU PRelu kernel is an order of magnitude slower than its other element-wise
kernels (a PRelu on 64x56x56 took 0.95 ms on one EPYC core, a Mul of the same broadcast shape
0.03 ms), and it keeps the activations out of the blocked NCHWc layout that ORT uses for the
convolutions, adding a layout conversion before and after each one. SFace has 27 PRelus, one
after every convolution: they took more time than the convolutions. Exports that list their
weights as graph inputs as well (SFace's does) also stop ORT from treating the weights as
constants: no folding of the DequantizeLinear nodes or of BatchNormalization into Conv.
:func:`prepare_for_ort` fixes these without the ``onnx`` package (a development-only
dependency) by editing the serialized ModelProto's fields. Field numbers are those of
onnx/onnx.proto, which the format keeps stable.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Mapping, Sequence

import numpy as np

logger = logging.getLogger(__name__)

_MODEL_GRAPH = 7  # ModelProto.graph
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_INPUT, _GRAPH_OUTPUT = 1, 5, 11, 12
_NODE_INPUT, _NODE_OUTPUT, _NODE_NAME, _NODE_OP_TYPE = 1, 2, 3, 4
_NODE_ATTRIBUTE, _NODE_DOMAIN = 5, 7
_ATTRIBUTE_NAME = 1
_VALUE_INFO_NAME, _VALUE_INFO_TYPE = 1, 2
_TYPE_TENSOR, _TENSOR_TYPE_SHAPE, _SHAPE_DIM, _DIM_PARAM = 1, 2, 1, 2
_TENSOR_DIMS, _TENSOR_DATA_TYPE, _TENSOR_NAME, _TENSOR_RAW_DATA = 1, 2, 8, 9
_TENSOR_FLOAT_DATA = 4
_TENSOR_FLOAT = 1
_VARINT, _LENGTH_DELIMITED = 0, 2
# Ops whose subgraphs may read outer-scope names: a graph with any of them is left as it is.
_SUBGRAPH_OPS = frozenset({"If", "Loop", "Scan", "SequenceMap"})

_Fields = list[tuple[int, memoryview, memoryview | None]]


def _read_varint(data: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _fields(data: memoryview) -> _Fields:
    """The fields of one protobuf message: ``(number, encoded field, payload or None)``.

    The payload is the content of a length-delimited field (strings, bytes, messages, packed
    numbers) and ``None`` for other wire types; the encoded field (tag included) re-serializes
    it unchanged. Both are views into ``data``, not copies.
    """
    fields: _Fields = []
    pos = 0
    while pos < len(data):
        start = pos
        tag, pos = _read_varint(data, pos)
        number, wire_type = tag >> 3, tag & 7
        payload = None
        if wire_type == _VARINT:
            _, pos = _read_varint(data, pos)
        elif wire_type == 1:  # 64-bit
            pos += 8
        elif wire_type == 5:  # 32-bit
            pos += 4
        elif wire_type == _LENGTH_DELIMITED:
            size, pos = _read_varint(data, pos)
            payload = data[pos : pos + size]
            pos += size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type}")
        if pos > len(data):
            raise ValueError("truncated protobuf message")
        fields.append((number, data[start:pos], payload))
    return fields


def _strings(fields: _Fields, number: int) -> list[str]:
    return [
        bytes(payload).decode() for n, _, payload in fields if n == number and payload is not None
    ]


def _string(fields: _Fields, number: int) -> str:
    found = _strings(fields, number)
    return found[-1] if found else ""


def _message(number: int, payload: bytes | memoryview) -> bytes:
    return _varint(number << 3 | _LENGTH_DELIMITED) + _varint(len(payload)) + payload


def _varints(fields: _Fields, number: int) -> list[int]:
    """The integer values of field ``number``: unpacked (one per field) or packed."""
    values = []
    for n, encoded, payload in fields:
        if n != number:
            continue
        if payload is None:  # unpacked: the field's tag, then its value
            values.append(_read_varint(encoded, len(_varint(number << 3)))[0])
            continue
        pos = 0
        while pos < len(payload):
            value, pos = _read_varint(payload, pos)
            values.append(value)
    return values


def _node(op_type: str, inputs: Sequence[str], output: str) -> bytes:
    body = b"".join(_message(_NODE_INPUT, name.encode()) for name in inputs)
    body += _message(_NODE_OUTPUT, output.encode()) + _message(_NODE_NAME, output.encode())
    return _message(_GRAPH_NODE, body + _message(_NODE_OP_TYPE, op_type.encode()))


def _float_scalar(name: str, value: float) -> bytes:
    body = _varint(_TENSOR_DATA_TYPE << 3) + _varint(_TENSOR_FLOAT)
    body += _message(_TENSOR_NAME, name.encode())
    body += _message(_TENSOR_RAW_DATA, struct.pack("<f", value))
    return _message(_GRAPH_INITIALIZER, body)


def _edit(message: memoryview, number: int, edit: Callable[[memoryview], bytes]) -> bytes:
    """``message`` re-serialized with ``edit(content)`` as the content of each field ``number``."""
    return b"".join(
        _message(n, edit(payload)) if n == number and payload is not None else encoded
        for n, encoded, payload in _fields(message)
    )


def _with_free_dims(value_info: memoryview) -> bytes:
    """A tensor ValueInfoProto of the same rank whose every dimension is a named free one."""
    name = _string(_fields(value_info), _VALUE_INFO_NAME)

    def free(shape: memoryview) -> bytes:
        rank = sum(1 for number, _, _ in _fields(shape) if number == _SHAPE_DIM)
        return b"".join(
            _message(_SHAPE_DIM, _message(_DIM_PARAM, f"{name}_{i}".encode())) for i in range(rank)
        )

    def tensor_type(tensor: memoryview) -> bytes:
        return _edit(tensor, _TENSOR_TYPE_SHAPE, free)

    return _edit(
        value_info, _VALUE_INFO_TYPE, lambda type_: _edit(type_, _TYPE_TENSOR, tensor_type)
    )


def _is_float_prelu(fields: _Fields, initializers: Mapping[str, memoryview]) -> bool:
    """A PRelu whose slope is a float32 initializer (so ``1 - slope`` folds to float32)."""
    inputs = _strings(fields, _NODE_INPUT)
    return (
        _string(fields, _NODE_OP_TYPE) == "PRelu"
        and _string(fields, _NODE_DOMAIN) in ("", "ai.onnx")
        and len(inputs) == 2
        and len(_strings(fields, _NODE_OUTPUT)) == 1
        and inputs[1] in initializers
        and _varints(_fields(initializers[inputs[1]]), _TENSOR_DATA_TYPE) == [_TENSOR_FLOAT]
    )


def _is_one_value_block_dequantize(fields: _Fields, initializers: Mapping[str, memoryview]) -> bool:
    """A DequantizeLinear whose scale initializer is a scalar or holds one value in one dim."""
    inputs = _strings(fields, _NODE_INPUT)
    return (
        _string(fields, _NODE_OP_TYPE) == "DequantizeLinear"
        and len(inputs) > 1
        and inputs[1] in initializers
        and _varints(_fields(initializers[inputs[1]]), _TENSOR_DIMS) in ([], [1])
    )


def prepare_for_ort(model: bytes, *, free_io_shapes: bool = False) -> bytes:
    """Rewrite a serialized ONNX model so that ONNX Runtime's CPU provider runs it well.

    The maths stay the same; edits of the main graph:

    * graph inputs that are initializers, or that no node reads, are dropped: the weights
      become constants that ORT folds (dequantization, BatchNormalization into Conv), and the
      stale inputs of SFace's export need no feed;
    * every ``PRelu(x, slope)`` with a float32 slope initializer becomes
      ``slope * x + (1 - slope) * Relu(x)``, which holds for any slope; ``1 - slope`` is a
      constant expression that ORT folds at load, and ORT runs
      the per-channel products as NCHWc depthwise convolutions next to the real ones. Outputs
      differ from PRelu's by float rounding (at most 3e-7 in SFace's unit embeddings);
    * a ``DequantizeLinear`` with a ``block_size`` whose scale initializer is a scalar or a
      one-value vector (one block spanning a 1-D tensor, as in YuNet's biases) loses the
      attribute: ORT refuses to run such a scale as anything but per-tensor, which is the
      same dequantization;
    * ``free_io_shapes=True`` turns every dimension of the graph's inputs and outputs into a
      free one (ranks and element types stay), for exports that fix an input size the network
      does not need (YuNet's 640 x 640).

    A graph with control-flow ops (whose subgraphs may read outer names) is returned as is.
    """
    model_fields = _fields(memoryview(model))
    graphs = [payload for number, _, payload in model_fields if number == _MODEL_GRAPH]
    if len(graphs) != 1 or graphs[0] is None:
        raise ValueError("not an ONNX model: expected one graph")
    graph = _fields(graphs[0])
    nodes = {
        index: _fields(payload)
        for index, (number, _, payload) in enumerate(graph)
        if number == _GRAPH_NODE and payload is not None
    }
    if any(_string(fields, _NODE_OP_TYPE) in _SUBGRAPH_OPS for fields in nodes.values()):
        return model

    initializers = {
        _string(_fields(payload), _TENSOR_NAME): payload
        for number, _, payload in graph
        if number == _GRAPH_INITIALIZER and payload is not None
    }
    inputs, read = (
        {
            _string(_fields(payload), _VALUE_INFO_NAME)
            for number, _, payload in graph
            if number == wanted and payload is not None
        }
        for wanted in (_GRAPH_INPUT, _GRAPH_OUTPUT)
    )
    taken = set(initializers) | inputs | read
    for fields in nodes.values():
        read.update(_strings(fields, _NODE_INPUT))
        taken.update(_strings(fields, _NODE_INPUT), _strings(fields, _NODE_OUTPUT))

    def fresh(name: str) -> str:
        while name in taken:
            name += "_"
        taken.add(name)
        return name

    one = fresh("prepare_for_ort/one")
    edited: list[bytes | memoryview] = []
    prelus = 0
    for index, (number, encoded, payload) in enumerate(graph):
        if number in (_GRAPH_INPUT, _GRAPH_OUTPUT) and payload is not None:
            name = _string(_fields(payload), _VALUE_INFO_NAME)
            if number == _GRAPH_INPUT and (name in initializers or name not in read):
                continue
            if free_io_shapes:
                encoded = _message(number, _with_free_dims(payload))
        fields = nodes.get(index)
        if fields is not None and _is_float_prelu(fields, initializers):
            (x, slope), (y,) = _strings(fields, _NODE_INPUT), _strings(fields, _NODE_OUTPUT)
            complement, scaled, relu, rest = (
                fresh(f"{y}/prelu_{part}") for part in ("1-s", "s*x", "relu", "(1-s)*relu")
            )
            edited += [
                _node("Sub", [one, slope], complement),
                _node("Mul", [x, slope], scaled),
                _node("Relu", [x], relu),
                _node("Mul", [relu, complement], rest),
                _node("Add", [scaled, rest], y),
            ]
            prelus += 1
            continue
        if fields is not None and _is_one_value_block_dequantize(fields, initializers):
            body = b"".join(
                field
                for n, field, attribute in fields
                if n != _NODE_ATTRIBUTE
                or attribute is None
                or _string(_fields(attribute), _ATTRIBUTE_NAME) != "block_size"
            )
            encoded = _message(_GRAPH_NODE, body)
        edited.append(encoded)
    if prelus:
        edited.append(_float_scalar(one, 1.0))
    logger.debug("prepared an ONNX graph for ORT: %d PRelu rewritten", prelus)
    graph_bytes = b"".join(edited)
    return b"".join(
        _message(_MODEL_GRAPH, graph_bytes) if number == _MODEL_GRAPH else encoded
        for number, encoded, _ in model_fields
    )


def last_initializer(model: bytes) -> np.ndarray:
    """The main graph's last initializer, a float32 tensor, as a numpy array.

    insightface's ``inswapper_128.onnx`` keeps its ``emap`` (ArcFace embedding to the swapper's
    latent, ``[512, 512]``) there, and insightface reads it the same way.
    """
    graphs = [p for number, _, p in _fields(memoryview(model)) if number == _MODEL_GRAPH]
    if len(graphs) != 1 or graphs[0] is None:
        raise ValueError("not an ONNX model: expected one graph")
    tensors = [
        payload
        for number, _, payload in _fields(graphs[0])
        if number == _GRAPH_INITIALIZER and payload is not None
    ]
    if not tensors:
        raise ValueError("the ONNX graph has no initializer")
    fields = _fields(tensors[-1])
    if _varints(fields, _TENSOR_DATA_TYPE) != [_TENSOR_FLOAT]:
        raise ValueError("the ONNX graph's last initializer is not a float32 tensor")
    raw = [payload for number, _, payload in fields if number == _TENSOR_RAW_DATA and payload]
    packed = [payload for number, _, payload in fields if number == _TENSOR_FLOAT_DATA and payload]
    data = bytes(raw[-1]) if raw else b"".join(bytes(payload) for payload in packed)
    values = np.frombuffer(data, dtype="<f4").astype(np.float32)
    dims = _varints(fields, _TENSOR_DIMS)
    if values.size != int(np.prod(dims)):
        raise ValueError(f"the ONNX graph's last initializer holds {values.size} values for {dims}")
    return values.reshape(dims)
