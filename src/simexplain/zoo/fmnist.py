"""Small CNNs for Fashion-MNIST metric learning, with committed weights.

`FashionNet` maps a normalised gray image (B, 1, H, W), H, W >= 28, to a unit-norm embedding.
Its trunk halves the resolution twice, so a 28x28 item gives a 7x7 feature map and a 28x56
side-by-side composite a 7x14 one. The trunk's last block is the submodule ``features``
(the explained layer); the head is ``pool`` (global average or max) -> flatten -> ``embed``
(a linear map without bias, so the whole embedding comes from the feature map's positions)
-> L2 normalisation. The head uses nothing but the output of ``features``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError, SimexplainError
from ..images import Preprocess

# Mean and std of the Fashion-MNIST training images (pixel values scaled to [0, 1]).
FMNIST_MEAN = 0.2860
FMNIST_STD = 0.3530
# GAP and GMP heads pool over positions: any input of at least 28 px keeps its shape
FMNIST_PREPROCESS = Preprocess(size=(28, 28), mean=(FMNIST_MEAN,), std=(FMNIST_STD,),
                               grayscale=True, keep_aspect=True)
HEADS = ("gap", "gmp")
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
EXPLAINED_LAYER = "features"


def conv_block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class FashionNet(nn.Module):
    """Conv trunk (28 px -> 7x7 grid) + ``features`` block + pooled linear embedding."""

    def __init__(self, head: str = "gap", embedding_dim: int = 64, width: int = 32):
        super().__init__()
        if head not in HEADS:
            raise SimexplainError(f"unknown head {head!r}: use one of {', '.join(HEADS)}")
        self.head = head
        self.embedding_dim = embedding_dim
        w = width
        self.trunk = nn.Sequential(
            conv_block(1, w),              # 28 x 28
            conv_block(w, w),
            conv_block(w, 2 * w, 2),       # 14 x 14
            conv_block(2 * w, 2 * w),
            conv_block(2 * w, 4 * w, 2),   # 7 x 7
        )
        self.features = conv_block(4 * w, 4 * w)  # the explained layer: (B, 4w, H/4, W/4)
        self.pool = nn.AdaptiveAvgPool2d(1) if head == "gap" else nn.AdaptiveMaxPool2d(1)
        self.embed = nn.Linear(4 * w, embedding_dim, bias=False)

    @property
    def channels(self) -> int:
        return self.embed.in_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.trunk(x))

    def forward_head(self, feature_map: torch.Tensor) -> torch.Tensor:
        pooled = torch.flatten(self.pool(feature_map), 1)
        return F.normalize(self.embed(pooled), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 1:
            raise ModelError(
                f"FashionNet expects gray images of shape (B, 1, H, W), got {tuple(x.shape)}")
        if x.shape[-2] < 28 or x.shape[-1] < 28:
            raise ModelError(
                f"FashionNet needs images of at least 28x28 pixels, got "
                f"{x.shape[-2]}x{x.shape[-1]}")
        return self.forward_head(self.forward_features(x))


def weights_path(head: str) -> Path:
    return WEIGHTS_DIR / f"fmnist-{head}.pt"


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint written by `simexplain.training.train_fmnist`."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(
            f"Fashion-MNIST weights not found: {path}. Train them with "
            f"`simexplain train fmnist --head <gap|gmp|vit> --out {path}`.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise ModelError(f"{path}: cannot read weights ({exc})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ModelError(f"{path}: not a simexplain Fashion-MNIST checkpoint")
    return checkpoint


def float_state(state: dict) -> dict:
    """A state dict with its floating-point tensors in float32 (the ViT and sketch weights
    are stored in half precision to keep the committed files small)."""
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def model_from_checkpoint(checkpoint: dict, source: str | Path = "checkpoint") -> FashionNet:
    model = FashionNet(head=checkpoint.get("head", "gap"),
                       embedding_dim=int(checkpoint.get("embedding_dim", 64)),
                       width=int(checkpoint.get("width", 32)))
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as exc:
        raise ModelError(f"{source}: weights do not fit FashionNet ({exc})") from None
    return model.eval()


def load_fmnist(head: str = "gap", path: str | Path | None = None) -> FashionNet:
    """The trained FashionNet with the given head (committed weights), in eval mode."""
    if head not in HEADS:
        raise SimexplainError(f"unknown head {head!r}: use one of {', '.join(HEADS)}")
    path = Path(path) if path is not None else weights_path(head)
    checkpoint = load_checkpoint(path)
    if checkpoint.get("head", head) != head:
        raise ModelError(f"{path}: holds a {checkpoint.get('head')!r} model, not {head!r}")
    return model_from_checkpoint(checkpoint, path)
