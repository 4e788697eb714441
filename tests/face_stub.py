"""A stand-in face detector for tests of how face crops are shown: `fixed_faces()` makes
`simexplain.faces.crop_face` (what an Explainer with faces=True calls) cut the same part of
every photo (`face_box`), so that a toy model sees "face crops" without a face detector."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from PIL import Image

# the "face": (top, left, bottom, right) as fractions of the photo's height and width; a tall
# box off the centre, so that it differs from the photo in place and in shape
FACE = (0.125, 0.4375, 0.75, 0.9375)


def face_box(height: int, width: int) -> tuple[int, int, int, int]:
    """The "face" of a photo of (height, width), in its pixels."""
    top, left, bottom, right = FACE
    return (round(top * height), round(left * width), round(bottom * height),
            round(right * width))


def crop_face(image: Image.Image, margin: float = 0.2, size: int | None = None,
              name: str | None = None) -> tuple[Image.Image, tuple[int, int, int, int]]:
    top, left, bottom, right = face_box(image.height, image.width)
    return image.crop((left, top, right, bottom)), (top, left, bottom, right)


@contextmanager
def fixed_faces() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("simexplain.faces.crop_face", crop_face)
        yield


def face_explainer(size: int = 64):
    """The toy CNN as a face model: it explains the "face" of each photo (within
    `fixed_faces()`), resized to size x size (an 8x8 grid at 64)."""
    from simexplain.explainer import Explainer
    from simexplain.images import Preprocess
    from simexplain.toy import tiny_cnn
    return Explainer(tiny_cnn(), "features", similarity="cosine", faces=True,
                     transform=Preprocess(size=(size, size)), model_name="toy-faces")
