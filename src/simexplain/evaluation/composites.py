"""Composites built from real items, with known boxes: the ground truth of the benchmarks.

Items come from three sources (``item_source(domain)``):

* ``fmnist``: Fashion-MNIST test items (28x28, gray); label = the clothing class; two items of
  a class are different instances of it.
* ``photos``: scikit-image's bundled photos; an item is a random view of one photo (a crop of
  40-90% of its area, maybe mirrored); label = the photo (motorcycle_left and motorcycle_right
  show the same motorcycle and share a label), so a match is another view of the same scene.
* ``faces``: face crops of the face_recognition test photos (plus the astronaut photo's face);
  label = the person; a view jitters the detected box a little and may mirror it. 32bit.png is
  left out: it is a copy of obama2.jpg.

Composites (``Composite``: the image, every item's box, the matching item's index):

* ``grid2x2``: 4 items in a 2x2 grid of equal square cells; boxes are the cells.
* ``canvas_with_target``: a 2x2 grid of distractors with the target pasted over it at a given
  position and size; its box is the pasted square (for Fashion-MNIST, the tight box of the
  item's own pixels inside it).

Boxes are ``(top, left, bottom, right)`` in pixels, bottom/right exclusive.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps

from ..errors import DatasetMissing, SimexplainError

Box = tuple[int, int, int, int]
FMNIST_FOREGROUND = 25  # gray level above which a Fashion-MNIST pixel belongs to the item


@dataclass
class Item:
    """One real item, as a square RGB image of the size asked for."""

    image: Image.Image
    label: str
    name: str  # where it comes from (index or photo name), for the record
    box: Box | None = None  # the object's box inside the image (None: the whole image)

    @property
    def object_box(self) -> Box:
        return self.box if self.box is not None else (0, 0, self.image.height, self.image.width)


@dataclass
class Composite:
    image: Image.Image
    boxes: list[Box]  # one per placed item
    target: int = 0  # index (into boxes) of the item that matches the query
    labels: list[str] = field(default_factory=list)
    object_boxes: list[Box] = field(default_factory=list)  # tight boxes of the items

    @property
    def target_box(self) -> Box:
        return self.boxes[self.target]

    @property
    def target_object_box(self) -> Box:
        return (self.object_boxes or self.boxes)[self.target]


# -- composites --------------------------------------------------------------------------------
def grid2x2(items: list[Item], target: int = 0) -> Composite:
    """Four equally sized square items in a 2x2 grid (row-major): cell boxes are exact."""
    if len(items) != 4:
        raise SimexplainError(f"a 2x2 grid needs 4 items, got {len(items)}")
    cell = items[0].image.width
    if any(it.image.size != (cell, cell) for it in items):
        raise SimexplainError("grid items must be squares of one size")
    canvas = Image.new("RGB", (2 * cell, 2 * cell))
    boxes, objects = [], []
    for i, it in enumerate(items):
        top, left = (i // 2) * cell, (i % 2) * cell
        canvas.paste(it.image, (left, top))
        boxes.append((top, left, top + cell, left + cell))
        t, l, b, r = it.object_box
        objects.append((top + t, left + l, top + b, left + r))
    return Composite(canvas, boxes, target, [it.label for it in items], objects)


def canvas_with_target(target: Item, distractors: list[Item], position: tuple[int, int]
                       ) -> Composite:
    """A 2x2 grid of 4 distractors with `target` pasted over it at (top, left).

    The target keeps its own size; its box (index 0) is where it was pasted.
    """
    base = grid2x2(distractors)
    size = target.image.width
    top, left = position
    side = base.image.width
    if not (0 <= top <= side - size and 0 <= left <= side - size):
        raise SimexplainError(f"target of size {size} at {position} leaves the {side} px canvas")
    image = base.image.copy()
    image.paste(target.image, (left, top))
    t, l, b, r = target.object_box
    box = (top, left, top + size, left + size)
    return Composite(image, [box], 0, [target.label], [(top + t, left + l, top + b, left + r)])


def random_canvas(target_source: Item, distractors: list[Item], rng: np.random.Generator,
                  scale: tuple[float, float], resize: Callable[[Item, int], Item]) -> Composite:
    """`canvas_with_target` with the target at a random size (fraction `scale` of the canvas
    side) and position; `resize(item, side)` rescales an item."""
    side = 2 * distractors[0].image.width
    size = int(round(rng.uniform(*scale) * side))
    size = max(4, min(size, side))
    target = resize(target_source, size)
    top = int(rng.integers(0, side - size + 1))
    left = int(rng.integers(0, side - size + 1))
    return canvas_with_target(target, distractors, (top, left))


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two (top, left, bottom, right) boxes."""
    top, left = max(a[0], b[0]), max(a[1], b[1])
    bottom, right = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0, bottom - top) * max(0, right - left)
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / area if area > 0 else 0.0


