"""A small, dependency-free reader for frozen TensorFlow graphs (``GraphDef`` ``.pb`` files).

Only the protobuf *wire format* is needed to read a frozen graph: a message is a sequence of
``(tag, value)`` records, where ``tag = field_number << 3 | wire_type`` is a varint and the
wire type says how the value is stored (0 varint, 1 fixed 8 bytes, 2 length-prefixed bytes,
5 fixed 4 bytes).  This module decodes the handful of messages a frozen graph uses:

* ``GraphDef``          node = 1 (repeated NodeDef); other fields are skipped
* ``NodeDef``           name = 1, op = 2, input = 3, device = 4, attr = 5 (map<string, AttrValue>)
* ``AttrValue``         list = 1, s = 2, i = 3, f = 4, b = 5, type = 6, shape = 7, tensor = 8
* ``AttrValue.ListValue`` s = 2, i = 3, f = 4, b = 5, type = 6, shape = 7, tensor = 8
* ``TensorProto``       dtype = 1, tensor_shape = 2, tensor_content = 4, float_val = 5,
  double_val = 6, int_val = 7, string_val = 8, int64_val = 10, bool_val = 11, half_val = 13
* ``TensorShapeProto``  dim = 2 (Dim.size = 1), unknown_rank = 3

Usage::

    graph = read_graphdef("graph_final.pb")
    graph.nodes["InceptionResnetV1/Conv2d_1a_3x3/weights"].op      # 'Const'
    graph.constant("InceptionResnetV1/Conv2d_1a_3x3/weights").shape  # (3, 3, 3, 32)

Attribute values are returned as plain Python values: ``s`` as ``str`` (``bytes`` when it is
not UTF-8), ``i`` as ``int``, ``f`` as ``float``, ``b`` as ``bool``, ``type`` as a
:class:`DType`, ``shape`` as a tuple (``None`` for unknown rank, ``-1`` for unknown sizes),
``tensor`` as a :class:`Tensor` (decoded lazily by :meth:`Tensor.numpy`) and ``list`` as a list.

Every problem with the file (missing, unreadable, truncated, not a GraphDef at all) raises
:class:`GraphDefError`, whose message names the file and what is wrong.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

from ..errors import ModelError
from .protobuf import (FIXED32 as _FIXED32, FIXED64 as _FIXED64, LEN as _LEN, VARINT as _VARINT,
                       WireError as _WireError, expect as _expect, fields as _fields,
                       packed_varints as _packed_varints, signed64 as _signed64, text as _text)

__all__ = ["GraphDefError", "DType", "Tensor", "Node", "Graph", "read_graphdef", "parse_graphdef"]


class GraphDefError(ModelError):
    """A TensorFlow GraphDef file is missing, truncated or not a GraphDef."""


# --------------------------------------------------------------------------- data types

class DType(int):
    """A TensorFlow ``DataType`` enum value; ``int`` with a readable name and numpy dtype."""

    _NAMES = {
        1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8",
        7: "string", 8: "complex64", 9: "int64", 10: "bool", 11: "qint8", 12: "quint8",
        13: "qint32", 14: "bfloat16", 15: "qint16", 16: "quint16", 17: "uint16",
        18: "complex128", 19: "float16", 20: "resource", 21: "variant", 22: "uint32",
        23: "uint64",
    }
    _NUMPY: dict[int, DTypeLike] = {
        1: "<f4", 2: "<f8", 3: "<i4", 4: "u1", 5: "<i2", 6: "i1", 7: object, 8: "<c8",
        9: "<i8", 10: "?", 11: "i1", 12: "u1", 13: "<i4", 15: "<i2", 16: "<u2", 17: "<u2",
        18: "<c16", 19: "<f2", 22: "<u4", 23: "<u8",
    }

    @property
    def base(self) -> int:
        """The value without the reference flag (TF adds 100 for ``*_REF`` types)."""
        return int(self) - 100 if int(self) > 100 else int(self)

    @property
    def name(self) -> str:
        name = self._NAMES.get(self.base, f"dtype{self.base}")
        return name + "_ref" if int(self) > 100 else name

    @property
    def numpy(self) -> np.dtype:
        code = self._NUMPY.get(self.base)
        if code is None:
            raise ValueError(f"TensorFlow dtype {self.name} has no numpy equivalent")
        return np.dtype(code)

    def __repr__(self) -> str:
        return f"DType({self.name})"

    __str__ = __repr__


# --------------------------------------------------------------------------- messages

@dataclass
class Tensor:
    """A ``TensorProto``: dtype, shape and (lazily decoded) values."""

    dtype: DType
    shape: tuple[int, ...] | None
    _data: bytes = field(repr=False, default=b"")
    _content: tuple[int, int] | None = field(repr=False, default=None)
    _values: list[Any] = field(repr=False, default_factory=list)
    _packed: list[tuple[str, tuple[int, int]]] = field(repr=False, default_factory=list)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1

    def numpy(self) -> np.ndarray:
        """The values as a numpy array of the tensor's dtype and shape (read-only view)."""
        dtype = self.dtype.numpy
        shape = tuple(self.shape) if self.shape is not None else ()
        count = int(np.prod(shape)) if shape else 1
        if self._content is not None:
            start, stop = self._content
            nbytes = stop - start
            if dtype.kind == "O" or nbytes != count * dtype.itemsize:
                raise ValueError(
                    f"tensor_content holds {nbytes} bytes, but shape {shape} of {self.dtype.name}"
                    f" needs {count * dtype.itemsize}")
            array = np.frombuffer(self._data, dtype=dtype, count=count, offset=start)
            return array.reshape(shape)
        values: list[Any] = list(self._values)
        for kind, span in self._packed:
            values.extend(self._decode_packed(kind, span))
        if self.dtype.base == 19:  # half_val holds the 16-bit patterns as int32 varints
            array = np.asarray(values, dtype="<u2").view("<f2")
        else:
            array = np.asarray(values, dtype=dtype)
        if array.size == count:
            return array.reshape(shape)
        if array.size == 0:  # all-default tensor
            return np.zeros(shape, dtype=dtype)
        if array.size < count:  # TF repeats the last value to fill the shape
            filled = np.empty(count, dtype=array.dtype)
            filled[:array.size] = array
            filled[array.size:] = array[-1]
            return filled.reshape(shape)
        raise ValueError(f"tensor has {array.size} values but its shape {shape} holds {count}")

    def _decode_packed(self, kind: str, span: tuple[int, int]) -> list[Any]:
        data = self._data
        raw = bytes(data[span[0]:span[1]])
        if kind == "f4":
            return np.frombuffer(raw, dtype="<f4").tolist()
        if kind == "f8":
            return np.frombuffer(raw, dtype="<f8").tolist()
        ints = _packed_varints(data, span)
        if kind == "signed":
            return [_signed64(v) for v in ints]
        if kind == "bool":
            return [bool(v) for v in ints]
        return ints  # "unsigned"


