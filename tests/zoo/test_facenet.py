"""FaceNet rebuilt from the frozen TF graph: structure, fidelity to OpenCV, real face photos."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from simexplain.datasets import face_photos
from simexplain.errors import ImageError

from simexplain.zoo.facenet import (
    DEFAULT_LAYER, FACENET_PREPROCESS, Prewhiten, build_facenet, default_pb_path)


@pytest.fixture(scope="module")
def model():
    return build_facenet()


@pytest.fixture(scope="module")
def inputs() -> torch.Tensor:
    """Three deterministic 160x160 'photos': smooth colour fields with some texture."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:160, 0:160] / 160.0
    images = []
    for _ in range(3):
        a, b, c = rng.uniform(0.5, 3.0, 3)
        base = np.stack([np.sin(a * np.pi * xx + c), np.cos(b * np.pi * yy),
                         np.sin(a * xx * yy * 4)], axis=0)
        noisy = 0.5 + 0.3 * base + 0.1 * rng.standard_normal((3, 160, 160))
        images.append(np.clip(noisy, 0, 1))
    return torch.tensor(np.stack(images), dtype=torch.float32)


def _layer_output(model, x):
    captured = {}
    layer = dict(model.named_modules())[DEFAULT_LAYER]
    handle = layer.register_forward_hook(lambda m, i, o: captured.setdefault("a", o))
    try:
        with torch.no_grad():
            e = model(x)
    finally:
        handle.remove()
    return captured["a"], e


def test_embedding_shape_and_norm(model, inputs):
    assert not model.training
    with torch.no_grad():
        e = model(inputs)
    assert e.shape == (3, 512)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(3), atol=1e-5, rtol=0)
    with torch.no_grad():  # batched and single forward agree (BN in eval mode)
        single = model(inputs[1:2])
    torch.testing.assert_close(single[0], e[1], atol=1e-5, rtol=0)


def test_named_layer_and_head(model, inputs):
    a, e = _layer_output(model, inputs[:1])
    assert a.dim() == 4 and tuple(a.shape) == (1, 1792, 3, 3)
    children = [name for name, _ in model.named_children()]
    assert children[-4:] == [DEFAULT_LAYER, "avgpool", "last_linear", "last_bn"]
    assert isinstance(model.avgpool, torch.nn.AdaptiveAvgPool2d)
    assert model.last_linear.in_features == 1792 and model.last_linear.bias is None
    assert isinstance(model.last_bn, torch.nn.BatchNorm1d)
    with torch.no_grad():  # the head alone reproduces the embedding from the layer output
        head = model.last_bn(model.last_linear(torch.flatten(model.avgpool(a), 1)))
    torch.testing.assert_close(torch.nn.functional.normalize(head, dim=1), e, atol=1e-6, rtol=0)


@pytest.mark.parametrize("size,grid", [(224, 5), (320, 8)])
def test_larger_inputs_give_finer_grids(model, size, grid):
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(size))
    a, e = _layer_output(model, x)
    assert tuple(a.shape) == (1, 1792, grid, grid)
    assert e.shape == (1, 512)


def test_prewhiten_matches_facenet_formula(inputs):
    x = inputs[0].numpy().transpose(1, 2, 0) * 255.0  # HWC, 0..255 as FaceNet reads it
    std_adj = max(x.std(), 1.0 / np.sqrt(x.size))
    expected = ((x - x.mean()) / std_adj).transpose(2, 0, 1)
    got = Prewhiten()(inputs[:1])[0].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)
    flat = Prewhiten()(torch.full((1, 3, 8, 8), 0.5))  # constant image: no division by zero
    assert torch.isfinite(flat).all()


def test_matches_opencv_where_opencv_reads_the_graph(model, inputs):
    """A second, outside reader of the same graph. Measured: OpenCV 5 has no TensorFlow
    importer, and 4.8-4.14 (the locked one included) refuse this graph in their graph
    simplifier; the test asserts that refusal, and compares the embeddings as soon as an
    OpenCV reads the graph. test_matches_an_independent_interpreter_of_the_graph is the
    cross-check that runs on every OpenCV."""
    import cv2
    if not hasattr(cv2.dnn, "readNetFromTensorflow"):
        assert int(cv2.__version__.split(".")[0]) >= 5, "only OpenCV 5 lacks the importer"
        return
    try:
        net = cv2.dnn.readNetFromTensorflow(str(default_pb_path()))
    except cv2.error as exc:
        assert "simplifySubgraphs" in str(exc), f"an unexpected refusal: {exc}"
        return
    with torch.no_grad():
        ours = model(inputs).numpy()
        whitened = model.prewhiten(inputs).numpy()
    for i in range(len(inputs)):  # the graph's flatten is hard-wired to batch size 1
        net.setInput(whitened[i:i + 1])
        theirs = net.forward("embeddings").reshape(-1)
        assert np.abs(theirs - ours[i]).max() < 1e-4
        cosine = float(theirs @ ours[i] / np.linalg.norm(theirs) / np.linalg.norm(ours[i]))
        assert cosine > 0.9999


