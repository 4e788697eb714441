"""Images by id for the web API: gallery files, sample photos, uploads and derived crops.

Clients never name a file path: ids are the only handle. Uploads are validated (header, pixel
count, full decode) and kept downscaled in a bounded cache.
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from PIL import Image, UnidentifiedImageError

from ..errors import SimexplainError
from ..images import MAX_PIXELS, load_image, to_rgb
from .cache import LRU
from .errors import NotFound, TooLarge, WebError

MAX_UPLOAD_BYTES = 10 * 1024 * 1024
# Uploads are kept at most this large (longest side, pixels): plenty for display and for any
# model input, and it bounds the memory one upload can hold.
STORED_SIDE = 2048
DEFAULT_SAMPLES = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left",
                   "motorcycle_right", "camera", "coins")
_ID = re.compile(r"^(g|s)(\d{1,9})$|^u[0-9a-f]{24}$|^f-[A-Za-z0-9_-]{1,40}$")


@dataclass
class ImageRecord:
    id: str
    name: str
    source: str  # gallery, sample, upload, derived
    path: Path | None = None
    image: Image.Image | None = None  # in memory (samples, uploads, derived crops)

    @property
    def size(self) -> tuple[int, int] | None:
        """(width, height) when the pixels are in memory, else None (not loaded yet)."""
        return self.image.size if self.image is not None else None


def decode_upload(data: bytes, max_pixels: int = MAX_PIXELS,
                  stored_side: int = STORED_SIDE) -> Image.Image:
    """Validate uploaded bytes as one image (header, pixel count, verify, full decode) and
    return it as RGB, downscaled to at most `stored_side` pixels on its longest side."""
    if not data:
        raise WebError("the upload is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:
                width, height = probe.size
                if width < 1 or height < 1:
                    raise WebError("the image has no pixels")
                if width * height > max_pixels:
                    raise TooLarge(f"image of {width}x{height} pixels exceeds the limit of "
                                   f"{max_pixels} pixels")
                probe.verify()
            with Image.open(io.BytesIO(data)) as opened:
                opened.load()
                image = to_rgb(opened.copy())
    except WebError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise TooLarge(f"image rejected as a decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise WebError("the upload is not an image in a format this server reads") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad upload
        raise WebError(f"the image cannot be decoded ({type(exc).__name__}: {exc})") from None
    if max(image.size) > stored_side:
        image = image.copy()
        image.thumbnail((stored_side, stored_side), Image.LANCZOS)
    return image


def _image_bytes(image: Image.Image) -> int:
    return image.width * image.height * 3


class ImageStore:
    """Images by id: gallery images (`g<i>`, from the index's paths), samples (`s<i>`),
    uploads (`u<hash>`, content-addressed) and derived crops (`f-...`). Clients never name a
    file path: ids are the only handle."""

    def __init__(self, gallery_paths: Sequence[str | Path] = (), samples: Sequence = (),
                 max_uploads: int = 64, max_upload_memory: int = 512 * 2**20,
                 max_pixels: int = MAX_PIXELS):
        self.gallery_paths = [Path(p) for p in gallery_paths]
        self.max_pixels = max_pixels
        self.samples: list[ImageRecord] = []
        for i, sample in enumerate(samples):
            name, image = _named_sample(sample, i)
            self.samples.append(ImageRecord(f"s{i}", name, "sample", image=image))
        self.uploads: LRU[ImageRecord] = LRU(max_uploads, max_upload_memory,
                                             cost=lambda r: _image_bytes(r.image))
        self._gallery_pixels: LRU[Image.Image] = LRU(64, 256 * 2**20, cost=_image_bytes)
        self._encoded: LRU[tuple[bytes, str]] = LRU(512, 64 * 2**20, cost=lambda v: len(v[0]))

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

    def pixels(self, image_id: str) -> Image.Image:
        record = self.record(image_id)
        if record.image is not None:
            return record.image
        return self._gallery_pixels.get_or_create(image_id, lambda: load_image(record.path))

    def add_upload(self, data: bytes, name: str = "upload") -> ImageRecord:
        image = decode_upload(data, self.max_pixels)
        image_id = "u" + hashlib.sha256(data).hexdigest()[:24]
        record = ImageRecord(image_id, _clean_name(name), "upload", image=image)
        existing = self.uploads.get(image_id)
        return existing if existing is not None else self.uploads.put(image_id, record)

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

    def encoded(self, image_id: str, max_side: int | None = None) -> tuple[bytes, str]:
        """The image re-encoded for a browser (JPEG, or PNG when small), optionally shrunk."""
        def encode() -> tuple[bytes, str]:
            image = self.pixels(image_id)
            if max_side and max(image.size) > max_side:
                image = image.copy()
                image.thumbnail((max_side, max_side), Image.LANCZOS)
            buffer = io.BytesIO()
            if image.width * image.height <= 256 * 256:
                image.save(buffer, format="PNG")
                return buffer.getvalue(), "image/png"
            image.save(buffer, format="JPEG", quality=90)
            return buffer.getvalue(), "image/jpeg"
        return self._encoded.get_or_create((image_id, max_side), encode)


def _named_sample(sample: Any, i: int) -> tuple[str, Image.Image]:
    if isinstance(sample, tuple):
        name, image = sample
    elif isinstance(sample, Image.Image):
        name, image = f"sample {i + 1}", sample
    else:
        name, image = Path(sample).name, sample
    return str(name), load_image(image)


def _clean_name(name: str) -> str:
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