@dataclass
class Node:
    """One ``NodeDef``: name, op type, input names (``^name`` for control inputs), attrs."""

    name: str
    op: str
    inputs: list[str] = field(default_factory=list)
    device: str = ""
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def data_inputs(self) -> list[str]:
        """Input node names without control inputs and without ``:output_index`` suffixes."""
        out = []
        for name in self.inputs:
            if name.startswith("^"):
                continue
            base, sep, index = name.rpartition(":")
            out.append(base if sep and index.isdigit() else name)
        return out


@dataclass
class Graph:
    """A parsed GraphDef: ``nodes`` maps node name to :class:`Node`, in file order."""

    nodes: dict[str, Node]
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.nodes)

    def __contains__(self, name: str) -> bool:
        return name in self.nodes

    def node(self, name: str) -> Node:
        try:
            return self.nodes[name]
        except KeyError:
            raise GraphDefError(f"{self._where()}: no node named {name!r}") from None

    def constant(self, name: str) -> np.ndarray:
        """The value of the ``Const`` node ``name`` as a numpy array (right dtype and shape)."""
        node = self.node(name)
        tensor = node.attrs.get("value")
        if node.op != "Const" or not isinstance(tensor, Tensor):
            raise GraphDefError(f"{self._where()}: node {name!r} is a {node.op}, not a constant")
        try:
            return tensor.numpy()
        except ValueError as exc:
            raise GraphDefError(f"{self._where()}: constant {name!r}: {exc}") from None

    def ops(self) -> dict[str, int]:
        """How many nodes of each op type the graph holds."""
        counts: dict[str, int] = {}
        for node in self.nodes.values():
            counts[node.op] = counts.get(node.op, 0) + 1
        return counts

    def consumers(self, name: str) -> list[Node]:
        """The nodes that take ``name`` as a data input."""
        return [node for node in self.nodes.values() if name in node.data_inputs]

    def _where(self) -> str:
        return str(self.path) if self.path is not None else "GraphDef"


