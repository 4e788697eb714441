"""The point-map widget's front end in headless Chromium: its ES module (as the widget ships
it) rendered into a page by a stand-in for the notebook's widget manager
(fake_host.html: a model with anywidget's API whose kernel is the real Python widget, reached
through Playwright). The mouse moves over image a, and image b's canvas is read back: the
drawn maximum sits on the cell where the kernel's point map peaks, the top match is ringed,
the kind is labelled, a dragged box asks for a region map, at most one request is in flight."""

from __future__ import annotations

import base64
import json
import math
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from simexplain.explanation import DEFAULT_POINT_MAP, point_map_label
from simexplain.notebook import PointMapWidget

from browser_helpers import ARTIFACTS, open_page, static_server

HOST_PAGE = Path(__file__).with_name("fake_host.html")
ALPHA = 0.6  # the widget's map opacity (point_map.js: display.alpha)
# the colour maps' strongest ends (web/static/colours.js): RdBu's dark red for signed maps, the
# positive ramp's (jet) dark red otherwise
SIGNED_PEAK, POSITIVE_PEAK = (103, 0, 31), (128, 0, 0)
GREY = 128  # image b is plain grey: what is drawn over it is the map alone


def host_files(widget: PointMapWidget, folder: Path) -> None:
    """The page, the widget's module and style, and its synced state as the front end gets it."""
    (folder / "index.html").write_text(HOST_PAGE.read_text())
    (folder / "widget.mjs").write_text(widget._esm)
    (folder / "widget.css").write_text(widget._css)
    state = {name: getattr(widget, name) for name in
             ("sides", "info", "kinds", "kind", "display_size", "error")}
    for side in "ab":
        state[f"image_{side}"] = base64.b64encode(getattr(widget, f"image_{side}")).decode()
    (folder / "state.json").write_text(json.dumps(state))


def canvas_box(page, side: str) -> dict:
    return page.locator(f"canvas.sx-view[data-side={side}]").bounding_box()


def client_point(page, widget, side: str, point) -> tuple[float, float]:
    """Where photo pixel (row, col) of `side` is on the screen."""
    box = canvas_box(page, side)
    height, width = widget.sides[side]["image_size"]
    return box["x"] + point[1] / width * box["width"], box["y"] + point[0] / height * box["height"]


def read_pixels(page, side: str, points) -> np.ndarray:
    """RGB of the canvas pixels at (x, y) canvas coordinates."""
    return np.array(page.evaluate("""([side, points]) => {
      const canvas = document.querySelector(`canvas.sx-view[data-side=${side}]`);
      const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
      return points.map(([x, y]) => {
        const i = 4 * (Math.floor(y) * canvas.width + Math.floor(x));
        return [data[i], data[i + 1], data[i + 2]];
      });
    }""", [side, [list(p) for p in points]]), dtype=np.float64)


def canvas_scale(page, widget, side: str) -> tuple[float, float]:
    """Canvas pixels per photo pixel (rows, cols)."""
    width, height = page.evaluate(f"""(() => {{ const c = document.querySelector(
      'canvas.sx-view[data-side={side}]'); return [c.width, c.height]; }})()""")
    rows, cols = widget.sides[side]["image_size"]
    return height / rows, width / cols


def drawn_peak_cell(page, widget, side: str, grid_map: np.ndarray) -> tuple[int, int]:
    """The cell of `side` whose centre is drawn in the colour of the map's maximum (the
    colour map's strongest end over the grey photo), after checking that one is."""
    rows, cols = widget.sides[side]["grid"]
    height, width = widget.sides[side]["image_size"]
    sy, sx = canvas_scale(page, widget, side)
    centres = [((c + 0.5) * width / cols * sx, (r + 0.5) * height / rows * sy)
               for r in range(rows) for c in range(cols)]
    colours = read_pixels(page, side, centres)
    end = np.array(SIGNED_PEAK if grid_map.min() < 0 else POSITIVE_PEAK, dtype=np.float64)
    expected = GREY * (1 - ALPHA) + end * ALPHA
    distances = np.linalg.norm(colours - expected, axis=1)
    best = int(np.argmin(distances))
    # a centre pixel mixes in about 1% of the next cell (bilinear upsampling): near, not equal
    assert distances[best] < 15, (colours[best], expected)
    return divmod(best, cols)


def peak_cell(grid_map: np.ndarray) -> tuple[int, int]:
    ordered = np.sort(grid_map.ravel())
    spread = ordered[-1] - ordered[0]
    # a clear maximum, else two cells could be drawn in nearly the same colour
    assert ordered[-1] - ordered[-2] > 0.1 * spread, "choose another point: no clear peak"
    return divmod(int(np.argmax(grid_map)), grid_map.shape[1])