def _run_graph(graph, image_nhwc: np.ndarray, output: str = "embeddings") -> np.ndarray:
    """Execute the frozen TF graph node by node with TF's own op semantics (NHWC, SAME/VALID
    padding as TF computes it): a reference that depends on neither OpenCV nor our rebuilt
    nn.Module (only on the GraphDef reader, tested in test_graphdef.py)."""
    import torch.nn.functional as F

    def same_pad(size, kernel, stride):
        total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
        return total // 2, total - total // 2

    def windows(x, node, kernel_hw, fill):
        _, sh, sw, _ = node.attrs["strides"]
        if node.attrs["padding"] == "SAME":
            top, bottom = same_pad(x.shape[2], kernel_hw[0], sh)
            left, right = same_pad(x.shape[3], kernel_hw[1], sw)
            x = F.pad(x, (left, right, top, bottom), value=fill)
        return x, (sh, sw)

    values: dict[str, torch.Tensor] = {}

    def value(name):
        if name not in values:
            node = graph.nodes[name]
            args = [value(i) for i in node.data_inputs]
            values[name] = evaluate(node, args)
        return values[name]

    def evaluate(node, args):
        op = node.op
        if op == "Placeholder":
            return torch.from_numpy(image_nhwc)
        if op == "Const":
            return torch.from_numpy(np.array(graph.constant(node.name)))
        if op == "Conv2D":  # NHWC input, HWIO kernel
            x = args[0].permute(0, 3, 1, 2)
            kernel = args[1].permute(3, 2, 0, 1)
            x, stride = windows(x, node, kernel.shape[2:], 0.0)
            return F.conv2d(x, kernel, stride=stride).permute(0, 2, 3, 1)
        if op in ("MaxPool", "AvgPool"):
            x = args[0].permute(0, 3, 1, 2)
            size = tuple(node.attrs["ksize"][1:3])
            if op == "MaxPool":
                x, stride = windows(x, node, size, float("-inf"))
                y = F.max_pool2d(x, size, stride)
            else:
                assert node.attrs["padding"] == "VALID"
                y = F.avg_pool2d(x, size, tuple(node.attrs["strides"][1:3]))
            return y.permute(0, 2, 3, 1)
        if op == "BiasAdd" or op == "Add":
            return args[0] + args[1]
        if op == "Mul":
            return args[0] * args[1]
        if op == "Relu":
            return args[0].clamp_min(0)
        if op == "ConcatV2":
            return torch.cat(args[:-1], dim=int(args[-1]))
        if op == "Reshape":
            return args[0].reshape([int(v) for v in args[1].reshape(-1)])
        if op == "MatMul":
            return args[0] @ args[1]
        if op == "FusedBatchNorm":  # inference form, NHWC (channels last)
            x, scale, offset, mean, var = args
            return (x - mean) * torch.rsqrt(var + node.attrs["epsilon"]) * scale + offset
        if op == "Square":
            return args[0] ** 2
        if op == "Sum":
            return args[0].sum(dim=[int(d) for d in args[1].reshape(-1)],
                               keepdim=bool(node.attrs["keep_dims"]))
        if op == "Maximum":
            return torch.maximum(args[0], args[1])
        if op == "Rsqrt":
            return torch.rsqrt(args[0])
        raise AssertionError(f"op {op} ({node.name}) is not in the reference interpreter")

    with torch.no_grad():
        return value(output).numpy()