class _Parser:
    def __init__(self, data: bytes):
        self.data = data

    def graph(self) -> dict[str, Node]:
        data = self.data
        nodes: dict[str, Node] = {}
        for number, wire, value in _fields(data, 0, len(data)):
            if number == 1:
                _expect(wire, _LEN, "GraphDef.node", 0)
                node = self.node(value)
                if node.name in nodes:
                    raise _WireError(f"two nodes are named {node.name!r}", value[0])
                nodes[node.name] = node
            # library (2), version (3), versions (4), debug info (5): not needed here
        return nodes

    def node(self, span: tuple[int, int]) -> Node:
        data = self.data
        name = op = device = None
        inputs: list[str] = []
        attrs: dict[str, Any] = {}
        for number, wire, value in _fields(data, span[0], span[1]):
            if number == 1:
                _expect(wire, _LEN, "NodeDef.name", span[0])
                name = _text(data, value, "a node name")
            elif number == 2:
                _expect(wire, _LEN, "NodeDef.op", span[0])
                op = _text(data, value, "an op name")
            elif number == 3:
                _expect(wire, _LEN, "NodeDef.input", span[0])
                inputs.append(_text(data, value, "a node input"))
            elif number == 4:
                _expect(wire, _LEN, "NodeDef.device", span[0])
                device = _text(data, value, "a device name")
            elif number == 5:
                _expect(wire, _LEN, "NodeDef.attr", span[0])
                key, attr = self.attr_entry(value)
                attrs[key] = attr
        if not name:
            raise _WireError("a node has no name", span[0])
        if not op or not op.replace("_", "a").replace(">", "a").replace(".", "a").isalnum():
            raise _WireError(f"node {name[:60]!r} has no valid op type", span[0])
        return Node(name=name, op=op, inputs=inputs, device=device or "", attrs=attrs)

    def attr_entry(self, span: tuple[int, int]) -> tuple[str, Any]:
        key = ""
        value: Any = None
        for number, wire, item in _fields(self.data, span[0], span[1]):
            if number == 1:
                _expect(wire, _LEN, "an attribute key", span[0])
                key = _text(self.data, item, "an attribute key")
            elif number == 2:
                _expect(wire, _LEN, "an attribute value", span[0])
                value = self.attr_value(item)
        return key, value

    def attr_value(self, span: tuple[int, int]) -> Any:
        data = self.data
        value: Any = None
        for number, wire, item in _fields(data, span[0], span[1]):
            if number == 1:
                _expect(wire, _LEN, "AttrValue.list", span[0])
                value = self.list_value(item)
            elif number == 2:
                _expect(wire, _LEN, "AttrValue.s", span[0])
                value = self.string(item)
            elif number == 3:
                _expect(wire, _VARINT, "AttrValue.i", span[0])
                value = _signed64(item)
            elif number == 4:
                _expect(wire, _FIXED32, "AttrValue.f", span[0])
                value = struct.unpack("<f", item.to_bytes(4, "little"))[0]
            elif number == 5:
                _expect(wire, _VARINT, "AttrValue.b", span[0])
                value = bool(item)
            elif number == 6:
                _expect(wire, _VARINT, "AttrValue.type", span[0])
                value = DType(item)
            elif number == 7:
                _expect(wire, _LEN, "AttrValue.shape", span[0])
                value = self.shape(item)
            elif number == 8:
                _expect(wire, _LEN, "AttrValue.tensor", span[0])
                value = self.tensor(item)
            elif number == 9:
                _expect(wire, _LEN, "AttrValue.placeholder", span[0])
                value = _text(data, item, "an attribute placeholder")
            # func (10) is not needed for frozen graphs
        return value

    def list_value(self, span: tuple[int, int]) -> list[Any]:
        data = self.data
        out: list[Any] = []
        for number, wire, item in _fields(data, span[0], span[1]):
            if number == 2:
                _expect(wire, _LEN, "ListValue.s", span[0])
                out.append(self.string(item))
            elif number in (3, 5, 6):  # int64 / bool / DataType, packed or not
                _expect(wire, (_VARINT, _LEN), "a list attribute", span[0])
                ints = _packed_varints(data, item) if wire == _LEN else [item]
                if number == 3:
                    out.extend(_signed64(v) for v in ints)
                elif number == 5:
                    out.extend(bool(v) for v in ints)
                else:
                    out.extend(DType(v) for v in ints)
            elif number == 4:  # float, packed or not
                _expect(wire, (_FIXED32, _LEN), "ListValue.f", span[0])
                if wire == _LEN:
                    if (item[1] - item[0]) % 4:
                        raise _WireError("a packed float list has a partial value", item[0])
                    out.extend(np.frombuffer(bytes(data[item[0]:item[1]]), "<f4").tolist())
                else:
                    out.append(struct.unpack("<f", item.to_bytes(4, "little"))[0])
            elif number == 7:
                _expect(wire, _LEN, "ListValue.shape", span[0])
                out.append(self.shape(item))
            elif number == 8:
                _expect(wire, _LEN, "ListValue.tensor", span[0])
                out.append(self.tensor(item))
        return out

    def string(self, span: tuple[int, int]) -> str | bytes:
        raw = bytes(self.data[span[0]:span[1]])
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw

    def shape(self, span: tuple[int, int]) -> tuple[int, ...] | None:
        dims: list[int] = []
        unknown_rank = False
        for number, wire, item in _fields(self.data, span[0], span[1]):
            if number == 2:
                _expect(wire, _LEN, "TensorShapeProto.dim", span[0])
                size = 0
                for n2, w2, v2 in _fields(self.data, item[0], item[1]):
                    if n2 == 1:
                        _expect(w2, _VARINT, "Dim.size", item[0])
                        size = _signed64(v2)
                dims.append(size)
            elif number == 3:
                _expect(wire, _VARINT, "TensorShapeProto.unknown_rank", span[0])
                unknown_rank = bool(item)
        return None if unknown_rank else tuple(dims)

    # (field number) -> (kind of packed data, allowed unpacked wire type)
    _TENSOR_VALUES = {
        5: ("f4", _FIXED32), 6: ("f8", _FIXED64), 7: ("signed", _VARINT),
        10: ("signed", _VARINT), 11: ("bool", _VARINT), 13: ("signed", _VARINT),
        16: ("unsigned", _VARINT), 17: ("unsigned", _VARINT),
    }

    def tensor(self, span: tuple[int, int]) -> Tensor:
        data = self.data
        tensor = Tensor(dtype=DType(0), shape=(), _data=data)
        for number, wire, item in _fields(data, span[0], span[1]):
            if number == 1:
                _expect(wire, _VARINT, "TensorProto.dtype", span[0])
                tensor.dtype = DType(item)
            elif number == 2:
                _expect(wire, _LEN, "TensorProto.tensor_shape", span[0])
                tensor.shape = self.shape(item)
            elif number == 4:
                _expect(wire, _LEN, "TensorProto.tensor_content", span[0])
                tensor._content = item
            elif number == 8:
                _expect(wire, _LEN, "TensorProto.string_val", span[0])
                tensor._values.append(bytes(data[item[0]:item[1]]))
            elif number in self._TENSOR_VALUES:
                kind, single = self._TENSOR_VALUES[number]
                _expect(wire, (single, _LEN), "a TensorProto value", span[0])
                if wire == _LEN:
                    size = {"f4": 4, "f8": 8}.get(kind)
                    if size and (item[1] - item[0]) % size:
                        raise _WireError("a packed tensor value list has a partial value",
                                         item[0])
                    tensor._packed.append((kind, item))
                elif kind == "f4":
                    tensor._values.append(struct.unpack("<f", item.to_bytes(4, "little"))[0])
                elif kind == "f8":
                    tensor._values.append(struct.unpack("<d", item.to_bytes(8, "little"))[0])
                elif kind == "signed":
                    tensor._values.append(_signed64(item))
                elif kind == "bool":
                    tensor._values.append(bool(item))
                else:
                    tensor._values.append(item)
        if tensor.dtype == 0:
            raise _WireError("a tensor has no dtype", span[0])
        return tensor


