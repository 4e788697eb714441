import gzip
import subprocess
import sys

import numpy as np
import pytest

from simexplain import datasets
from simexplain.datasets import (
    FETCH_COMMAND, FMNIST_CLASSES, FMNIST_FETCH_COMMAND, DatasetMissing, IdxError, face_identity,
    face_photos, fashion_mnist, read_idx, write_idx)
from simexplain.errors import SimexplainError


def _idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file written by hand (independently of write_idx)."""
    assert array.dtype == np.uint8
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


@pytest.fixture
def images():
    return np.arange(3 * 28 * 28, dtype=np.int64).reshape(3, 28, 28).astype(np.uint8)


def test_read_idx_raw_and_gz(tmp_path, images):
    raw = tmp_path / "x-idx3-ubyte"
    raw.write_bytes(_idx_bytes(images))
    gz = tmp_path / "x-idx3-ubyte.gz"
    gz.write_bytes(gzip.compress(_idx_bytes(images)))
    for path in (raw, gz):
        loaded = read_idx(path)
        assert loaded.dtype == np.uint8 and loaded.shape == (3, 28, 28)
        np.testing.assert_array_equal(loaded, images)


def test_write_idx_round_trip(tmp_path):
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    path = write_idx(tmp_path / "l-idx1-ubyte.gz", labels)
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    np.testing.assert_array_equal(read_idx(path), labels)
    wide = np.array([[1, -2], [300000, 4]], dtype=np.int32)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "w-idx2", wide)), wide)


@pytest.mark.parametrize("damage", ["magic", "truncated", "extra", "header", "gzip"])
def test_corrupt_idx_names_the_file(tmp_path, images, damage):
    data = _idx_bytes(images)
    path = tmp_path / f"broken-{damage}-idx3-ubyte"
    if damage == "magic":
        data = b"\x12\x34" + data[2:]
    elif damage == "truncated":
        data = data[:-10]
    elif damage == "extra":
        data = data + b"\x00"
    elif damage == "header":
        data = data[:6]
    elif damage == "gzip":
        path = path.with_suffix(".gz")
        data = gzip.compress(data)[:-40]
    path.write_bytes(data)
    with pytest.raises(IdxError) as info:
        read_idx(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, SimexplainError)


def test_missing_idx_file_names_it(tmp_path):
    with pytest.raises(DatasetMissing, match="nowhere-idx1-ubyte"):
        read_idx(tmp_path / "nowhere-idx1-ubyte")


def _fake_split(directory, prefix, n=4, compress=True, label_max=9):
    rng = np.random.default_rng(0)
    suffix = ".gz" if compress else ""
    write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}",
              rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
    write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}",
              np.linspace(0, label_max, n).astype(np.uint8))


def test_fashion_mnist_from_user_directory(tmp_path):
    _fake_split(tmp_path, "t10k", n=5, compress=False)
    images, labels = fashion_mnist("test", root=tmp_path)
    assert images.shape == (5, 28, 28) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and labels.tolist() == [0, 2, 4, 6, 9]


def test_fashion_mnist_rejects_bad_labels(tmp_path):
    _fake_split(tmp_path, "train", n=3, label_max=12)
    with pytest.raises(IdxError, match="train-labels-idx1-ubyte"):
        fashion_mnist("train", root=tmp_path)


def test_fashion_mnist_missing_message_has_fetch_command(tmp_path, monkeypatch):
    with pytest.raises(DatasetMissing) as info:
        fashion_mnist("train", root=tmp_path)
    assert str(tmp_path) in str(info.value)
    assert FMNIST_FETCH_COMMAND in str(info.value)
    # Default search path: the data root, then the system directory.
    monkeypatch.setenv("SIMEXPLAIN_DATA", str(tmp_path / "root"))
    monkeypatch.setattr(datasets, "FMNIST_SYSTEM_DIR", tmp_path / "none")
    with pytest.raises(DatasetMissing) as info:
        fashion_mnist("test")
    assert "apt-get install dataset-fashion-mnist" in str(info.value)
    assert str(tmp_path / "root" / "fashion-mnist") in str(info.value)


def test_fashion_mnist_found_in_data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("SIMEXPLAIN_DATA", str(tmp_path))
    (tmp_path / "fashion-mnist").mkdir()
    _fake_split(tmp_path / "fashion-mnist", "t10k", n=2)
    images, labels = fashion_mnist("test")
    assert images.shape == (2, 28, 28)


def test_unknown_split():
    with pytest.raises(SimexplainError, match="split"):
        fashion_mnist("validation")


def test_fashion_mnist_real_test_split():
    images, labels = fashion_mnist("test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and labels.dtype == np.int64
    assert np.bincount(labels).tolist() == [1000] * 10
    assert len(FMNIST_CLASSES) == 10
    assert 0.25 < images.mean() / 255 < 0.32


def test_data_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SIMEXPLAIN_DATA", str(tmp_path))
    assert datasets.data_root() == tmp_path
    monkeypatch.delenv("SIMEXPLAIN_DATA")
    assert datasets.data_root().parts[-2:] == (".cache", "simexplain")


def test_skimage_photos_offline():
    photos = datasets.skimage_photos(["astronaut", "chelsea", "coffee", "rocket"])
    assert set(photos) == {"astronaut", "chelsea", "coffee", "rocket"}
    assert photos["astronaut"].mode == "RGB" and photos["astronaut"].size == (512, 512)
    assert photos["chelsea"].size == (451, 300)
    with pytest.raises(DatasetMissing, match="unknown"):
        datasets.skimage_photos(["no-such-photo"])


def test_face_photos_missing_says_how_to_fetch(tmp_path):
    with pytest.raises(DatasetMissing) as info:
        face_photos(root=tmp_path)
    assert FETCH_COMMAND in str(info.value)


def test_face_photos_listing(tmp_path):
    directory = tmp_path / "face_recognition" / "test_images"
    directory.mkdir(parents=True)
    for name in ("obama.jpg", "biden.jpg", "notes.txt"):
        (directory / name).write_bytes(b"x")
    found = face_photos(root=tmp_path)
    assert sorted(found) == ["biden", "obama"]
    assert found["obama"] == directory / "obama.jpg"


def test_face_identity():
    assert face_identity("obama") == "obama"
    assert face_identity("obama2") == "obama"
    assert face_identity("obama_small") == "obama"
    assert face_identity("obama_partial_face2.jpg") == "obama"
    assert face_identity("biden") == "biden"
    assert face_identity("32bit") == "obama"


def test_extract_keeps_only_test_images(tmp_path):
    import io
    import tarfile

    archive = tmp_path / "face_recognition-1.3.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, payload in [("face_recognition-1.3.0/tests/test_images/obama.jpg", b"jpg"),
                              ("face_recognition-1.3.0/tests/test_images/readme.txt", b"no"),
                              ("face_recognition-1.3.0/docs/logo.png", b"no"),
                              ("face_recognition-1.3.0/tests/test_images/../../evil.png", b"no")]:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    out = tmp_path / "out"
    out.mkdir()
    names = datasets._extract_test_images(archive, out)
    assert names == ["obama.jpg"]
    assert sorted(p.name for p in out.iterdir()) == ["obama.jpg"]
    assert (out / "obama.jpg").read_bytes() == b"jpg"


def test_fetch_is_quick_when_present(tmp_path, monkeypatch):
    """With every photo already present, fetching downloads nothing."""
    monkeypatch.setenv("SIMEXPLAIN_DATA", str(tmp_path))
    directory = datasets.face_photos_dir()
    directory.mkdir(parents=True)
    for name in datasets.FACE_PHOTO_FILES:
        (directory / name).write_bytes(b"x")

    def no_download(*args, **kwargs):
        raise AssertionError("fetch must not download when the photos are present")

    monkeypatch.setattr(subprocess, "run", no_download)
    assert datasets.fetch_face_photos() == directory
    assert datasets.main(["status"]) in (0, 1)


def test_fetch_failure_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("SIMEXPLAIN_DATA", str(tmp_path))

    class Failed:
        returncode = 1
        stdout = ""
        stderr = "ERROR: no network"

    monkeypatch.setattr(subprocess, "run", lambda *a, **k: Failed())
    with pytest.raises(DatasetMissing, match="no network"):
        datasets.fetch_face_photos()
    # Nothing half-written is left behind.
    assert not datasets.face_photos_dir().exists()
    assert list(datasets.face_photos_dir().parent.iterdir()) == []


def test_module_entry_point_status(tmp_path):
    env = {"SIMEXPLAIN_DATA": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "simexplain.datasets", "status"],
                            capture_output=True, text=True, env=env, timeout=60)
    assert "face photos" in result.stdout
    assert "MISSING" in result.stdout  # the empty data root has no face photos
    assert result.returncode == 1


def test_a_16_bit_photo_gives_the_pixels_any_image_load_gives(tmp_path, monkeypatch):
    from PIL import Image
    from simexplain.images import load_image
    values = np.linspace(0, 40000, 32 * 48).reshape(32, 48).astype(np.uint16)  # not full range
    Image.fromarray(values).save(tmp_path / "wide.png")
    monkeypatch.setattr(datasets, "_skimage_data_dir", lambda: tmp_path)
    monkeypatch.setitem(datasets.SKIMAGE_PHOTO_FILES, "wide", "wide.png")
    photo = datasets.skimage_photos(["wide"])["wide"]
    loaded = load_image(tmp_path / "wide.png")
    assert photo.mode == "RGB" and np.array_equal(np.asarray(photo), np.asarray(loaded))
    # the fixed 16-bit scale (0..65535 -> 0..255), not a stretch of this photo's own range
    assert np.asarray(photo)[..., 0].max() == round(40000 * 255 / 65535)
