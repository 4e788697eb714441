"""Images by id for the web API: gallery files, sample photos, uploads and derived crops.

Clients never name a file path: ids are the only handle. Memory stays bounded however many
large uploads arrive at once:

* decoding: every decode holds its pixel count of one process-wide `PixelBudget` (48
  megapixels: one upload of the maximum size, 40 megapixels, or several smaller ones, at a
  time); the others wait (503 after a minute). JPEGs decode at a reduced scale when they are
  larger than needed.
* storing: an upload is kept downscaled to at most `STORED_SIDE` (1024) pixels on its longest
  side, which covers the models' inputs (160-299 pixels) and the page's panels with room for
  high-DPI screens, as losslessly compressed PNG bytes in an LRU cache capped in bytes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import io
import os
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Iterator, Sequence

from PIL import Image, UnidentifiedImageError

from ..errors import ImageError, ImageTooLarge, SimexplainError
from ..files import shown_name
from ..gallery_files import read_gallery_file
from ..images import (MAX_PIXELS, check_icon, decode_image, is_tiff, load_image,
                      open_checked, quiet_decoders, to_gray8, to_rgb)
from .cache import LRU
from .errors import Busy, NotFound, TooLarge, WebError

STORED_SIDE = 1024
DECODE_BUDGET_PIXELS = 48_000_000
DECODE_WAIT_S = 60.0
UPLOAD_MEMORY = 256 * 2**20  # bytes of stored uploads (PNG) and derived crops
DEFAULT_SAMPLES = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left",
                   "motorcycle_right", "camera", "coins")
_ID = re.compile(r"^(g|s)(\d{1,9})$|^u[0-9a-f]{24}$|^f-[A-Za-z0-9_-]{1,40}$")
# modes that Pillow resizes as they are (others are converted to RGB at full size first)
_RESIZABLE = ("RGB", "RGBA", "L")


class PixelBudget:
    """A counting semaphore sized in pixels: each decode holds its image's pixel count while
    it runs, so concurrent decodes never hold more than `pixels` in total. An image larger
    than the whole budget decodes alone."""

    def __init__(self, pixels: int = DECODE_BUDGET_PIXELS, wait_s: float = DECODE_WAIT_S):
        if pixels < 1:
            raise ValueError("a pixel budget needs pixels >= 1")
        self.pixels = pixels
        self.wait_s = wait_s
        self.in_use = 0
        self.peak = 0  # the most pixels held at once (for tests and the soak)
        self._free = threading.Condition()

    @contextmanager
    def hold(self, count: int) -> Iterator[None]:
        count = max(1, min(int(count), self.pixels))
        with self._free:
            if not self._free.wait_for(lambda: self.in_use + count <= self.pixels,
                                       self.wait_s):
                raise Busy("the server is busy decoding other large images: try again in a "
                           "moment")
            self.in_use += count
            self.peak = max(self.peak, self.in_use)
        try:
            yield
        finally:
            with self._free:
                self.in_use -= count
                self._free.notify_all()
            if count >= 4_000_000:
                release_free_memory()


DECODE_BUDGET = PixelBudget()  # process-wide: shared by every store of this process


def release_free_memory() -> None:
    """Hand freed heap memory back to the system (glibc): large decodes free hundreds of MB
    in blocks that glibc would otherwise keep mapped in each thread's arena."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None


_LIBC = _libc()


@dataclass
class ImageRecord:
    id: str
    name: str
    source: str  # gallery, sample, upload, derived
    path: Path | None = None
    image: Image.Image | None = None  # in memory (samples, derived crops)
    png: bytes | None = None  # uploads: the stored, downscaled image as PNG
    size: tuple[int, int] | None = None  # (width, height) when known

    def __post_init__(self):
        if self.size is None and self.image is not None:
            self.size = self.image.size

    @property
    def cost(self) -> int:
        """Bytes held in memory (Pillow keeps 4 bytes per RGB pixel)."""
        if self.png is not None:
            return len(self.png)
        return self.image.width * self.image.height * 4 if self.image is not None else 0


