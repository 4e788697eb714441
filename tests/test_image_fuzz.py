"""Every bad image is an ImageError naming the file, refused before it is decoded where the
header already says it is too large; 16-bit and float images give what their 8-bit equivalent
gives; the command line prints one line for any simexplain error."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from simexplain import ImageError, Preprocess
from simexplain.cli import main
from simexplain.images import MAX_PIXELS, check_image_file, load_image

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("fuzz_images", ROOT / "scripts" / "fuzz_images.py")
fuzz = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz)


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's notes on the corrupt files
def test_seeded_fuzz_has_no_unhandled_exceptions():
    result = fuzz.run(400, seed=1)  # 50 of each kind
    assert result["unhandled"] == []
    by_kind = result["by_kind"]
    assert by_kind["valid"] == {"loaded": 50}  # the unmodified files all load
    assert by_kind["bomb"] == {"ImageError": 50}  # and no bomb does
    assert by_kind["random"].get("loaded", 0) == 0
    assert by_kind["disguised"] == {"ImageError": 50}  # nor any bomb in disguise


def outcome(read, path):
    """What `read(path)` gives: ("ok", value) or ("ImageError", its message)."""
    try:
        return "ok", read(path)
    except ImageError as exc:
        return "ImageError", str(exc)


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's notes on the corrupt files
def test_the_header_check_refuses_what_loading_refuses_before_decoding(tmp_path):
    """check_image_file (the search's early check of its queries) on the fuzz cases: it takes
    every file that loads, with its size; what it refuses, loading refuses with the same
    message; every file too large to load it refuses already; files that are cut short it may
    take (their pixels are what is missing): loading them is an ImageError naming the file."""
    too_large = passed_but_cut = 0
    for index in range(160):  # 20 of each kind
        kind, path = fuzz.case(3, index, tmp_path)
        checked = outcome(check_image_file, path)
        loaded = outcome(load_image, path)
        if loaded[0] == "ok":
            assert checked == ("ok", loaded[1].size), (index, kind)
        if checked[0] == "ImageError":
            assert loaded == checked, (index, kind)
        if loaded[0] == "ImageError" and "limit of" in loaded[1]:
            assert checked == loaded, (index, kind)
            too_large += 1
        if kind == "truncated" and checked[0] == "ok" and loaded[0] == "ImageError":
            assert loaded[1].startswith(str(path)), loaded
            passed_but_cut += 1
    assert too_large >= 20 and passed_but_cut >= 3  # both cases are there


LIMIT = rf"bomb.img: .*limit of {MAX_PIXELS}"


@pytest.mark.parametrize("header,match", [
    (b"P6 99999999 99999999", "bomb.img: cannot decode image"),  # ends inside the header
    (b"P6 99999999 99999999 255\n", LIMIT), (b"P6 8000 8000 255\n", LIMIT),
    (fuzz.png_header(40_000_000, 2, depth=16), LIMIT),
    (fuzz.png_header(8000, 8000, depth=8, color=0), LIMIT)])
def test_bombs_are_refused_from_the_header(tmp_path, header, match):
    path = tmp_path / "bomb.img"
    path.write_bytes(header)
    with pytest.raises(ImageError, match=match):
        load_image(path)


def test_a_name_too_long_is_an_image_error(tmp_path):
    with pytest.raises(ImageError, match=r"\.\.\.x+\.png: cannot open"):
        load_image(tmp_path / ("x" * 400 + ".png"))


def gray8(seed=0, size=(24, 36)):
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)


@pytest.mark.parametrize("kind", ["png16", "tiff-float", "tiff-int32", "tiff16"])
def test_wide_images_match_their_8bit_equivalent(tmp_path, kind):
    g = gray8()
    reference = tmp_path / "g8.png"
    Image.fromarray(g).save(reference)
    path = tmp_path / f"wide-{kind}.{'png' if kind == 'png16' else 'tif'}"
    if kind == "png16":
        Image.fromarray(g.astype(np.uint16) * 257).save(path)
    elif kind == "tiff16":
        Image.fromarray(g.astype(np.uint16) * 257).save(path)
    elif kind == "tiff-float":
        Image.fromarray(g.astype(np.float32) / 255).save(path)
    else:
        Image.fromarray(g.astype(np.int32) * 257).save(path)
    wide = load_image(path)
    assert wide.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(wide)[..., 0], g)  # the value itself, not clipped
    transform = Preprocess(size=(24, 36))
    torch.testing.assert_close(transform(wide), transform(load_image(reference)))


@pytest.mark.parametrize("values,match", [
    (np.full((8, 8), 200.0, np.float32), r"F pixel values span 200\.\.200; expected 0\.\.1"),
    (np.full((8, 8), np.nan, np.float32), "the image has NaN"),
    (np.full((8, 8), -5, np.int32), r"I pixel values span -5\.\.-5"),
])
def test_wide_images_out_of_range_are_refused(tmp_path, values, match):
    path = tmp_path / "odd.tif"
    Image.fromarray(values).save(path)
    with pytest.raises(ImageError, match=f"odd.tif: {match}"):
        load_image(path)


def test_cli_prints_one_line_and_exits_2_debug_shows_the_traceback(tmp_path, capsys):
    bomb = tmp_path / "bomb.ppm"
    bomb.write_bytes(b"P6 99999999 99999999")
    good = tmp_path / "good.png"
    Image.fromarray(gray8()).save(good)
    argv = ["pair", str(bomb), str(good), "--model", "simexplain.toy:tiny_cnn",
            "--layer", "features", "--size", "32", "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("simexplain: error: ")
    assert "bomb.ppm" in err and "Traceback" not in err
    assert main(argv + ["--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().splitlines()[-1].startswith("simexplain: error:")


@pytest.mark.parametrize("kind", sorted(fuzz.DISGUISED))
def test_disguised_bombs_are_refused_before_decoding(tmp_path, kind, monkeypatch):
    """The refusal names the real size of what would be decoded (not the 256x256 an icon's
    directory says, not the first page's 8x8) and comes before any pixel is decoded."""
    from PIL import ImageFile
    from simexplain.errors import ImageTooLarge
    decoded = []
    original = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load",
                        lambda image: decoded.append(image.size) or original(image))
    path = tmp_path / f"{kind}.img"
    path.write_bytes(fuzz.DISGUISED[kind]())
    with pytest.raises(ImageTooLarge, match=f"{kind}.img: .*8900x8900"):
        load_image(path)
    assert decoded == []


def test_a_16bit_image_is_scaled_in_bounded_memory(tmp_path):
    """A 10 Mpx 16-bit grey PNG (20 MB decoded): the 8-bit scaling holds the decoded values,
    the 8-bit result and one block of rows, not float64 copies of the whole image (which took
    a 40 Mpx upload to +1 GB)."""
    import tracemalloc
    from simexplain import images
    width, height = 4000, 2500
    path = tmp_path / "wide16.png"
    path.write_bytes(fuzz.flat_png(width, height, depth=16, color=0))
    with Image.open(path) as opened:
        opened.load()
        assert opened.mode.startswith("I;16")
        tracemalloc.start()
        try:
            gray = images.to_gray8(opened, "wide16.png")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert gray.mode == "L" and gray.size == (width, height)
    assert peak < 6 * width * height, f"{peak / 1e6:.0f} MB"  # float64 copies: 24 bytes a px


@pytest.mark.parametrize("damage", ["libtiff", "exif"])
def test_decoder_warnings_are_not_printed_before_the_error(tmp_path, damage):
    """libtiff writes to the process's stderr (a damaged deflate strip) and Pillow warns (a
    truncated file's EXIF): the command still prints one line, in a real process (file
    descriptor 2, warnings as a user sees them)."""
    import io
    import os
    import subprocess
    import sys
    buffer = io.BytesIO()
    Image.fromarray(gray8(size=(64, 64))).save(buffer, "TIFF", compression="tiff_deflate")
    data = bytearray(buffer.getvalue())
    if damage == "libtiff":
        data[28:58] = bytes(b ^ 0x5A for b in data[28:58])
    else:
        data = data[:len(data) // 2]
    broken = tmp_path / "broken.tif"
    broken.write_bytes(bytes(data))
    good = tmp_path / "good.png"
    Image.fromarray(gray8()).save(good)
    done = subprocess.run(
        [sys.executable, "-m", "simexplain", "pair", str(broken), str(good), "--model",
         "simexplain.toy:tiny_cnn", "--layer", "features", "--size", "32", "--out",
         str(tmp_path / "out")], capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONWARNINGS": "default"})
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("simexplain: error: "), \
        done.stderr
    assert "broken.tif" in done.stderr