def foreground_box(gray: np.ndarray, threshold: float = FMNIST_FOREGROUND) -> Box | None:
    """Tight box of the pixels above `threshold` (None if there are none)."""
    rows = np.flatnonzero((gray > threshold).any(axis=1))
    cols = np.flatnonzero((gray > threshold).any(axis=0))
    if len(rows) == 0:
        return None
    return (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)


# -- item sources ------------------------------------------------------------------------------
class ItemSource:
    """Real items of one domain: pairs of a query and its match, and distractors."""

    domain = ""

    def labels(self) -> list[str]:
        raise NotImplementedError

    def pair(self, rng: np.random.Generator, size: int, match_size: int | None = None
             ) -> tuple[Item, Item]:
        """A query and a different item (or view) of the same label."""
        raise NotImplementedError

    def distractors(self, rng: np.random.Generator, exclude: str, count: int, size: int
                    ) -> list[Item]:
        """`count` items whose label is not `exclude`, distinct labels while there are enough."""
        raise NotImplementedError

    def resize(self, item: Item, size: int) -> Item:
        """The item rescaled to a `size` x `size` square (its box rescaled with it)."""
        scale = size / item.image.width
        box = None
        if item.box is not None:
            t, l, b, r = item.box
            box = (int(np.floor(t * scale)), int(np.floor(l * scale)),
                   int(np.ceil(b * scale)), int(np.ceil(r * scale)))
        return Item(item.image.resize((size, size), Image.Resampling.BILINEAR), item.label,
                    item.name, box)

    def _other_labels(self, rng, exclude: str, count: int) -> list[str]:
        others = [lab for lab in self.labels() if lab != exclude]
        if not others:
            raise SimexplainError(f"no {self.domain} item has a label other than {exclude!r}")
        chosen = list(rng.permutation(others)[:count])
        while len(chosen) < count:  # fewer labels than wanted: repeat some (other views)
            chosen.append(others[int(rng.integers(len(others)))])
        return [str(c) for c in chosen]


class FmnistSource(ItemSource):
    """Fashion-MNIST test items; an item's box is the tight box of its pixels."""

    domain = "fmnist"

    def __init__(self, split: str = "test"):
        from ..datasets import FMNIST_CLASSES, fashion_mnist
        self.images, self.targets = fashion_mnist(split)
        self.class_names = FMNIST_CLASSES
        self.by_class = {c: np.flatnonzero(self.targets == c) for c in range(len(FMNIST_CLASSES))}

    def labels(self) -> list[str]:
        return [str(c) for c in self.by_class if len(self.by_class[c])]

    def item(self, index: int, size: int = 28) -> Item:
        gray = self.images[index]
        image = Image.fromarray(np.ascontiguousarray(gray, dtype=np.uint8)).convert("RGB")
        box = foreground_box(gray)
        it = Item(image, str(int(self.targets[index])), f"fmnist-test-{index}", box)
        return it if size == 28 else self.resize(it, size)

    def resize(self, item: Item, size: int) -> Item:
        image = item.image.resize((size, size), Image.Resampling.BILINEAR)
        box = foreground_box(np.asarray(image.convert("L")))
        return Item(image, item.label, item.name, box)

    def pair(self, rng: np.random.Generator, size: int, match_size: int | None = None
             ) -> tuple[Item, Item]:
        label = int(rng.integers(len(self.class_names)))
        i, j = rng.choice(self.by_class[label], size=2, replace=False)
        return self.item(int(i), size), self.item(int(j), match_size or size)

    def distractors(self, rng: np.random.Generator, exclude: str, count: int, size: int
                    ) -> list[Item]:
        return [self.item(int(rng.choice(self.by_class[int(lab)])), size)
                for lab in self._other_labels(rng, exclude, count)]


def random_view(image: Image.Image, rng: np.random.Generator, size: int,
                area: tuple[float, float] = (0.4, 0.9), flip: bool = True) -> Image.Image:
    """A random square-ish crop covering a fraction `area` of the image, resized to `size`."""
    width, height = image.size
    frac = rng.uniform(*area)
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    w = int(round(np.sqrt(frac * width * height * aspect)))
    h = int(round(np.sqrt(frac * width * height / aspect)))
    w, h = max(8, min(w, width)), max(8, min(h, height))
    left = int(rng.integers(0, width - w + 1))
    top = int(rng.integers(0, height - h + 1))
    view = image.crop((left, top, left + w, top + h)).resize((size, size),
                                                             Image.Resampling.BILINEAR)
    if flip and rng.random() < 0.5:
        view = ImageOps.mirror(view)
    return view


# Photos that show the same scene share a label.
_PHOTO_LABELS = {"motorcycle_left": "motorcycle", "motorcycle_right": "motorcycle"}


