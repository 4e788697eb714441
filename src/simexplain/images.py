"""Loading and preprocessing images: paths, PIL images or ready tensors to model input."""

from __future__ import annotations

import io
import math
import numbers
import os
import struct
import sys
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from collections.abc import Iterator, Sequence
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .defaults import MAX_PIXELS
from .errors import ImageError, ImageTooLarge, SimexplainError

ImageInput = str | Path | Image.Image | torch.Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# With the aspect ratio kept, the long side of a model input is at most this many short sides.
MAX_ASPECT = 4
# Resampling filters a Preprocess may resize with, by name.
RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
            "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
            "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING}


# The formats an image file may be in: photos (JPEG includes MPO), and icons (whose entries are
# checked, see `open_checked`). Others (EPS runs Ghostscript, ICNS, PSD ...) are refused unread.
FORMATS = ("PNG", "JPEG", "GIF", "TIFF", "WEBP", "BMP", "DIB", "PPM", "AVIF", "ICO",
           "CUR", "TGA", "QOI", "PCX", "SGI")
# Pages of a TIFF file checked before decoding (its first page is the one decoded); a file with
# more is refused
MAX_PAGES = 256
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_ICO_MAGIC = b"\x00\x00\x01\x00"


def load_image(source: str | Path | Image.Image) -> Image.Image:
    """Open a path (or take a PIL image) and return it as RGB.

    Grayscale and palette images are expanded to RGB; transparent images are composited on
    white, so that what the model sees matches what a viewer sees; 16-bit and float images are
    scaled to 8 bits (see `to_rgb`). Every unusable file is an ImageError naming it: the pixel
    limit (MAX_PIXELS) is checked against what decoding would produce before anything is
    decoded (`open_checked`).
    """
    if isinstance(source, Image.Image):
        check_not_empty(source.width, source.height)
        return to_rgb(source)
    with _open_file(source) as (handle, name):
        return decode_image(handle, name)


def check_image_file(source: str | Path) -> tuple[int, int]:
    """What `load_image(source)` refuses before it decodes, found without decoding the pixels:
    a missing or unreadable file, a file in none of FORMATS, an empty image or one over
    MAX_PIXELS (declared size, icon entries, TIFF pages; `open_checked`), each an ImageError
    naming the file. Returns the declared (width, height). What only the pixels show (data
    cut short or damaged, unusable values) is found when the file is decoded (`load_image`),
    an ImageError naming it as well.
    """
    with _open_file(source) as (handle, name), _checked_open(handle, name) as opened:
        width, height = opened.size
    return width, height


@contextmanager
def _open_file(source: str | Path) -> Iterator[tuple[BinaryIO, str]]:
    """The image file `source` open for reading, with the name its errors give it; a missing or
    unopenable file is an ImageError naming it."""
    if not isinstance(source, (str, os.PathLike)) or str(source) == "":
        given = "an empty path" if isinstance(source, (str, os.PathLike)) else \
            type(source).__name__
        hint = " (an array: PIL.Image.fromarray(array))" if isinstance(source, np.ndarray) else ""
        raise ImageError(f"expected an image file path, a PIL image or a (1, C, H, W) tensor, "
                         f"got {given}{hint}")
    path = Path(source)
    name = _short(path)
    try:
        found = path.is_file()
    except (OSError, ValueError) as exc:  # a name too long for the file system, a NUL byte
        raise ImageError(f"{name}: cannot open ({_reason(exc)})") from None
    if not found and path.is_dir():
        raise ImageError(f"{name} is a folder, not an image file")
    if not found and path.is_symlink():
        raise ImageError(f"{name}: a link to nothing (broken, or a loop of links)")
    if not found:
        raise ImageError(f"image file not found: {name}")
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise ImageError(f"{name}: cannot open ({_reason(exc)})") from None
    with handle:
        yield handle, name


