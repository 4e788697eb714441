"""One input pipeline per model stream: load, convert, optionally detect and crop the face,
resize and normalise, and remember where the model input lies in the photo.

    pipeline = InputPipeline(Preprocess(size=(224, 224), keep_aspect=True))
    prepared = pipeline.prepare("photo.jpg")
    prepared.tensor          # (1, C, h, w) model input
    prepared.photo           # the photo itself (RGB, the file's pixels)
    prepared.frame           # photo size, crop box (file pixels), input size: the mapping

Everything that turns an image into a model input (the Explainer, the CLI, retrieval, the web
app, the demo) goes through here, so that they all give a model the same tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable

import torch
from PIL import Image

from .errors import ImageError
from .images import ImageInput, Preprocess, blank_image, check_tensor, load_image
from .maps import Frame

Transform = Callable[[Image.Image], torch.Tensor]
FACE_MARGIN = 0.2  # of the detected box, in all (FaceNet's own code adds about that much)


@dataclass
class PreparedImage:
    """One image ready for a model, and where the model's input lies in it."""

    tensor: torch.Tensor  # (1, C, h, w)
    photo: Image.Image  # the image as given, RGB (a gray canvas for tensor inputs)
    frame: Frame  # photo size, the box of it the model sees, the input size


class InputPipeline:
    """Image -> model input for one model stream.

    transform: PIL image -> (C, H, W) tensor; it must map the whole image onto its output
        (resize, normalise; no cropping), so that input pixels map back to the photo's.
        Default: `Preprocess()` (224x224, ImageNet normalisation).
    faces: detect the largest face and give the model that crop (face-recognition models);
        a photo without a face is an ImageError.
    """

    def __init__(self, transform: Transform | None = None, faces: bool = False,
                 face_margin: float = FACE_MARGIN):
        self.transform = transform or Preprocess()
        self.faces = faces
        self.face_margin = face_margin

    def __repr__(self) -> str:
        return f"InputPipeline({self.transform!r}, faces={self.faces})"

    def prepare(self, image: ImageInput, name: str = "image") -> PreparedImage:
        """The model input of a path, a PIL image or a ready (1, C, H, W) tensor."""
        if isinstance(image, torch.Tensor):
            tensor = check_tensor(image, name=name)
            if tensor.shape[0] != 1:
                raise ImageError(f"{name}: expected one image (1, C, H, W), got "
                                 f"{tuple(tensor.shape)}")
            size = (int(tensor.shape[2]), int(tensor.shape[3]))
            return PreparedImage(tensor, blank_image(size), Frame.whole(size))
        photo = load_image(image)
        box = (0, 0, photo.height, photo.width)
        seen = photo
        if self.faces:
            from .faces import crop_face
            source = str(image) if isinstance(image, (str, Path)) else name
            seen, box = crop_face(photo, margin=self.face_margin, size=None, name=source)
        tensor = check_tensor(self.transform(seen), name=name)
        frame = Frame((photo.height, photo.width), box,
                      (int(tensor.shape[2]), int(tensor.shape[3])))
        return PreparedImage(tensor, photo, frame)