class PhotoSource(ItemSource):
    """Views of scikit-image's photos; the label is the scene."""

    domain = "photos"

    def __init__(self) -> None:
        from ..datasets import skimage_photos
        self.photos = skimage_photos()
        self.by_label: dict[str, list[str]] = {}
        for name in self.photos:
            self.by_label.setdefault(_PHOTO_LABELS.get(name, name), []).append(name)

    def labels(self) -> list[str]:
        return sorted(self.by_label)

    def view(self, label: str, rng: np.random.Generator, size: int) -> Item:
        name = str(rng.choice(self.by_label[label]))
        return Item(random_view(self.photos[name], rng, size), label, name)

    def pair(self, rng: np.random.Generator, size: int, match_size: int | None = None
             ) -> tuple[Item, Item]:
        label = str(rng.choice(self.labels()))
        return self.view(label, rng, size), self.view(label, rng, match_size or size)

    def distractors(self, rng: np.random.Generator, exclude: str, count: int, size: int
                    ) -> list[Item]:
        return [self.view(lab, rng, size) for lab in self._other_labels(rng, exclude, count)]


@functools.lru_cache(maxsize=1)
def _face_boxes() -> tuple[tuple[str, str, Image.Image, tuple[int, int, int, int]], ...]:
    """(name, person, photo, detected box with margin) of every usable face photo."""
    from ..datasets import face_identity, face_photos, skimage_photos
    from ..faces import crop_face
    from ..images import load_image
    found = []
    for name, path in face_photos().items():
        if name == "32bit":  # a copy of obama2.jpg
            continue
        photo = load_image(path)
        try:
            _, box = crop_face(photo, margin=0.2, size=None)
        except SimexplainError:
            continue
        found.append((name, face_identity(name), photo, box))
    try:
        photo = skimage_photos(["astronaut"])["astronaut"]
        _, box = crop_face(photo, margin=0.2, size=None)
        found.append(("astronaut", "astronaut", photo, box))
    except SimexplainError:
        pass
    return tuple(found)


class FaceSource(ItemSource):
    """Face crops (jittered views of the detected face box); the label is the person."""

    domain = "faces"

    def __init__(self) -> None:
        self.faces = _face_boxes()
        self.by_label: dict[str, list[int]] = {}
        for i, (_, person, _, _) in enumerate(self.faces):
            self.by_label.setdefault(person, []).append(i)
        if not any(len(v) >= 2 for v in self.by_label.values()) or len(self.by_label) < 2:
            raise DatasetMissing("the face benchmarks need two photos of one person and another "
                                 "person; fetch the face photos (python -m simexplain.datasets "
                                 "fetch)")

    def labels(self) -> list[str]:
        return sorted(self.by_label)

    def view(self, index: int, rng: np.random.Generator, size: int) -> Item:
        name, person, photo, (top, left, bottom, right) = self.faces[index]
        h, w = bottom - top, right - left
        grow = rng.uniform(1.0, 1.15)
        cy = (top + bottom) / 2 + rng.uniform(-0.04, 0.04) * h
        cx = (left + right) / 2 + rng.uniform(-0.04, 0.04) * w
        half = max(h, w) * grow / 2
        crop = photo.crop((int(cx - half), int(cy - half), int(cx + half), int(cy + half)))
        image = crop.resize((size, size), Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            image = ImageOps.mirror(image)
        return Item(image, person, name)

    def pair(self, rng: np.random.Generator, size: int, match_size: int | None = None
             ) -> tuple[Item, Item]:
        people = [p for p, v in self.by_label.items() if len(v) >= 2]
        person = str(rng.choice(sorted(people)))
        i, j = rng.choice(self.by_label[person], size=2, replace=False)
        return self.view(int(i), rng, size), self.view(int(j), rng, match_size or size)

    def distractors(self, rng: np.random.Generator, exclude: str, count: int, size: int
                    ) -> list[Item]:
        return [self.view(int(rng.choice(self.by_label[lab])), rng, size)
                for lab in self._other_labels(rng, exclude, count)]


_SOURCES = {"fmnist": FmnistSource, "photos": PhotoSource, "faces": FaceSource}
_CACHE: dict[str, ItemSource] = {}


def item_source(domain: str) -> ItemSource:
    """The (cached) item source of a domain: fmnist, photos or faces."""
    if domain not in _SOURCES:
        raise SimexplainError(f"unknown item domain {domain!r}; choose from {', '.join(_SOURCES)}")
    if domain not in _CACHE:
        _CACHE[domain] = _SOURCES[domain]()
    return _CACHE[domain]


def matching_grid(source: ItemSource, rng: np.random.Generator, query_size: int, cell: int
                  ) -> tuple[Item, Composite]:
    """A query item and a 2x2 grid of which exactly one cell (at random) matches it."""
    query, match = source.pair(rng, query_size, cell)
    others = source.distractors(rng, query.label, 3, cell)
    target = int(rng.integers(4))
    items = others[:target] + [match] + others[target:]
    return query, grid2x2(items, target)