def decode_image(source: bytes | BinaryIO, name: str = "image") -> Image.Image:
    """An image file's bytes (or an open binary file) decoded to RGB as `load_image` does:
    checked first (`open_checked`), every failure an ImageError naming `name`, the decoders'
    own warnings kept off the terminal (`quiet_decoders`)."""
    handle = io.BytesIO(source) if isinstance(source, bytes) else source
    with _checked_open(handle, name) as opened:
        opened.load()
        image = opened.copy()
    return to_rgb(image, name)


@contextmanager
def _checked_open(handle: BinaryIO, name: str) -> Iterator[Image.Image]:
    """The image in `handle` opened once its size is checked (`open_checked`), the decoders
    quiet (`quiet_decoders`), and every failure of opening or decoding it in the block an
    ImageError naming `name` (ImageTooLarge for a decompression bomb)."""
    try:
        with quiet_decoders(is_tiff(handle)), open_checked(handle, name) as opened:
            yield opened
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not a readable image file (formats read: "
                         f"{', '.join(FORMATS)})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLarge(f"{name}: the image declares more pixels than the limit of "
                            f"{MAX_PIXELS}") from None
    except MemoryError:
        raise ImageError(f"{name}: not enough memory to decode the image") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure (OSError, SyntaxError,
        # struct.error, RuntimeError from a broken plugin ...) means the same: a bad file
        raise ImageError(f"{name}: cannot decode image ({_reason(exc)})") from None


@contextmanager
def open_checked(handle: BinaryIO, name: str = "image",
                 max_pixels: int | None = None) -> Iterator[Image.Image]:
    """`Image.open` of a file in one of FORMATS, once what decoding it produces is known to
    hold at most `max_pixels` (else ImageTooLarge naming the real size): the image's declared
    size, the real size of every icon entry (an ICO directory may say 256x256 over an
    8900x8900 PNG, and Pillow decodes an icon as it opens it) and of every TIFF page. Frames of
    animations (GIF, APNG, WebP) and MPO are not decoded: only the first, of the declared size.
    """
    max_pixels = MAX_PIXELS if max_pixels is None else max_pixels  # read now: tests lower it
    check_icon(handle, name, max_pixels)
    with Image.open(handle, formats=FORMATS) as opened:
        try:
            check_pixels(opened.width, opened.height, name, max_pixels)
            if opened.format == "TIFF":
                check_pages(opened, name, max_pixels)
            yield opened
        finally:  # free the decoded pixels now (leaving `with` closes only the file), so that
            opened.close()  # a caller's decode budget is released with the memory it counted


def check_pixels(width: int, height: int, name: str = "image",
                 max_pixels: int | None = None) -> None:
    """Refuse a declared size over `max_pixels` (default MAX_PIXELS) or an empty one before it
    is decoded."""
    max_pixels = MAX_PIXELS if max_pixels is None else max_pixels
    check_not_empty(width, height, name)
    if width * height > max_pixels:
        raise ImageTooLarge(f"{name}: {width}x{height} pixels exceeds the limit of {max_pixels}")


def check_not_empty(width: int, height: int, name: str = "image") -> None:
    if width <= 0 or height <= 0:
        raise ImageError(f"{name}: the image is empty ({width}x{height} pixels)")


def check_icon(handle: BinaryIO, name: str, max_pixels: int) -> int:
    """For an ICO file, the real size of each entry's image (the PNG's IHDR, the bitmap's
    header), whatever the directory says, against `max_pixels`; returns the largest entry's
    pixel count (what opening the icon decodes), 0 for a file that is no icon. Leaves `handle`
    where it was."""
    start = handle.tell()
    largest = 0
    try:
        head = handle.read(6)
        if len(head) < 6 or head[:4] != _ICO_MAGIC:
            return 0
        count = int.from_bytes(head[4:6], "little")
        directory = handle.read(16 * count)
        for entry in (directory[i:i + 16] for i in range(0, len(directory) - 15, 16)):
            said = (entry[0] or 256, entry[1] or 256)
            handle.seek(start + int.from_bytes(entry[12:16], "little"))
            width, height = _embedded_size(handle.read(24))
            if width * height > max_pixels:
                raise ImageTooLarge(
                    f"{name}: an icon entry listed as {said[0]}x{said[1]} holds a "
                    f"{width}x{height} image, more than the limit of {max_pixels} pixels")
            largest = max(largest, width * height)
    finally:
        handle.seek(start)
    return largest


def _embedded_size(head: bytes) -> tuple[int, int]:
    """(width, height) of the PNG or the bitmap (colour and mask rows: twice the height) that
    an icon entry holds; (0, 0) where the bytes say neither (Pillow then refuses the file)."""
    if head[:8] == _PNG_MAGIC and len(head) >= 24:
        width, height = struct.unpack(">II", head[16:24])
        return width, height
    if len(head) >= 12 and int.from_bytes(head[:4], "little") == 12:  # OS/2 bitmap header
        width, height = struct.unpack("<HH", head[4:8])
        return width, height // 2
    if len(head) >= 12:
        width, height = struct.unpack("<ii", head[4:12])
        return abs(width), abs(height) // 2
    return 0, 0


def check_pages(opened: Image.Image, name: str, max_pixels: int) -> None:
    """Every page of a multi-page TIFF within `max_pixels` (read from the page headers, none
    decoded), at most MAX_PAGES of them; `opened` is left on its first page."""
    for page in range(1, MAX_PAGES + 1):
        try:
            opened.seek(page)
        except EOFError:
            break
        except Exception:  # noqa: BLE001 - a damaged later page is never decoded: the first,
            break  # read again below, is what counts
        width, height = opened.size
        if width * height > max_pixels:
            raise ImageTooLarge(f"{name}: page {page + 1} is {width}x{height} pixels, more "
                                f"than the limit of {max_pixels}")
    else:
        raise ImageError(f"{name}: more than {MAX_PAGES} pages")
    opened.seek(0)


def is_tiff(handle: BinaryIO) -> bool:
    """Whether the file starts like a TIFF (classic or BigTIFF, either byte order); leaves
    `handle` where it was."""
    start = handle.tell()
    head = handle.read(4)
    handle.seek(start)
    return head in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


_QUIET = threading.Lock()


@contextmanager
def quiet_decoders(tiff: bool = False) -> Iterator[None]:
    """Decode without the decoders' notes on the terminal: Pillow's warnings (a corrupt EXIF
    block, an icon of an unexpected size) are dropped and Pillow's bomb warning becomes an
    error; for a TIFF (`tiff`), what libtiff writes to the process's stderr (file descriptor
    2) while it decodes is discarded too (one TIFF decode at a time holds the descriptor).

    Safe in threads (the web app decodes uploads concurrently): the warning filters are
    process-wide, so they are set when the first decode starts and restored when the last one
    ends, not saved and restored per call as `warnings.catch_warnings` does (two overlapping
    calls would then restore each other's state: the bomb warning no longer an error during
    the second decode, every warning silenced after both). While any decode runs, warnings of
    other threads are silenced as well."""
    with quiet_warnings():
        if not tiff:
            yield
            return
        with _QUIET, _stderr_discarded():
            yield


class _QuietWarnings:
    """The process-wide warning filters of `quiet_decoders`, counted across threads."""

    lock = threading.Lock()
    users = 0
    saved: Sequence = ()


@contextmanager
def quiet_warnings() -> Iterator[None]:
    """Every warning silenced, Pillow's bomb warning an error, for the block: the process-wide
    filters set when the first of the threads in such a block enters and restored when the last
    leaves (`quiet_decoders` and the web app use it; a `warnings.catch_warnings` in one thread
    would restore its own copy over the others')."""
    state = _QuietWarnings
    with state.lock:
        if state.users == 0:
            state.saved = warnings.filters
            warnings.filters = list(state.saved)  # as catch_warnings: a copy to change
            warnings.simplefilter("ignore")
            # Pillow's own bomb check only warns below twice its limit: make it an error
            warnings.simplefilter("error", Image.DecompressionBombWarning)
        state.users += 1
    try:
        yield
    finally:
        with state.lock:
            state.users -= 1
            if state.users == 0:
                warnings.filters = state.saved
                warnings._filters_mutated()  # type: ignore[attr-defined]  # as catch_warnings


@contextmanager
def _stderr_discarded() -> Iterator[None]:
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no descriptor 2 (an embedded interpreter): nothing to hide
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


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
            image = to_gray8(image, name)
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


# Rows of a wide image scaled to 8 bits at a time: the float64 copy of one block of about a
# million values, not of the whole image (a 40 Mpx 16-bit image: 80 MB in, 40 MB out)
_BLOCK_VALUES = 1 << 20


def to_gray8(image: Image.Image, name: str) -> Image.Image:
    """A 16-bit or 32-bit integer image (0..65535) or a float image (0..1) as 8-bit 'L', in
    bounded memory: the decoded values as they are (2 or 4 bytes a pixel), the 8-bit result,
    and a block of rows at a time in between."""
    values = np.asarray(image)
    if image.mode == "F" and not all(np.isfinite(block).all() for block in _blocks(values)):
        raise ImageError(f"{name}: the image has NaN or infinite pixel values")
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    full = 1.0 if image.mode == "F" else 65535.0
    if low < 0 or high > full:
        raise ImageError(
            f"{name}: {image.mode} pixel values span {low:g}..{high:g}; expected 0..{full:g} "
            f"({'float images in 0..1' if image.mode == 'F' else '16-bit images'}); "
            "convert the image to 8 bits first")
    out = np.empty(values.shape, np.uint8)
    for block, target in zip(_blocks(values), _blocks(out)):
        target[...] = np.rint(block.astype(np.float64) * (255.0 / full))
    return Image.fromarray(out, "L")


def _blocks(values: np.ndarray) -> Iterator[np.ndarray]:
    rows = max(1, _BLOCK_VALUES // max(1, values.shape[1] if values.ndim > 1 else 1))
    for start in range(0, values.shape[0], rows):
        yield values[start:start + rows]


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
        size = tuple(self.size) if isinstance(self.size, (tuple, list)) else ()
        if len(size) != 2 or not all(isinstance(v, numbers.Integral) and
                                     not isinstance(v, bool) and v >= 1 for v in size):
            raise SimexplainError(f"an input size is (height, width) in whole pixels >= 1, "
                                  f"got {self.size!r}")
        if size[0] * size[1] > MAX_PIXELS:  # the same bound as a decoded image's
            raise SimexplainError(f"an input size of {size[0]}x{size[1]} pixels exceeds the "
                                  f"limit of {MAX_PIXELS}")
        object.__setattr__(self, "size", (int(size[0]), int(size[1])))  # numpy's ints too
        if self.resample not in RESAMPLE:
            raise SimexplainError(f"unknown resample filter {self.resample!r}; choose one of "
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
        if isinstance(size, numbers.Integral) and not isinstance(size, bool):
            return replace(self, size=(int(size), int(size)))
        if not isinstance(size, (tuple, list)) or len(size) != 2:
            raise SimexplainError(f"a size is N or (height, width) in pixels, got {size!r}")
        return replace(self, size=(size[0], size[1]), keep_aspect=False)

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
    if tensor.numel() == 0:
        raise ImageError(f"{name}: the tensor is empty, shape {tuple(tensor.shape)}")
    if not all_finite(tensor):
        raise ImageError(f"{name}: tensor contains NaN or infinite values")
    return tensor


def all_finite(tensor: torch.Tensor) -> bool:
    """Are all values finite? The sum is, for every finite tensor of sane magnitude: one pass
    and one read from the device (math on the Python float, not more kernels), and the
    elementwise check only when it is not (NaN, inf, or an overflowing sum)."""
    return math.isfinite(float(tensor.sum())) or bool(torch.isfinite(tensor).all())


def blank_image(size: tuple[int, int]) -> Image.Image:
    """A neutral gray canvas of (height, width): what is shown for inputs given as tensors."""
    height, width = size
    return Image.new("RGB", (width, height), (128, 128, 128))
