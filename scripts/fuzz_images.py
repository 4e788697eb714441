"""Seeded fuzz of the image loader: every file is either a loaded RGB image or an ImageError.

Cases: valid PNG/JPEG/GIF/TIFF/WebP/BMP/PPM (and AVIF where Pillow has it), truncated copies,
byte flips, random bytes behind real magic numbers, headers declaring huge sizes (decompression
bombs such as `P6 99999999 99999999`, a PNG of 40000000x1 16-bit RGBA), bombs in disguise
(an icon whose directory says 256x256 over an 8900x8900 PNG or bitmap, a TIFF whose second page
is huge, a GIF whose first frame sits far outside its small screen), very long file names, and
16-bit and float images in and out of range.

    python scripts/fuzz_images.py --count 2500 --seed 0     # the soak (README: Reliability)

tests/test_image_fuzz.py runs a few hundred of the same cases in `make test`.
"""

from __future__ import annotations

import argparse
import collections
import io
import struct
import sys
import tempfile
import time
import traceback
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, features

FORMATS = ["PNG", "JPEG", "GIF", "TIFF", "WEBP", "BMP", "PPM"] + \
    (["AVIF"] if features.check("avif") else [])
KINDS = ("valid", "truncated", "flipped", "random", "bomb", "long-name", "wide", "disguised")


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def _picture(rng: np.random.Generator) -> Image.Image:
    height, width = (int(v) for v in rng.integers(1, 48, 2))
    mode = str(rng.choice(["RGB", "L", "RGBA", "P"]))
    array = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(array)
    return image.convert(mode) if mode != "P" else image.quantize(8)


