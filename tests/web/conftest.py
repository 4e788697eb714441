"""Shared fixtures of the web tests: a toy model, generated images, a tiny gallery index."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from simexplain.explainer import Explainer
from simexplain.images import Preprocess
from simexplain.toy import tiny_cnn

SIZE = 64  # toy input side: an 8x8 feature grid


def pytest_configure(config):
    # starlette's test client runs on httpx and says so on import
    config.addinivalue_line("filterwarnings",
                            "ignore:Using `httpx` with `starlette.testclient`")


def toy_explainer() -> Explainer:
    return Explainer(tiny_cnn(), "features", similarity="cosine",
                     transform=Preprocess(size=(SIZE, SIZE)), model_name="toy")


def pattern(kind: int, size: int = 96) -> np.ndarray:
    """One of several textures: stripes, checks, blobs and gradients in different colours."""
    y, x = np.mgrid[0:size, 0:size] / size
    palette = [(230, 40, 40), (40, 90, 230), (40, 200, 60), (240, 200, 30), (160, 60, 200),
               (30, 200, 200)]
    colour = np.array(palette[kind % len(palette)], dtype=np.float64)
    if kind % 3 == 0:
        mask = (np.sin(x * 40 + kind) > 0)
    elif kind % 3 == 1:
        mask = ((x * 8).astype(int) + (y * 8).astype(int)) % 2 == 0
    else:
        mask = ((x - 0.5) ** 2 + (y - 0.5) ** 2) < 0.12
    out = np.where(mask[..., None], colour, 255 - colour * 0.6)
    return out.astype(np.uint8)


def two_part(left: int, right: int, size: int = 96) -> Image.Image:
    """An image whose left and right halves show different patterns."""
    a, b = pattern(left, size), pattern(right, size)
    image = np.concatenate([a[:, : size // 2], b[:, size // 2:]], axis=1)
    return Image.fromarray(image)


@pytest.fixture(scope="session")
def explainer():
    return toy_explainer()


@pytest.fixture(scope="session")
def gallery_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gallery")
    k = 0
    for left in range(6):
        for right in range(6):
            if (left + right) % 3 == 0 and left != right:
                two_part(left, right).save(folder / f"img{k:02d}_{left}{right}.png")
                k += 1
    for kind in range(6):
        Image.fromarray(pattern(kind)).save(folder / f"plain{kind}.png")
    return folder


@pytest.fixture(scope="session")
def index_dir(gallery_dir, explainer, tmp_path_factory):
    from simexplain.retrieval import Index
    out = tmp_path_factory.mktemp("index") / "toy-index"
    Index.build(gallery_dir, explainer, model_name="toy", out=out, progress=False)
    return out


@pytest.fixture(scope="session")
def samples():
    return [("left-right", two_part(0, 4)), ("checks", Image.fromarray(pattern(1))),
            ("blob", Image.fromarray(pattern(2)))]


NO_FACE = (77, 50)  # the size of the image the picky model refuses


@pytest.fixture(scope="session")
def picky():
    """(a toy model that refuses one image, as a face model refuses a photo without a face;
    that image, named "no-face")."""
    from simexplain.errors import SimexplainError
    explainer = Explainer(tiny_cnn(), "features", similarity="cosine",
                          transform=Preprocess(size=(SIZE, SIZE)))
    explainer.model_name = "picky"
    sides = explainer.sides

    def refusing(images, *args, **kwargs):
        images = list(images)
        for image in images:
            if getattr(image, "size", None) == NO_FACE:
                raise SimexplainError(f"no face found ({image.width}x{image.height} pixels)")
        return sides(images, *args, **kwargs)
    explainer.sides = refusing
    return explainer, ("no-face", Image.fromarray(pattern(4)).resize(NO_FACE))


@pytest.fixture(scope="session")
def kit():
    """The image makers, for tests (the test modules cannot import this conftest by name)."""
    return SimpleNamespace(size=SIZE, pattern=pattern, two_part=two_part)
