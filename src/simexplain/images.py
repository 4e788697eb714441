"""Loading and preprocessing images: paths, PIL images or ready tensors to model input."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .defaults import MAX_PIXELS
from .errors import ImageError

ImageInput = str | Path | Image.Image | torch.Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# With the aspect ratio kept, the long side of a model input is at most this many short sides.
MAX_ASPECT = 4
# Resampling filters a Preprocess may resize with, by name.
RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
            "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
            "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING}


def load_image(source: str | Path | Image.Image) -> Image.Image:
    """Open a path (or take a PIL image) and return it as RGB.

    Grayscale and palette images are expanded to RGB; transparent images are composited on
    white, so that what the model sees matches what a viewer sees; 16-bit and float images are
    scaled to 8 bits (see `to_rgb`). Every unusable file is an ImageError naming it: the pixel
    limit (MAX_PIXELS) is checked from the header, before anything is decoded.
    """
    if isinstance(source, Image.Image):
        return to_rgb(source)
    path = Path(source)
    name = _short(path)
    try:
        found = path.is_file()
    except (OSError, ValueError) as exc:  # a name too long for the file system, a NUL byte
        raise ImageError(f"{name}: cannot open ({_reason(exc)})") from None
    if not found:
        raise ImageError(f"image file not found: {name}")
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb check only warns below twice its limit: make it an error
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                check_pixels(opened.width, opened.height, name)
                opened.load()
                image = opened.copy()
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not a readable image file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{name}: the image declares more pixels than the limit of "
                         f"{MAX_PIXELS}") from None
    except MemoryError:
        raise ImageError(f"{name}: not enough memory to decode the image") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure (OSError, SyntaxError,
        # struct.error, RuntimeError from a broken plugin ...) means the same: a bad file
        raise ImageError(f"{name}: cannot decode image ({_reason(exc)})") from None
    return to_rgb(image, name)


def check_pixels(width: int, height: int, name: str = "image") -> None:
    """Refuse a declared size over MAX_PIXELS (or empty) before it is decoded."""
    if width <= 0 or height <= 0:
        raise ImageError(f"{name}: the image is empty ({width}x{height} pixels)")
    if width * height > MAX_PIXELS:
        raise ImageError(f"{name}: {width}x{height} pixels exceeds the limit of {MAX_PIXELS}")


def _short(path: Path, limit: int = 120) -> str:
    text = str(path)
    return text if len(text) <= limit else f"{text[:limit // 2]}...{text[-limit // 2:]}"


def _reason(exc: BaseException) -> str:
    text = (getattr(exc, "strerror", None) or str(exc) or type(exc).__name__).splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


# Modes whose values are not 8-bit: integers assumed 16-bit (what 16-bit PNG and TIFF decode
# to), floats assumed in [0, 1] (float TIFF); both are scaled to 0..255 before conversion.
_WIDE_INT = ("I", "I;16", "I;16B", "I;16L", "I;16N")


def to_rgb(image: Image.Image, name: str = "image") -> Image.Image:
    """The image as 8-bit RGB (alpha composited on white; 16-bit and float values scaled)."""
    if image.mode == "RGB":
        return image
    try:
        if image.mode in _WIDE_INT or image.mode == "F":
            image = _to_8bit(image, name)
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and
                                                  "transparency" in image.info):
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return image.convert("RGB")
    except ImageError:
        raise
    except (ValueError, OSError) as exc:  # e.g. a mode Pillow cannot convert to RGB
        raise ImageError(f"{name}: cannot convert {image.mode} pixels to RGB "
                         f"({_reason(exc)})") from None


def _to_8bit(image: Image.Image, name: str) -> Image.Image:
    """A 16-bit or 32-bit integer image (0..65535) or a float image (0..1) as 8-bit 'L'."""
    values = np.asarray(image, dtype=np.float64)
    if not np.isfinite(values).all():
        raise ImageError(f"{name}: the image has NaN or infinite pixel values")
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    full = 1.0 if image.mode == "F" else 65535.0
    if low < 0 or high > full:
        raise ImageError(
            f"{name}: {image.mode} pixel values span {low:g}..{high:g}; expected 0..{full:g} "
            f"({'float images in 0..1' if image.mode == 'F' else '16-bit images'}); "
            "convert the image to 8 bits first")
    return Image.fromarray(np.rint(values * (255.0 / full)).astype(np.uint8), "L")


@dataclass(frozen=True)
class Preprocess:
    """Resize, scale to [0, 1], then normalise by mean/std.

    size: (height, width) of the model input. keep_aspect: resize the short side to
    min(size) and keep the image's aspect ratio (a 28x56 composite stays 28x56, a 4:3 photo
    4:3), for models whose head pools over positions (average, max, GeM, token mean) and so
    accept any input shape; the long side is capped at MAX_ASPECT times the short one.
    Without it the image is squashed to exactly `size` (heads that need a fixed size, such as
    flatten + linear). `grayscale=True` produces one channel (for models trained on gray
    images). `resample`: the filter of the resize, a name in RESAMPLE (a model trained on
    bicubic resizes, as many Hugging Face processors do, sees the same pixels here).
    """

    size: tuple[int, int] = (224, 224)
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD
    grayscale: bool = False
    keep_aspect: bool = False
    resample: str = "bilinear"

    def __post_init__(self):
        if self.resample not in RESAMPLE:
            raise ValueError(f"unknown resample filter {self.resample!r}; choose one of "
                             f"{', '.join(RESAMPLE)}")

    def input_size(self, width: int, height: int) -> tuple[int, int]:
        """(height, width) of the model input for an image of width x height pixels."""
        if not self.keep_aspect:
            return int(self.size[0]), int(self.size[1])
        short = int(min(self.size))
        scale = short / min(width, height)
        long_cap = short * MAX_ASPECT
        h = min(max(short, int(round(height * scale))), long_cap)
        w = min(max(short, int(round(width * scale))), long_cap)
        return h, w

    def resized(self, size: int | tuple[int, int] | None) -> Preprocess:
        """This preprocessing at another input size (the CLI's `--size`): an int is the side
        (the short side where the aspect ratio is kept, else both sides); (height, width) is
        exactly that (squashed); None keeps it."""
        if size is None:
            return self
        if isinstance(size, int):
            return replace(self, size=(size, size))
        height, width = (int(v) for v in size)
        return replace(self, size=(height, width), keep_aspect=False)

    def describe(self) -> str:
        """How inputs are sized, in words (for `simexplain models` and errors)."""
        if self.keep_aspect:
            return f"short side {min(self.size)} px, aspect ratio kept"
        return f"{self.size[0]}x{self.size[1]} px (fixed: images are squashed)"

    def resize(self, image: Image.Image) -> Image.Image:
        """The image exactly as the model sees it (before normalisation), for display."""
        image = to_rgb(image)
        height, width = self.input_size(image.width, image.height)
        return image.resize((width, height), RESAMPLE[self.resample])

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
            f"{name}: expected a preprocessed tensor of shape (1, C, H, W), "
            f"got {tuple(tensor.shape)}")
    if not torch.is_floating_point(tensor):
        raise ImageError(f"{name}: expected a float tensor, got {tensor.dtype}")
    # the sum is finite for every finite input of sane magnitude: one cheap pass, and the
    # full elementwise check only when it is not (NaN, inf, or an overflowing sum)
    if not torch.isfinite(tensor.sum()) and not torch.isfinite(tensor).all():
        raise ImageError(f"{name}: tensor contains NaN or infinite values")
    return tensor


def blank_image(size: tuple[int, int]) -> Image.Image:
    """A neutral gray canvas of (height, width): what is shown for inputs given as tensors."""
    height, width = size
    return Image.new("RGB", (width, height), (128, 128, 128))
