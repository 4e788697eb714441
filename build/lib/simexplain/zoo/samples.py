"""Sample pairs for the zoo's models: two image files that suit each model, used as the
demo's, the web app's and the tests' default pair (`zoo.entry(name).sample_pair()`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .. import datasets
from ..files import atomic_path, write_json_atomic


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
    for path, index in zip(paths, np.flatnonzero(labels == label)[:2]):
        _write_png(path, images[index])
    return paths


def sketch_pair(index: int = 0) -> tuple[Path, Path]:
    """An edge sketch of a Fashion-MNIST test item (`zoo.sketch`: its edges under a seeded
    random affine map) and the item itself, written once as PNG files under the data root,
    with the sketch's affine map T (item pixels -> sketch pixels) beside them as JSON."""
    from . import sketch
    folder = datasets.data_root() / "samples"
    paths = (folder / f"fmnist_sketch_{index}.png", folder / f"fmnist_item_{index}.png")
    if all(path.is_file() for path in paths) and sketch_transform_path(index).is_file():
        return paths
    images, _ = datasets.fashion_mnist("test")
    item = images[index:index + 1]
    drawn, transforms = sketch.sketches(item, np.random.default_rng([index, 15]))
    _write_png(paths[1], item[0])
    _write_png(paths[0], drawn[0])
    write_json_atomic(sketch_transform_path(index), transforms[0].tolist())
    return paths


def sketch_transform_path(index: int = 0) -> Path:
    """The JSON file of the affine map T of `sketch_pair(index)`'s sketch."""
    return datasets.data_root() / "samples" / f"fmnist_sketch_{index}.json"


def _write_png(path: Path, pixels: np.ndarray) -> None:
    with atomic_path(path) as tmp:  # never a half-written sample
        Image.fromarray(pixels).save(tmp, format="PNG")
