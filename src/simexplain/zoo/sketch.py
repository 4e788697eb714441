"""A two-stream sketch-to-item model on Fashion-MNIST (`fmnist-sketch`), weights trained here.

Stream A sees an edge sketch of an item: the item's edges (Sobel gradient magnitude, our own
code), moved by a random affine map T (rotation, scale, shift) whose matrix is recorded, so the
point of the item under any sketch pixel is known exactly (T maps item pixels to sketch pixels,
continuous (row, col) coordinates as in `simexplain.geometry`). Stream B sees
the grey item. The streams are two `FashionNet`s (GAP head, linear, L2) with their own weights;
both explain the layer ``features`` (a 7x7 grid at 28 px). Trained by
`simexplain train sketch` (`simexplain.training.train_sketch`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import ModelError
from ..images import Preprocess
from .fmnist import (EXPLAINED_LAYER, FMNIST_PREPROCESS, WEIGHTS_DIR, FashionNet, float_state,
                     load_checkpoint)

NAME = "fmnist-sketch"
WEIGHTS = WEIGHTS_DIR / f"{NAME}.pt"
SIZE = 28
# The sketch stream's input normalisation (pixel values scaled to [0, 1]), fixed before
# training and trained with; the training sketches' own mean and std are 0.27 and 0.34.
SKETCH_MEAN = 0.12
SKETCH_STD = 0.27
SKETCH_PREPROCESS = Preprocess(size=(SIZE, SIZE), mean=(SKETCH_MEAN,), std=(SKETCH_STD,),
                               grayscale=True, keep_aspect=True)
ITEM_PREPROCESS = FMNIST_PREPROCESS
LAYER = EXPLAINED_LAYER
# The random geometric change of a sketch (see `random_transform`).
MAX_ROTATION = 15.0  # degrees
SCALE = (0.85, 1.15)
SHIFT = 0.08  # fraction of the side
DEFAULT_WIDTH = 16
_SOBEL = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 4


def edges(items: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W) items -> uint8 (N, H, W) edge strength: the Sobel gradient magnitude of
    the item in [0, 1] (zero outside), doubled and clipped, as white lines on black."""
    x = torch.from_numpy(np.array(items, dtype=np.float32)).div(255.0).unsqueeze(1)
    kernels = torch.stack([_SOBEL, _SOBEL.T]).unsqueeze(1)  # d/dcol, d/drow
    gradient = F.conv2d(x, kernels, padding=1)
    magnitude = gradient.pow(2).sum(1).sqrt()
    return (magnitude * 2.0).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()


def random_transform(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """A random 3x3 affine T (item pixels -> sketch pixels): rotation within +-MAX_ROTATION
    degrees, scale in SCALE, shift within SHIFT of the side, no mirroring."""
    from ..geometry import random_affine
    return random_affine(rng, size, max_rotation=MAX_ROTATION, scale=SCALE, shift=SHIFT,
                         flip=False)


def draw_sketch(item_edges: np.ndarray, t: np.ndarray) -> np.ndarray:
    """uint8 (H, W) sketch: the item's edges (from `edges`) warped by T (black outside)."""
    from ..geometry import warp
    size = item_edges.shape[0]
    return np.asarray(warp(Image.fromarray(item_edges), t, size))


def sketches(items: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 (N, H, W) sketches, (N, 3, 3) transforms T) of uint8 items, one random T each."""
    lines = edges(items)
    transforms = np.stack([random_transform(rng, items.shape[1]) for _ in range(len(items))])
    drawn = np.stack([draw_sketch(e, t) for e, t in zip(lines, transforms)])
    return drawn, transforms


def build_streams(embedding_dim: int = 64, width: int = DEFAULT_WIDTH
                  ) -> tuple[FashionNet, FashionNet]:
    """(sketch stream, item stream): two FashionNets with GAP heads and their own weights."""
    return (FashionNet("gap", embedding_dim=embedding_dim, width=width),
            FashionNet("gap", embedding_dim=embedding_dim, width=width))


def load_sketch_streams(path: str | Path | None = None) -> tuple[FashionNet, FashionNet]:
    """The trained (sketch stream, item stream) from a checkpoint (the committed one by
    default), in eval mode."""
    path = Path(path) if path is not None else WEIGHTS
    checkpoint = load_checkpoint(path)
    if "state_dict_b" not in checkpoint:
        raise ModelError(f"{path}: not a two-stream sketch checkpoint (no state_dict_b); "
                         f"train one with `simexplain train sketch --out {path}`")
    streams = build_streams(int(checkpoint.get("embedding_dim", 64)),
                            int(checkpoint.get("width", DEFAULT_WIDTH)))
    for stream, key in zip(streams, ("state_dict", "state_dict_b")):
        try:
            stream.load_state_dict(float_state(checkpoint[key]))  # stored in half precision
        except RuntimeError as exc:
            raise ModelError(f"{path}: weights do not fit the sketch model ({exc})") from None
        stream.eval()
    return streams


_STREAMS: dict[str, tuple[FashionNet, FashionNet]] = {}


def _streams() -> tuple[FashionNet, FashionNet]:
    if "committed" not in _STREAMS:  # both streams come from one file: read it once
        _STREAMS["committed"] = load_sketch_streams()
    return _STREAMS["committed"]


def build_sketch_stream() -> FashionNet:
    """Stream A of the committed model: sketches."""
    return _streams()[0]


def build_item_stream() -> FashionNet:
    """Stream B of the committed model: grey items."""
    return _streams()[1]
