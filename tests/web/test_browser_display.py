"""What the page draws, in a real headless Chromium: a face model's images shown as the crop
the model saw (the gallery's thumbnails, the query, the pair's panels, with the value readout
and the patterns layer placed on the crop), and the rings on a map's strongest cells readable
on any photo (a light line with a dark edge on both sides).

The face model is the toy model with a stand-in face detector (`face_stub`: the same tall box
of every photo), so the crops are known exactly."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from browser_helpers import ARTIFACTS, hover_and_wait, open_page, serve, shoot, wait_stat
from face_stub import face_box, face_explainer, fixed_faces
from marks import ring_widths

PHOTO = 96  # the photos' side; their "faces" are face_box(96, 96) = 60 x 48 pixels
THUMBNAIL = 180  # the gallery's result canvases are at most this large


def photo(kind: int, kit) -> Image.Image:
    """A photo of checks whose "face" (its face_box) shows pattern `kind` instead."""
    image = np.asarray(Image.fromarray(kit.pattern(1, PHOTO))).copy()
    top, left, bottom, right = face_box(PHOTO, PHOTO)
    image[top:bottom, left:right] = kit.pattern(kind, PHOTO)[top:bottom, left:right]
    return Image.fromarray(image)


def face_mean(image: Image.Image) -> np.ndarray:
    top, left, bottom, right = face_box(image.height, image.width)
    return np.asarray(image.convert("RGB"), np.float64)[top:bottom, left:right].mean((0, 1))


@pytest.fixture(scope="module")
def browser(headless_chromium):
    return headless_chromium


@pytest.fixture(scope="module")
def faces(kit, tmp_path_factory):
    """{name: photo} of the gallery (the first two are the samples too)."""
    folder = tmp_path_factory.mktemp("faces")
    photos = {f"face{k}.png": photo(k, kit) for k in (0, 2, 3, 4, 5)}
    for name, image in photos.items():
        image.save(folder / name)
    return folder, photos


@pytest.fixture(scope="module")
def face_server(faces, tmp_path_factory):
    from simexplain.retrieval import Index
    from simexplain.web import create_app
    folder, photos = faces
    explainer = face_explainer()
    with fixed_faces():
        index = tmp_path_factory.mktemp("index") / "faces"
        Index.build(folder, explainer, model_name="toy-faces", out=index, progress=False)
        samples = [(name, image) for name, image in list(photos.items())[:2]]
        app = create_app(explainer=explainer, index=index, samples=samples)
        with serve(app) as url:
            yield url


def bilinear(grid: np.ndarray, crop, point) -> float:
    """A grid map's value at a photo pixel (row, col), the grid spread evenly over `crop`:
    feature coordinate (x + 0.5) * cells / size - 0.5 on each axis, clamped (METHOD.md)."""
    top, left, bottom, right = crop
    coords = []
    for x, start, size, cells in ((point[0], top, bottom - top, grid.shape[0]),
                                  (point[1], left, right - left, grid.shape[1])):
        coords.append(min(max((x - start + 0.5) * cells / size - 0.5, 0), cells - 1))
    (fy, fx) = coords
    y0, x0 = int(fy), int(fx)
    y1, x1 = min(y0 + 1, grid.shape[0] - 1), min(x0 + 1, grid.shape[1] - 1)
    dy, dx = fy - y0, fx - x0
    return float((grid[y0, x0] * (1 - dx) + grid[y0, x1] * dx) * (1 - dy)
                 + (grid[y1, x0] * (1 - dx) + grid[y1, x1] * dx) * dy)


# each canvas's MapView, reachable from the canvas
EXPOSE_VIEWS = """() => {
  const s = window.simexplain;
  for (const v of [s.pairViews.a, s.pairViews.b, s.queryView, ...s.results.map(r => r.view)])
    v.canvas.__view = v;
}"""
# the mean RGB of the image a canvas shows (its view's base: without the map or marks)
BASE_MEAN = """(c) => {
  const d = c.__view.base.data; const m = [0, 0, 0];
  for (let k = 0; k < d.length; k += 4) for (let j = 0; j < 3; j++) m[j] += d[k + j];
  return m.map((v) => v / (d.length / 4));
}"""


def test_a_face_model_gallery_shows_the_crops(browser, face_server, faces):
    _, photos = faces
    page, problems = open_page(browser, face_server + "/#gallery")
    wait_stat(page, "searches", 1)
    page.evaluate(EXPOSE_VIEWS)
    top, left, bottom, right = face_box(PHOTO, PHOTO)
    crop_aspect = (right - left) / (bottom - top)
    cards = page.locator("#results .card")
    assert cards.count() == len(photos)
    names = page.eval_on_selector_all("#results .card .name", "n => n.map(x => x.textContent)")
    for i, name in enumerate(names):
        canvas = cards.nth(i).locator("canvas")
        width, height = canvas.evaluate("c => [c.width, c.height]")
        # the crop's shape, as large as the card allows (not the square photo, face small)
        assert abs(width / height - crop_aspect) < 0.02 and height == THUMBNAIL
        # and the crop's pixels: the face's colours, not the photo's
        mean = np.asarray(canvas.evaluate(BASE_MEAN))
        whole = np.asarray(photos[name].convert("RGB"), np.float64).mean((0, 1))
        assert np.abs(mean - face_mean(photos[name])).max() < 6
        assert np.abs(mean - face_mean(photos[name])).max() < np.abs(mean - whole).max()
    # the query too: its crop fills the panel, and a point on it is in the photo's pixels
    width, height = page.eval_on_selector("#view-query", "c => [c.width, c.height]")
    assert abs(width / height - crop_aspect) < 0.02
    hover_and_wait(page, "#view-query", 0.5, 0.5)
    cross = page.evaluate("window.simexplain.queryView.markers[0]")
    assert cross["row"] == pytest.approx((top + bottom) / 2, abs=0.5)
    assert cross["col"] == pytest.approx((left + right) / 2, abs=0.5)
    shoot(page, ARTIFACTS / "web-faces-gallery.png")
    assert problems == []


def test_pair_panels_show_the_crops_with_readable_rings(browser, face_server):
    """On a face model's pair: the value read out under the pointer is the map's over the crop
    (it was read as if the map covered the whole photo); the panel has the crop's shape; the
    strongest match's ring, read off the canvas along a line from its centre where the crop
    puts that cell, is a light line at least 3 pixels wide with a dark edge of at least 2
    pixels inside and outside it (on a panel over 500 pixels wide)."""
    page, problems = open_page(browser, face_server)
    wait_stat(page, "explains", 1)
    hover_and_wait(page, "#view-a", 0.3, 0.4)
    ring = page.evaluate("window.simexplain.pairViews.b.markers[0]")
    e = page.evaluate("window.simexplain.state.pair.explanation")
    # the value read out under the pointer: a's overall map at that photo pixel, the map
    # spread over the crop (bilinear, cell-centre aligned)
    cross = page.evaluate("window.simexplain.pairViews.a.markers[0]")
    expected = bilinear(np.asarray(e["a"]["overall"]), e["a"]["crop"],
                        (cross["row"], cross["col"]))
    readout = page.inner_text("#readout-a")
    assert float(readout.rsplit(" ", 1)[1]) == pytest.approx(expected, rel=5e-3, abs=1e-9)
    top, left, bottom, right = e["b"]["crop"]
    assert [top, left, bottom, right] == list(face_box(*e["b"]["image_size"]))
    width, height = page.eval_on_selector("#view-b", "c => [c.width, c.height]")
    assert abs(width / height - (right - left) / (bottom - top)) < 0.02
    assert width >= 500
    # where the ring must be: the cell's centre in the crop's pixels, as the canvas shows it
    x = (ring["col"] - left) * width / (right - left)
    y = round((ring["row"] - top) * height / (bottom - top))
    row = np.asarray(page.eval_on_selector(
        "#view-b", f"c => Array.from(c.getContext('2d').getImageData(0, {y}, c.width, 1).data)"),
        np.int32).reshape(-1, 4)[:, :3]
    step = 1 if x < width / 2 else -1  # towards the middle: away from the canvas's edge
    start = round(x)
    reach = int(min(width, height) / 10)
    line = row[start::step][:reach] if step == 1 else row[start::-1][:reach]
    inner, light, outer = ring_widths(line, light_at_least=3)
    assert inner >= 2 and outer >= 2, f"dark edges {inner} and {outer} pixels wide"
    shoot(page, ARTIFACTS / "web-faces-pair.png")
    assert problems == []


def test_patterns_are_drawn_where_the_crops_put_them(browser, face_server):
    """The cross-view patterns layer places each point on the crop its canvas shows."""
    page, problems = open_page(browser, face_server)
    wait_stat(page, "explains", 1)
    page.check("#patterns")
    page.wait_for_function("document.querySelectorAll('#patterns-layer circle').length >= 2")
    e = page.evaluate("window.simexplain.state.pair.explanation")
    found = page.request.post(f"{face_server}/api/patterns",
                              data={"explanation_id": e["explanation_id"]}).json()
    circles = page.eval_on_selector_all(
        "#patterns-layer circle", "cs => cs.map(c => { const b = c.getBoundingClientRect();"
        " return [b.x + b.width / 2, b.y + b.height / 2]; })")
    patterns = found["patterns"]
    assert patterns and len(circles) == 2 * len(patterns)
    for n, pattern in enumerate(patterns):
        for (x, y), side in ((circles[2 * n], "a"), (circles[2 * n + 1], "b")):
            row, col = pattern[f"point_{side}"]
            top, left, bottom, right = e[side]["crop"]
            box = page.locator(f"#view-{side}").bounding_box()
            assert x == pytest.approx(box["x"] + (col + 0.5 - left) / (right - left)
                                      * box["width"], abs=1.5)
            assert y == pytest.approx(box["y"] + (row + 0.5 - top) / (bottom - top)
                                      * box["height"], abs=1.5)
    assert problems == []