def decode_upload(data: bytes, max_pixels: int = MAX_PIXELS, stored_side: int = STORED_SIDE,
                  budget: PixelBudget | None = None) -> Image.Image:
    """Validate uploaded bytes as one image (what decoding produces, checked before anything
    is decoded: `images.open_checked`; verify; the decode within the pixel budget, holding
    what it costs: `decode_cost`) and return it as RGB, downscaled to at most `stored_side`
    pixels on its longest side."""
    if not data:
        raise WebError("the upload is empty")
    budget = budget or DECODE_BUDGET
    try:
        with quiet_decoders():  # headers only: read by Pillow's Python code
            cost = _checked_cost(data, max_pixels)
        # libtiff's stderr is held only while it decodes, not while waiting for the budget
        with budget.hold(cost), quiet_decoders(is_tiff(io.BytesIO(data))), \
                open_checked(io.BytesIO(data), "the upload", max_pixels) as opened:
            return _downscaled(opened, stored_side)
    except WebError:
        raise
    except ImageTooLarge as exc:
        raise TooLarge(f"{exc} (the real size of what it would decode)") from None
    except ImageError as exc:
        raise WebError(str(exc)) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise TooLarge(f"image rejected as a decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise WebError("the upload is not an image in a format this server reads") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad upload
        raise WebError(f"the image cannot be decoded ({type(exc).__name__}: {exc})") from None


def _checked_cost(data: bytes, max_pixels: int, name: str = "the upload") -> int:
    """What decoding the upload will hold of the pixel budget, from its headers: an icon's
    largest real entry (opening an icon decodes it, so it is not opened here), else the
    image's size and mode (`decode_cost`), after Pillow's verify of the file's structure."""
    icon = check_icon(io.BytesIO(data), name, max_pixels)
    if icon:
        return icon
    with open_checked(io.BytesIO(data), name, max_pixels) as probe:
        cost = decode_cost(probe.mode, probe.width * probe.height)
        probe.verify()
    return cost


# Bytes a pixel takes at the peak of `_downscaled`, by the decoded mode: 8-bit grey and RGB(A)
# are reduced in place; palette and grey+alpha images are expanded to RGB(A) first (1 + 4);
# 16-bit (2), 32-bit and float (4) images are scaled to 8-bit grey a block at a time (+ 1);
# anything else (CMYK, YCbCr ...) is converted to RGB at full size (4 + 4)
_PEAK_BYTES = {"1": 1, "L": 1, "RGB": 4, "RGBA": 4, "P": 5, "PA": 8, "LA": 8,
               "I;16": 3, "I;16B": 3, "I;16L": 3, "I;16N": 3, "I": 5, "F": 5}


def decode_cost(mode: str, pixels: int) -> int:
    """What decoding an image of `pixels` pixels in `mode` holds of a PixelBudget, counted in
    pixels of 4 bytes (an RGB pixel as Pillow stores it): its real bytes at the decode's peak,
    so that a 16-bit or palette image counts what it really takes."""
    return -(-pixels * _PEAK_BYTES.get(mode, 8) // 4)


def _downscaled(opened: Image.Image, side: int) -> Image.Image:
    """An opened image as RGB of at most `side` pixels on its longest side, reduced before it
    is converted where Pillow can (a full-size RGB copy of a large image is what costs)."""
    if opened.mode in ("P", "PA", "LA"):  # expand, keeping any alpha for to_rgb's white
        alpha = opened.mode != "P" or "transparency" in opened.info
        image = opened.convert("RGBA" if alpha else "RGB")
    elif opened.mode.startswith("I") or opened.mode == "F":  # 8-bit grey first, in blocks
        image = to_gray8(opened, "the upload")
    else:
        image = opened if opened.mode in _RESIZABLE else to_rgb(opened)
    if max(image.size) > side:
        # in place; JPEGs decode at 1/2, 1/4 or 1/8 scale (draft), then an integer reduce
        image.thumbnail((side, side), Image.Resampling.LANCZOS, reducing_gap=3.0)
    image = to_rgb(image)
    return image.copy() if image is opened else image


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # fast; still 2-4x smaller than RGB
    return buffer.getvalue()


class _PathView(Sequence[Path]):
    """The gallery's paths as Path objects, made when asked for."""

    def __init__(self, paths: Sequence[str | Path]):
        self._paths = paths

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, row):  # ints only: rows of the gallery
        return Path(self._paths[row])


class ImageStore:
    """Images by id: gallery images (`g<i>`, from the index's paths), samples (`s<i>`),
    uploads (`u<hash>`, content-addressed) and derived crops (`f-...`). Clients never name a
    file path: ids are the only handle."""

    def __init__(self, gallery_paths: Sequence[str | Path] = (), samples: Sequence = (),
                 max_uploads: int = 256, max_upload_memory: int = UPLOAD_MEMORY,
                 max_pixels: int = MAX_PIXELS, stored_side: int = STORED_SIDE,
                 budget: PixelBudget | None = None, gallery_root: str | Path | None = None,
                 gallery_hashes: Sequence[str] = ()):
        # a view, not a list: an index's paths are read by row (`retrieval.columns`), so a
        # gallery of 10^7 images costs no Path object per image
        self.gallery_paths: Sequence[Path] = _PathView(gallery_paths)
        # gallery files are read through `read_gallery_file`: inside this folder, regular
        # files, checked against these sha256 (a changed one is served, and marked stale)
        self.gallery_root = gallery_root
        self.gallery_hashes = gallery_hashes  # by row, like the paths (no copy)
        self.max_pixels = max_pixels
        self.stored_side = stored_side
        self.budget = budget or DECODE_BUDGET
        self.samples: list[ImageRecord] = []
        for i, sample in enumerate(samples):
            name, image = _named_sample(sample, i)
            self.samples.append(ImageRecord(f"s{i}", name, "sample", image=image))
        self.uploads: LRU[ImageRecord] = LRU(max_uploads, max_upload_memory,
                                             cost=lambda r: r.cost)
        self._pixels: LRU[Image.Image] = LRU(64, 256 * 2**20,
                                             cost=lambda im: im.width * im.height * 4)
        self._encoded: LRU[tuple[bytes, str]] = LRU(512, 64 * 2**20, cost=lambda v: len(v[0]))
        self._stale: dict[str, str] = {}

    # lookups
    def record(self, image_id: str) -> ImageRecord:
        match = _ID.match(image_id or "")
        if not match:
            raise NotFound(f"unknown image id {image_id!r}")
        kind, number = match.group(1), match.group(2)
        if kind == "g":
            i = int(number)
            if i >= len(self.gallery_paths):
                raise NotFound(f"unknown image id {image_id!r}: the gallery has "
                               f"{len(self.gallery_paths)} images")
            path = self.gallery_paths[i]
            return ImageRecord(image_id, path.name, "gallery", path=path)
        if kind == "s":
            i = int(number)
            if i >= len(self.samples):
                raise NotFound(f"unknown image id {image_id!r}")
            return self.samples[i]
        found = self.uploads.get(image_id)
        if found is None:
            raise NotFound(f"unknown image id {image_id!r} (uploads are kept for a limited "
                           "time: upload it again)")
        return found

    def add_sample_file(self, path: str | Path) -> ImageRecord:
        """A sample read from its file when first used (a zoo model's sample pair); a sample
        of the same name (with or without its suffix) is reused rather than added twice."""
        path = Path(path)
        for record in self.samples:
            if record.path == path or record.name in (path.name, path.stem):
                return record
        record = ImageRecord(f"s{len(self.samples)}", shown_name(path.name), "sample",
                             path=path)
        self.samples.append(record)
        return record

    def pixels(self, image_id: str) -> Image.Image:
        """The image as RGB: uploads as stored (downscaled), gallery files as they are."""
        record = self.record(image_id)
        if record.image is not None:
            return record.image
        png, path = record.png, record.path
        if png is not None:
            return self._pixels.get_or_create(image_id, lambda: _decode_png(png))
        assert path is not None  # neither pixels nor a PNG: a gallery file or a sample's
        if record.source != "gallery":
            return self._pixels.get_or_create(image_id, lambda: self._load_file(path))
        # a gallery file is checked again whenever it is no longer what was decoded (its
        # lstat changed: replaced, edited, swapped for a link), never served from memory
        key = (image_id, _signature(path))
        return self._pixels.get_or_create(key, lambda: self._load_gallery(int(image_id[1:])))

    def stale(self, image_id: str) -> str | None:
        """What became of a gallery image's file since indexing, as its last read found
        (None: as indexed, or not a gallery image)."""
        return self._stale.get(image_id)

    def _load_gallery(self, row: int) -> Image.Image:
        """A gallery file as read now (`read_gallery_file`), decoded within the pixel budget:
        NotFound when it is missing or refused (a link out of the gallery, not a regular
        file); a changed one is decoded and remembered as stale."""
        path = self.gallery_paths[row]
        expected = self.gallery_hashes[row] if row < len(self.gallery_hashes) else ""
        read = read_gallery_file(path, self.gallery_root, expected)
        if read.data is None:
            self._stale[f"g{row}"] = str(read.stale)
            raise NotFound(f"gallery image g{row} ({path.name}) is unavailable: {read.stale}")
        if read.stale is not None:
            self._stale[f"g{row}"] = read.stale
        else:
            self._stale.pop(f"g{row}", None)
        return self._decode_within_budget(read.data, path.name)

    def _load_file(self, path: Path) -> Image.Image:
        """A sample's file, decoded within the pixel budget."""
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise NotFound(f"{path.name}: cannot read the file ({exc.strerror or exc})") from None
        return self._decode_within_budget(data, path.name)

    def _decode_within_budget(self, data: bytes, name: str) -> Image.Image:
        """A file's bytes decoded (`images.decode_image`) holding what it costs of the budget:
        the real size checked first (icon entries, TIFF pages), then its mode's bytes."""
        try:
            with quiet_decoders():
                cost = _checked_cost(data, self.max_pixels, name)
        except ImageError:
            cost = 1  # decode_image says what is wrong with the file
        except Exception:  # noqa: BLE001 - the same: decode_image names the problem
            cost = 1
        with self.budget.hold(cost):
            return decode_image(data, name)

    def add_upload(self, data: bytes, name: str = "upload") -> ImageRecord:
        """Decode, downscale and keep an upload; the same bytes give the same id."""
        image_id = "u" + hashlib.sha256(data).hexdigest()[:24]
        existing = self.uploads.get(image_id)
        if existing is not None:
            return existing
        image = decode_upload(data, self.max_pixels, self.stored_side, self.budget)
        record = ImageRecord(image_id, clean_name(name), "upload", png=_png(image),
                             size=image.size)
        return self.uploads.put(image_id, record)

    def add_derived(self, source_id: str, tag: str, image: Image.Image) -> ImageRecord:
        image_id = f"f-{tag}-{source_id}"[:42]
        record = ImageRecord(image_id, f"{tag} of {self.record(source_id).name}", "derived",
                             image=image)
        return self.uploads.put(image_id, record)

    def listing(self, source: str, offset: int, limit: int) -> tuple[list[ImageRecord], int]:
        """One page of the gallery's or the samples' records, and their total count."""
        if source == "gallery":
            total = len(self.gallery_paths)
            items = [ImageRecord(f"g{i}", self.gallery_paths[i].name, "gallery")
                     for i in range(offset, min(total, offset + limit))]
            return items, total
        return self.samples[offset:offset + limit], len(self.samples)

    def encoded(self, image_id: str, max_side: int | None = None,
                crop: Sequence[int] | None = None) -> tuple[bytes, str]:
        """The image re-encoded for a browser (JPEG, or PNG when small), optionally cut to
        `crop` (top, left, bottom, right in its pixels: the part a model saw, `Frame.box`)
        and shrunk to `max_side`."""
        def encode() -> tuple[bytes, str]:
            image = self.pixels(image_id)
            if crop is not None:
                image = _cropped(image, crop, image_id)
            if max_side and max(image.size) > max_side:
                image = image.copy()
                image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            buffer = io.BytesIO()
            if image.width * image.height <= 256 * 256:
                image.save(buffer, format="PNG")
                return buffer.getvalue(), "image/png"
            image.save(buffer, format="JPEG", quality=90)
            return buffer.getvalue(), "image/jpeg"
        path = self.record(image_id).path if image_id.startswith("g") else None
        key = (image_id, max_side, tuple(crop) if crop is not None else None,
               _signature(path) if path is not None else None)
        return self._encoded.get_or_create(key, encode)

    @property
    def memory(self) -> int:
        """Bytes the store accounts for: stored uploads, decoded pixels, encoded images."""
        return int(self.uploads.total_cost + self._pixels.total_cost + self._encoded.total_cost)


def _cropped(image: Image.Image, crop: Sequence[int], image_id: str = "image") -> Image.Image:
    """The part (top, left, bottom, right) of `image`; the image itself when that is all of
    it. A box that is empty or reaches outside the image is a WebError naming both."""
    top, left, bottom, right = (int(v) for v in crop)
    if not (0 <= top < bottom <= image.height and 0 <= left < right <= image.width):
        raise WebError(f"crop {[top, left, bottom, right]} is empty or outside image "
                       f"{image_id} ({image.height}x{image.width} pixels)")
    if (top, left, bottom, right) == (0, 0, image.height, image.width):
        return image
    return image.crop((left, top, right, bottom))


def _signature(path: Path) -> tuple[int, ...] | None:
    """What a file is now, cheaply (`lstat`: a link swapped in, a rewrite or an edit change
    it); None when it is gone."""
    try:
        found = os.lstat(path)
    except (OSError, ValueError):
        return None
    return (found.st_dev, found.st_ino, found.st_mode, found.st_size, found.st_mtime_ns)


def _decode_png(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as opened:
        opened.load()
        return opened.convert("RGB")


def _named_sample(sample: Any, i: int) -> tuple[str, Image.Image]:
    if isinstance(sample, tuple):
        name, image = sample
    elif isinstance(sample, Image.Image):
        name, image = f"sample {i + 1}", sample
    else:
        name, image = Path(sample).name, sample
    return shown_name(str(name)), load_image(image)


def clean_name(name: str) -> str:
    """A file name safe to show and store: no folders, odd characters replaced."""
    name = Path(str(name or "upload")).name
    return re.sub(r"[^\w.\- ]", "_", name)[:80] or "upload"


def default_samples() -> list[tuple[str, Image.Image]]:
    """scikit-image's bundled photos, when scikit-image is installed (else none)."""
    try:
        from ..datasets import skimage_photos
        photos = skimage_photos()
    except (ImportError, SimexplainError):
        return []
    return [(name, photos[name]) for name in DEFAULT_SAMPLES if name in photos]