def ring_pixels(page, widget, side: str, cell) -> np.ndarray:
    """The canvas pixels on the circle a ring around `cell`'s centre is drawn on."""
    rows, cols = widget.sides[side]["grid"]
    height, width = widget.sides[side]["image_size"]
    sy, sx = canvas_scale(page, widget, side)
    cx, cy = (cell[1] + 0.5) * width / cols * sx, (cell[0] + 0.5) * height / rows * sy
    canvas_w, canvas_h = width * sx, height * sy
    radius = max(5, min(canvas_w, canvas_h) / 28)  # web/static/mapview.js: MapView.render
    angles = np.linspace(0, 2 * math.pi, 12, endpoint=False)
    return read_pixels(page, side, [(cx + radius * math.cos(t), cy + radius * math.sin(t))
                                    for t in angles])


def white(pixels: np.ndarray) -> int:
    return int(np.sum(np.all(pixels >= 215, axis=1)))


def fmt(x: float) -> str:
    """web/static/labels.js's fmt for values between 1e-3 and 1e4: three significant digits."""
    return f"{float(f'{x:.3g}'):g}"


def settle(page, sent_before: int) -> dict:
    """Wait until a new request was sent and every request is answered and drawn; the last
    request sent."""
    page.wait_for_function(
        "([n]) => host.sent.length > n && host.answered === host.sent.length", arg=[sent_before],
        timeout=20_000)
    page.evaluate("() => new Promise(requestAnimationFrame)")
    return page.evaluate("host.sent[host.sent.length - 1]")


def sent_count(page) -> int:
    return page.evaluate("host.sent.length")


@pytest.fixture(scope="module")
def browser(headless_chromium):
    return headless_chromium


@contextmanager
def widget_page(browser, widget, front_end, folder: Path):
    front = front_end(widget)
    host_files(widget, folder)
    with static_server(folder) as url:
        page, problems = open_page(browser, f"{url}/index.html")
        # the host's kernel: the Python widget answering each request as a comm message
        page.expose_function("kernel", lambda content: front.ask(content, number=False))
        page.wait_for_function("window.host && host.ready", timeout=20_000)
        page.wait_for_function("!document.querySelector('.sx-panel[data-side=b] .scale').hidden",
                               timeout=20_000)
        try:
            yield page, problems
        finally:
            page.context.close()


def test_the_widget_follows_the_pointer(browser, pair, front_end, tmp_path):
    widget = PointMapWidget(pair)
    with widget_page(browser, widget, front_end, tmp_path) as (page, problems):
        caption = page.locator(".sx-label")
        resting_points = [(x, y) for x in range(0, 384, 8) for y in range(0, 384, 8)]
        resting = read_pixels(page, "b", resting_points)
        assert white(resting) == 0  # no rings at rest
        seen_cells = set()
        for point in [(20, 20), (52, 76), (76, 116)]:
            before = sent_count(page)
            page.mouse.move(*client_point(page, widget, "a", point))
            request = settle(page, before)
            assert request["type"] == "point" and request["side"] == "a"
            assert request["kind"] == DEFAULT_POINT_MAP
            # the position sent is the pointed photo pixel (a canvas pixel is 1/3 of one)
            assert request["row"] == pytest.approx(point[0], abs=1)
            assert request["col"] == pytest.approx(point[1], abs=1)
            # what b shows: the kernel's point map for that position, its maximum where
            # the map peaks, the top match ringed
            expected = pair.point_map("a", (request["row"], request["col"])).numpy()
            cell = peak_cell(expected)
            assert drawn_peak_cell(page, widget, "b", expected) == cell
            seen_cells.add(cell)
            assert white(ring_pixels(page, widget, "b", cell)) >= 8
            label = point_map_label(DEFAULT_POINT_MAP)
            assert caption.inner_text().startswith(f"point map on b: {label}; rings 1-3")
            assert f"max {fmt(expected.max())}" in caption.inner_text()
            scale = page.locator(".sx-panel[data-side=b] .scale")
            assert scale.locator(".unit").inner_text() == f"point map: {label} (-1 to 1)"
            assert scale.locator(".hi").inner_text() == fmt(np.abs(expected).max())
            assert scale.locator(".lo").inner_text() == fmt(-np.abs(expected).max())
        assert len(seen_cells) >= 2  # the map moved with the pointer
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "widget-point.png"))

        # the kind menu: the same point asked again in the chosen kind, labelled
        before = sent_count(page)
        page.select_option("select.sx-kind", "contribution")
        request = settle(page, before)
        assert request["kind"] == "contribution" and page.evaluate("host.saves") >= 1
        assert sent_count(page) == before + 1  # asked once, though the model echoes the change
        expected = pair.point_map("a", (request["row"], request["col"]), "contribution").numpy()
        assert drawn_peak_cell(page, widget, "b", expected) == peak_cell(expected)
        assert caption.inner_text().startswith("point map on b: share of the score")
        assert page.locator(".sx-panel[data-side=b] .scale .unit").inner_text() == \
            "point map: share of the score per cell"

        # a kind set from the kernel (the trait synced to the model) is followed too
        before = sent_count(page)
        page.evaluate("host.model.set('kind', 'match')")
        request = settle(page, before)
        assert request["kind"] == "match" and sent_count(page) == before + 1
        assert page.locator("select.sx-kind").input_value() == "match"
        assert caption.inner_text().startswith(f"point map on b: {point_map_label('match')}")

        # the pointer leaves: both images rest on their overall maps again, no rings
        page.mouse.move(5, 5)
        page.wait_for_function("document.querySelector('.sx-label').textContent === ''")
        assert np.array_equal(read_pixels(page, "b", resting_points), resting)

        # the keyboard: arrow keys on a focused image move a point from its centre, and the
        # notebook around the widget does not get them
        page.focus("canvas.sx-view[data-side=a]")
        before = sent_count(page)
        page.keyboard.press("ArrowRight")
        request = settle(page, before)
        height, width = widget.sides["a"]["image_size"]
        assert (request["row"], request["col"]) == pytest.approx(
            (height / 2, width / 2 + width / 16))  # a step: 1/16 of the image (mapview.js)
        assert page.evaluate("host.documentKeys") == 0
        assert page.evaluate("host.maxInFlight") == 1
        assert problems == []