def test_matches_an_independent_interpreter_of_the_graph(model, inputs):
    """The rebuilt model against the frozen graph itself, executed op by op: the cross-check
    that does not depend on an OpenCV release having a TensorFlow importer."""
    from simexplain.zoo.graphdef import read_graphdef
    graph = read_graphdef(default_pb_path())
    with torch.no_grad():
        ours = model(inputs).numpy()
        whitened = model.prewhiten(inputs).numpy()
    for i in range(len(inputs)):  # the graph's flatten is hard-wired to batch size 1
        nhwc = np.ascontiguousarray(whitened[i:i + 1].transpose(0, 2, 3, 1))
        theirs = _run_graph(graph, nhwc).reshape(-1)
        assert np.abs(theirs - ours[i]).max() < 1e-4
        cosine = float(theirs @ ours[i] / np.linalg.norm(theirs) / np.linalg.norm(ours[i]))
        assert cosine > 0.9999


def test_conversion_from_scratch_and_cache(model, tmp_path):
    cache_file = tmp_path / "facenet.pt"
    fresh = build_facenet(cache=cache_file)  # parses the .pb (the cache file does not exist)
    assert cache_file.is_file()
    again = build_facenet(cache=cache_file)  # loads the cache
    reference = model.state_dict()
    for key, value in again.state_dict().items():
        torch.testing.assert_close(value, reference[key], atol=0, rtol=0)
        torch.testing.assert_close(fresh.state_dict()[key], value, atol=0, rtol=0)
    cache_file.write_bytes(b"garbage")  # a corrupt cache is rebuilt, not an error
    build_facenet(cache=cache_file)
    assert cache_file.stat().st_size > 1_000_000


def test_missing_pb_is_a_model_error(tmp_path):
    from simexplain.errors import ModelError
    with pytest.raises(ModelError, match="missing.pb"):
        build_facenet(tmp_path / "missing.pb", cache=False)


# ------------------------------------------------------------------------------ face photos

@pytest.fixture(scope="module")
def photos():
    # fetched by the set-up (make test); missing photos are a failure, not a reason to skip
    found = face_photos()
    assert {"obama", "obama2", "biden"} <= set(found), sorted(found)
    return found


def _identity(name: str) -> str:
    try:
        from simexplain.datasets import face_identity
        return face_identity(name)
    except ImportError:
        return "obama" if name == "32bit" else name.split("_")[0].rstrip("0123456789")


def test_face_photos_same_identity_is_closer(model, photos):
    from simexplain.faces import crop_face
    names, crops = [], []
    for name, path in photos.items():
        image = Image.open(path)
        face, (top, left, bottom, right) = crop_face(image, margin=0.2, size=160)
        assert face.size == (160, 160)
        assert 0 <= top < bottom <= image.height and 0 <= left < right <= image.width
        names.append(name)
        crops.append(FACENET_PREPROCESS(face))
    with torch.no_grad():
        embeddings = dict(zip(names, model(torch.stack(crops))))

    def dist(a, b):
        return float((embeddings[a] - embeddings[b]).norm())

    assert dist("obama", "obama2") < dist("obama", "biden")
    same, different = [], []
    for a, b in itertools.combinations(sorted(embeddings), 2):
        (same if _identity(a) == _identity(b) else different).append((dist(a, b), a, b))
    assert same and different
    # Measured: same-identity pairs 0.09..0.89, Obama-Biden pairs 1.10..1.29.
    assert max(same)[0] < min(different)[0], (max(same), min(different))


def test_crop_face_without_a_face_raises():
    from simexplain.faces import crop_face, detect_faces
    blank = Image.new("RGB", (200, 160), (128, 128, 128))
    assert detect_faces(blank) == []
    with pytest.raises(ImageError, match="no face found"):
        crop_face(blank)


def test_mtcnn_detects_the_faces_with_the_installed_opencv(photos):
    """MTCNN (not the Haar fallback) runs on the installed OpenCV: on the locked 4.x and on
    OpenCV 5, which has no Haar cascade files (`make upgrade-check` runs this on the newest)."""
    import cv2
    from simexplain.faces import detect_faces, detector_name
    assert detector_name() == "mtcnn", f"MTCNN unusable with OpenCV {cv2.__version__}"
    for name in ("obama", "obama2", "biden"):
        image = Image.open(photos[name])
        faces = detect_faces(image)
        assert faces, name
        face = faces[0]  # the largest (a photo may hold a small face in the background)
        assert face.confidence > 0.99
        # a face, not the whole photo: between 2% and 60% of the picture, eyes inside the box
        assert 0.02 < face.area / (image.width * image.height) < 0.6
        for x, y in (face.keypoints["left_eye"], face.keypoints["right_eye"]):
            assert face.left <= x < face.right and face.top <= y < face.bottom
