"""Every zoo model offers a real sample pair that it can explain."""

import pytest
from PIL import Image

from simexplain import datasets, zoo


@pytest.mark.parametrize("name", zoo.list())
def test_sample_pair_is_two_readable_images(name):
    a, b = zoo.entry(name).sample_pair()
    assert a != b
    for path in (a, b):
        with Image.open(path) as image:
            assert min(image.size) >= 28


def test_face_model_pairs_two_photos_of_one_person():
    a, b = zoo.entry("facenet").sample_pair()
    assert datasets.face_identity(a) == datasets.face_identity(b)


def test_fashion_pair_is_one_class_written_once(tmp_path, monkeypatch):
    monkeypatch.setenv("SIMEXPLAIN_DATA", str(tmp_path))
    a, b = zoo.entry("fmnist-gap").sample_pair()
    assert a.parent == tmp_path / "samples"
    images, labels = datasets.fashion_mnist("test")
    import numpy as np
    written = [np.asarray(Image.open(p)) for p in (a, b)]
    matches = [int(np.flatnonzero((images == w).all(axis=(1, 2)))[0]) for w in written]
    assert labels[matches[0]] == labels[matches[1]]
    stamp = a.stat().st_mtime_ns
    assert zoo.entry("fmnist-gmp").sample_pair() == (a, b)
    assert a.stat().st_mtime_ns == stamp  # not rewritten