def test_a_dragged_box_asks_for_its_region_map(browser, pair, front_end, tmp_path):
    widget = PointMapWidget(pair, kind="contribution")
    with widget_page(browser, widget, front_end, tmp_path) as (page, problems):
        start, end = (10, 10), (50, 60)  # photo pixels of a
        page.mouse.move(*client_point(page, widget, "a", start))
        page.mouse.down()
        before = sent_count(page)
        page.mouse.move(*client_point(page, widget, "a", end), steps=8)
        page.mouse.up()
        request = settle(page, before)
        assert request["type"] == "region" and request["side"] == "a"
        assert request["kind"] == "contribution"
        assert request["box"] == pytest.approx([*start, *end], abs=1)
        expected = pair.region_map("a", request["box"], "contribution").numpy()
        cell = peak_cell(expected)
        assert drawn_peak_cell(page, widget, "b", expected) == cell
        assert white(ring_pixels(page, widget, "b", cell)) >= 8
        text = page.locator(".sx-label").inner_text()
        assert text.startswith("region map on b: share of the score; rings 1-3")
        assert f"s_R = {fmt(pair.partial_score('a', request['box']))}" in text
        # the box stays pinned when the pointer leaves; a click clears it
        page.mouse.move(5, 5)
        page.wait_for_timeout(100)
        assert page.locator(".sx-label").inner_text().startswith("region map on b")
        page.mouse.click(*client_point(page, widget, "a", (40, 40)))
        page.mouse.move(5, 5)
        page.wait_for_function("document.querySelector('.sx-label').textContent === ''")
        assert problems == []


def test_pointer_moves_are_coalesced_one_request_in_flight(browser, pair, front_end, tmp_path):
    widget = PointMapWidget(pair)
    with widget_page(browser, widget, front_end, tmp_path) as (page, problems):
        page.evaluate("host.delay = 80")  # a slow kernel: moves arrive while one is answered
        page.mouse.move(*client_point(page, widget, "a", (5, 5)))
        before = sent_count(page)
        final = (76, 116)
        page.mouse.move(*client_point(page, widget, "a", final), steps=40)
        request = settle(page, before)
        sent = sent_count(page) - before
        assert page.evaluate("host.maxInFlight") == 1
        assert 1 <= sent < 40, sent  # superseded positions were never sent
        # the last request is the pointer's last position, and b shows its map
        assert (request["row"], request["col"]) == pytest.approx(final, abs=1)
        expected = pair.point_map("a", (request["row"], request["col"])).numpy()
        assert drawn_peak_cell(page, widget, "b", expected) == peak_cell(expected)
        assert problems == []


def test_a_failed_request_shows_its_error_and_the_next_one_clears_it(browser, pair, front_end,
                                                                      tmp_path):
    widget = PointMapWidget(pair)
    with widget_page(browser, widget, front_end, tmp_path) as (page, problems):
        error = page.locator(".sx-error")
        page.evaluate("host.breakSide = true")  # the kernel gets side "c"
        before = sent_count(page)
        page.mouse.move(*client_point(page, widget, "a", (30, 30)))
        settle(page, before)
        assert error.is_visible()
        assert error.inner_text() == "side must be 'a' or 'b', got 'c'"
        assert widget.error == "side must be 'a' or 'b', got 'c'"
        page.evaluate("host.breakSide = false")
        before = sent_count(page)
        page.mouse.move(*client_point(page, widget, "a", (40, 60)))
        settle(page, before)
        assert not error.is_visible() and widget.error == ""
        assert problems == []
