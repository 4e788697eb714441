"""Sample pairs for the zoo's models: two image files that suit each model, used as the
demo's, the web app's and the tests' default pair (`zoo.entry(name).sample_pair()`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .. import datasets


def stereo_pair() -> tuple[Path, Path]:
    """scikit-image's rectified motorcycle stereo pair: one scene from two cameras."""
    return (datasets.skimage_photo_path("motorcycle_left"),
            datasets.skimage_photo_path("motorcycle_right"))


def face_pair() -> tuple[Path, Path]:
    """Two photos of the same person (face_recognition's test images)."""
    photos = datasets.face_photos()
    missing = [name for name in ("obama", "obama2") if name not in photos]
    if missing:
        raise datasets.DatasetMissing(
            f"face photos {', '.join(missing)} not found in {datasets.face_photos_dir()}; "
            f"fetch them with `{datasets.FETCH_COMMAND}`")
    return photos["obama"], photos["obama2"]


def fashion_pair(label: int = 7) -> tuple[Path, Path]:
    """Two Fashion-MNIST test items of one class (sneakers by default), written once as PNG
    files under the data root (the IDX files hold no image files to point at)."""
    folder = datasets.data_root() / "samples"
    paths = (folder / f"fmnist_{label}_0.png", folder / f"fmnist_{label}_1.png")
    if all(path.is_file() for path in paths):
        return paths
    images, labels = datasets.fashion_mnist("test")
    folder.mkdir(parents=True, exist_ok=True)
    for path, index in zip(paths, np.flatnonzero(labels == label)[:2]):
        partial = path.with_name(f".{path.name}.partial")  # never a half-written sample
        Image.fromarray(images[index]).save(partial, format="PNG")
        partial.replace(path)
    return paths
