"""Loading and preprocessing images: paths, PIL images or ready tensors to model input."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import ImageError

ImageInput = Union[str, Path, Image.Image, torch.Tensor]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Refuse decompression bombs before decoding them.
MAX_PIXELS = 40_000_000


def load_image(source: str | Path | Image.Image) -> Image.Image:
    """Open a path (or take a PIL image) and return it as RGB.

    Grayscale and palette images are expanded to RGB; transparent images are composited on
    white, so that what the model sees matches what a viewer sees.
    """
    if isinstance(source, Image.Image):
        image = source
    else:
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"image file not found: {path}")
        try:
            with Image.open(path) as opened:
                if opened.width * opened.height > MAX_PIXELS:
                    raise ImageError(
                        f"{path}: {opened.width}x{opened.height} pixels exceeds the limit of "
                        f"{MAX_PIXELS}")
                opened.load()
                image = opened.copy()
        except UnidentifiedImageError:
            raise ImageError(f"{path}: not a readable image file") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageError(f"{path}: cannot decode image ({exc})") from None
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


@dataclass(frozen=True)
class Preprocess:
    """Resize to `size` (height, width), scale to [0, 1], then normalise by mean/std.

    `grayscale=True` produces one channel (for models trained on gray images).
    """

    size: tuple[int, int] = (224, 224)
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD
    grayscale: bool = False

    def resize(self, image: Image.Image) -> Image.Image:
        """The image exactly as the model sees it (before normalisation), for display."""
        height, width = self.size
        return to_rgb(image).resize((width, height), Image.BILINEAR)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        shown = self.resize(image)
        if self.grayscale:
            array = np.asarray(shown.convert("L"), dtype=np.float32)[None] / 255.0
        else:
            array = np.asarray(shown, dtype=np.float32).transpose(2, 0, 1) / 255.0
        tensor = torch.from_numpy(array.copy())
        mean = torch.tensor(self.mean, dtype=torch.float32)[:, None, None]
        std = torch.tensor(self.std, dtype=torch.float32)[:, None, None]
        return (tensor - mean) / std  # (C, H, W)


def check_tensor(tensor: torch.Tensor, name: str = "input") -> torch.Tensor:
    """A ready tensor must be a float (B, C, H, W) batch."""
    if tensor.dim() == 3:
        tensor = tensor.unsqueeze(0)
    if tensor.dim() != 4:
        raise ImageError(
            f"{name}: expected a preprocessed tensor of shape (1, C, H, W), got {tuple(tensor.shape)}")
    if not torch.is_floating_point(tensor):
        raise ImageError(f"{name}: expected a float tensor, got {tensor.dtype}")
    if not torch.isfinite(tensor).all():
        raise ImageError(f"{name}: tensor contains NaN or infinite values")
    return tensor


def blank_image(size: tuple[int, int]) -> Image.Image:
    """A neutral gray canvas of (height, width): what is shown for inputs given as tensors."""
    height, width = size
    return Image.new("RGB", (width, height), (128, 128, 128))