def _valid(rng: np.random.Generator) -> bytes:
    fmt = str(rng.choice(FORMATS))
    image = _picture(rng)
    if fmt in ("JPEG", "PPM") and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    if fmt == "AVIF" and image.mode == "P":
        image = image.convert("RGB")
    return _encode(image, fmt)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + \
        struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header(width: int, height: int, depth: int = 8, color: int = 6,
               body: bytes = b"") -> bytes:
    """A PNG with a valid IHDR declaring width x height, and `body` as its (short) IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) +
            _png_chunk(b"IDAT", zlib.compress(body)) + _png_chunk(b"IEND", b""))


def _bomb(rng: np.random.Generator) -> bytes:
    big = int(rng.integers(7000, 99999999))
    choice = int(rng.integers(0, 6))
    if choice == 0:
        return f"P6 {big} {big} 255\n".encode()
    if choice == 1:
        return b"P6 99999999 99999999"
    if choice == 2:  # the 40000000 x 1, 16-bit RGBA
        return png_header(40_000_000, 1, depth=16, color=6, body=b"\0" * 64)
    if choice == 3:
        return png_header(big, big, depth=int(rng.choice([1, 8, 16])), color=0)
    if choice == 4:  # GIF: logical screen and image both huge
        return (b"GIF89a" + struct.pack("<HHBBB", 65535, 65535, 0, 0, 0) + b"," +
                struct.pack("<HHHHB", 0, 0, 65535, 65535, 0) + b"\x08\x02\x4c\x01\x00;")
    header = struct.pack("<2sIHHI", b"BM", 0, 0, 0, 54)  # BMP, BITMAPINFOHEADER
    return header + struct.pack("<IiiHHIIiiII", 40, big, big, 1, 24, 0, 0, 0, 0, 0, 0)


def flat_png(width: int, height: int, depth: int = 8, color: int = 3) -> bytes:
    """A PNG of one colour (palette, or grey with color=0) of any size, compressed row by row
    without allocating its pixels: 8900x8900 is about 80 KB, 40 Mpx 16-bit grey about 160 KB."""
    packer = zlib.compressobj(9)
    row = b"\x00" * (width * max(1, depth // 8) + 1)  # filter byte 0, then zero samples
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    palette = _png_chunk(b"PLTE", b"\x40\x80\xc0") if color == 3 else b""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + palette
            + _png_chunk(b"IDAT", body) + _png_chunk(b"IEND", b""))


def icon_bomb(side: int = 8900, bitmap: bool = False) -> bytes:
    """An ICO whose directory lists one 256x256 entry that holds a side x side PNG (the issue's
    231 KB file) or, with `bitmap`, a bitmap header declaring side x side."""
    if bitmap:  # BITMAPINFOHEADER: width, height of colour and mask rows, 1 plane, 1 bit
        inner = struct.pack("<IiiHHIIiiII", 40, side, 2 * side, 1, 1, 0, 0, 0, 0, 0, 0)
    else:
        inner = flat_png(side, side)
    return (struct.pack("<HHH", 0, 1, 1)
            + struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(inner), 22) + inner)


def tiff_pages(side: int = 8900) -> bytes:
    """A two-page grey TIFF: an 8x8 first page, then a page declaring side x side (its one
    strip a few bytes: the header is what counts)."""
    def page(width: int, height: int, data_at: int, data: int, next_at: int) -> bytes:
        tags = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1),
                (273, 4, data_at), (277, 3, 1), (278, 4, height), (279, 4, data)]
        return (struct.pack("<H", len(tags))
                + b"".join(struct.pack("<HHII", tag, kind, 1, value)
                           for tag, kind, value in tags) + struct.pack("<I", next_at))
    ifd = 2 + 9 * 12 + 4
    first, second, pixels = 8, 8 + ifd, 8 + 2 * ifd
    return (b"II*\x00" + struct.pack("<I", first) + page(8, 8, pixels, 64, second)
            + page(side, side, pixels, 64, 0) + b"\x80" * 64)


def gif_frame_bomb(side: int = 8900) -> bytes:
    """A GIF whose logical screen is 16x16 and whose first frame, 1x1, sits at (side - 1,
    side - 1): decoding it means a side x side canvas."""
    return (b"GIF89a" + struct.pack("<HHBBB", 16, 16, 0, 0, 0) + b","
            + struct.pack("<HHHHB", side - 1, side - 1, 1, 1, 0) + b"\x08\x02\x4c\x01\x00;")


# The disguised bombs: each must be refused naming the real size of what it would decode
DISGUISED = {"icon-png": lambda: icon_bomb(), "icon-bitmap": lambda: icon_bomb(bitmap=True),
             "tiff-pages": lambda: tiff_pages(), "gif-frame": lambda: gif_frame_bomb()}


def _wide(rng: np.random.Generator) -> tuple[bytes, str]:
    """16-bit and float images: in range (must load) or out of range / NaN (must be refused)."""
    height, width = (int(v) for v in rng.integers(1, 32, 2))
    choice = int(rng.integers(0, 4))
    if choice == 0:
        values = rng.integers(0, 65536, (height, width)).astype(np.uint16)
        return _encode(Image.fromarray(values), "PNG"), "png"
    if choice == 1:
        values = rng.random((height, width)).astype(np.float32)
        return _encode(Image.fromarray(values), "TIFF"), "tif"
    if choice == 2:
        values = (rng.random((height, width)) * 300 - 20).astype(np.float32)
        if rng.random() < 0.3:
            values[0, 0] = np.nan
        return _encode(Image.fromarray(values), "TIFF"), "tif"
    values = rng.integers(-70000, 140000, (height, width)).astype(np.int32)
    return _encode(Image.fromarray(values), "TIFF"), "tif"


def case(seed: int, index: int, folder: Path) -> tuple[str, Path]:
    """Write fuzz case `index` of run `seed` into folder: (kind, path)."""
    rng = np.random.default_rng([seed, index])
    kind = KINDS[index % len(KINDS)]
    suffix = str(rng.choice(["png", "jpg", "gif", "tif", "webp", "bmp", "ppm", "bin"]))
    name = f"case{index}.{suffix}"
    if kind == "valid":
        data = _valid(rng)
    elif kind == "truncated":
        full = _valid(rng)
        data = full[:int(rng.integers(0, len(full)))]
    elif kind == "flipped":
        data = bytearray(_valid(rng))
        for _ in range(int(rng.integers(1, 12))):
            data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
        data = bytes(data)
    elif kind == "random":
        magic = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"II*\x00", b"MM\x00*",
                 b"RIFF\0\0\0\0WEBP", b"BM", b"P6 ", b"\0\0\0\x1cftypavif"]
        data = magic[int(rng.integers(0, len(magic)))] + \
            rng.integers(0, 256, int(rng.integers(0, 400)), dtype=np.uint8).tobytes()
    elif kind == "bomb":
        data = _bomb(rng)
    elif kind == "long-name":
        data = _valid(rng)
        name = "x" * int(rng.integers(200, 400)) + f"{index}.png"
    elif kind == "wide":
        data, suffix = _wide(rng)
        name = f"case{index}.{suffix}"
    else:
        data = DISGUISED[sorted(DISGUISED)[int(rng.integers(0, len(DISGUISED)))]]()
    path = folder / name
    try:
        path.write_bytes(data)
    except OSError:
        pass  # a name too long to create: the loader must still answer with an ImageError
    return kind, path


def run(count: int, seed: int = 0, verbose: bool = False) -> dict:
    """Load `count` fuzz cases; tally outcomes per kind, with any unhandled exception."""
    from simexplain.errors import ImageError
    from simexplain.images import load_image

    tally: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    unhandled: list[str] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="simexplain-fuzz-") as tmp:
        folder = Path(tmp)
        for index in range(count):
            kind, path = case(seed, index, folder)
            try:
                image = load_image(path)
                assert image.mode == "RGB" and image.width * image.height > 0
                tally[kind]["loaded"] += 1
            except ImageError:
                tally[kind]["ImageError"] += 1
            except Exception as exc:  # noqa: BLE001 - what the fuzz is looking for
                tally[kind]["unhandled"] += 1
                unhandled.append(f"case {index} ({kind}, {path.name[:40]}): "
                                 f"{type(exc).__name__}: {exc}")
                if verbose:
                    traceback.print_exc()
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass  # never created (name too long)
    return {"count": count, "seed": seed, "seconds": time.perf_counter() - started,
            "by_kind": {k: dict(v) for k, v in sorted(tally.items())}, "unhandled": unhandled}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    result = run(args.count, args.seed, args.verbose)
    print(f"{result['count']} fuzzed images (seed {result['seed']}) in "
          f"{result['seconds']:.1f} s; formats: {', '.join(FORMATS)}")
    for kind, counts in result["by_kind"].items():
        print(f"  {kind:10s} " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    print(f"unhandled exceptions: {len(result['unhandled'])}")
    for line in result["unhandled"][:20]:
        print("  " + line)
    return 1 if result["unhandled"] else 0


if __name__ == "__main__":
    sys.exit(main())