def parse_graphdef(data: bytes, source: str | Path = "<bytes>") -> Graph:
    """Parse serialized GraphDef bytes; ``source`` names them in error messages."""
    data = bytes(data)
    if not data:
        raise GraphDefError(f"{source}: the file is empty, not a TensorFlow GraphDef")
    try:
        nodes = _Parser(data).graph()
    except _WireError as exc:
        if exc.truncated:
            raise GraphDefError(
                f"{source}: not a complete TensorFlow GraphDef: {exc.message} (byte {exc.offset}"
                f" of {len(data)}); the file is truncated or is not a GraphDef") from None
        raise GraphDefError(
            f"{source}: not a TensorFlow GraphDef: {exc.message} (byte {exc.offset})") from None
    except RecursionError:  # pragma: no cover - messages here are only a few levels deep
        raise GraphDefError(f"{source}: not a TensorFlow GraphDef (nested too deeply)") from None
    if not nodes:
        raise GraphDefError(f"{source}: not a TensorFlow GraphDef: it contains no graph nodes")
    for node in nodes.values():
        for name in node.data_inputs:
            if name not in nodes:
                raise GraphDefError(
                    f"{source}: incomplete TensorFlow GraphDef: node {node.name!r} takes input "
                    f"{name!r}, which is not in the file (truncated or not a GraphDef?)")
    return Graph(nodes=nodes, path=Path(source) if not isinstance(source, Path) else source)


def read_graphdef(path: str | Path) -> Graph:
    """Read a frozen TensorFlow graph (``.pb``) from ``path``.

    Raises :class:`GraphDefError` when the file is missing, unreadable, truncated or not a
    GraphDef.
    """
    path = Path(path)
    if not path.exists():
        raise GraphDefError(f"{path}: GraphDef file not found")
    if not path.is_file():
        raise GraphDefError(f"{path}: is not a file (expected a TensorFlow GraphDef .pb)")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise GraphDefError(f"{path}: cannot read the GraphDef file ({exc.strerror or exc})") \
            from None
    return parse_graphdef(data, path)
