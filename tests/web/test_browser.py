"""The page in a real headless Chromium (Playwright), against a real uvicorn on 127.0.0.1.

Pair view: explain, move the pointer (the other image's map changes), drag a region, switch
display and method, download the figure. Gallery view: hover (maps on every result), drag
boxes (the ranking changes to what the region shows). Screenshots go to test-artifacts/ (or
the folder in $SIMEXPLAIN_SCREENSHOTS), for review.

Issue 14's ten points, and the tests that cover them:
 1. a face model opens on two faces, failures name the image: test_models_open_on_their_own_pair,
    test_failed_explain_shows_on_its_panel
 2. no old image or score under a new name after a failure: test_failed_explain_shows_on_its_panel
 3. /docs offline: test_docs_work_offline
 4. the point map says it is the decomposition's, whatever the Method menu:
    test_point_map_cell_and_ranked_matches
 5. identical methods for the model's head are named: test_identical_methods_and_finer_grid
 6. a loading state per panel, old maps dimmed: test_failed_explain_shows_on_its_panel
 7. colour bar, value readout, tooltips, a positive view for all-positive maps:
    test_colour_bar_readout_and_tooltips
 8. finer grids, the pointed cell outlined, the top matches ringed in rank order:
    test_identical_methods_and_finer_grid, test_point_map_cell_and_ranked_matches
 9. upload errors beside the control, naming the file, in MB; drag and drop:
    test_upload_errors_beside_the_control, test_drop_an_image_on_a_panel
10. the pair view uses the width; keyboard-reachable controls: test_layout_and_keyboard

Gallery files that changed or went missing after the build (issue 26):
test_gallery_view_marks_files_changed_or_gone_since_indexing.

The documentation's screenshots of the page: `python scripts/web_screenshots.py`.
"""

from __future__ import annotations


import pytest

from browser_helpers import (ARTIFACTS, CANVAS_HASH, VIEWPORT, canvas_hash, drag,
                             hover_and_wait, open_page, point_on, serve, shoot, stat, wait_stat)


# -- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser(headless_chromium):
    return headless_chromium


@pytest.fixture(scope="module")
def server(explainer, index_dir, samples):
    from simexplain.web import create_app
    app = create_app(explainer=explainer, index=index_dir, samples=samples)
    with serve(app) as url:
        yield url


@pytest.fixture(scope="module", autouse=True)
def artifacts():
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


# -- tests ------------------------------------------------------------------------------------
def test_pair_view(browser, server):
    page, problems = open_page(browser, server)
    wait_stat(page, "explains", 1)
    info = page.inner_text("#pair-info")
    assert "score" in info and "residual" in info
    before = canvas_hash(page, "#view-b")

    # the pointer over a: the point-specific map appears on b, and changes with the point
    hover_and_wait(page, "#view-a", 0.2, 0.2)
    first = canvas_hash(page, "#view-b")
    assert first != before
    hover_and_wait(page, "#view-a", 0.85, 0.8)
    second = canvas_hash(page, "#view-b")
    assert second != first
    # the live map is of the default kind, and says which
    from simexplain.explanation import DEFAULT_POINT_MAP, point_map_label
    assert point_map_label(DEFAULT_POINT_MAP) in page.inner_text("#pair-info")
    # and the other way round
    a_before = canvas_hash(page, "#view-a")
    hover_and_wait(page, "#view-b", 0.5, 0.5)
    assert canvas_hash(page, "#view-a") != a_before

    # a burst of moves never has more than one request in flight; late answers are dropped
    x, y = point_on(page, "#view-a", 0.1, 0.1)
    page.mouse.move(x, y)
    x, y = point_on(page, "#view-a", 0.9, 0.9)
    page.mouse.move(x, y, steps=60)
    wait_stat(page, "pointApplied", 1)
    assert stat(page, "maxInFlight") == 1

    # leaving restores the overall map
    page.mouse.move(5, 5)
    page.wait_for_timeout(100)
    page.wait_for_function("window.simexplain.stats.inFlight === 0")
    assert canvas_hash(page, "#view-b") == before

    # a dragged box gives the region map and its partial score
    drag(page, "#view-a", (0.1, 0.1), (0.6, 0.5))
    page.wait_for_function("document.querySelector('#pair-info').textContent.includes('region')")
    wait_stat(page, "pointApplied", 1)
    region = canvas_hash(page, "#view-b")
    assert region not in (before, first, second)
    shoot(page, ARTIFACTS / "web-pair.png")

    # display controls redraw client-side
    page.uncheck("#signed")
    assert canvas_hash(page, "#view-b") != region
    page.fill("#opacity", "20")
    page.dispatch_event("#opacity", "input")
    assert canvas_hash(page, "#view-b") != region

    # method selector: new overall maps
    page.select_option("#method", "rgradcam")
    wait_stat(page, "explains", 2)
    assert "rgradcam" in page.inner_text("#pair-info")

    # picking another image (of the same size) re-explains and draws the new photo under it
    base = "window.simexplain.pairViews.b.base.data.reduce((h, v) => (h * 31 + v) >>> 0, 7)"
    shown = page.evaluate(base)
    page.select_option("#pick-b", "s2")
    wait_stat(page, "explains", 3)
    assert page.evaluate(base) != shown

    # PNG download of the figure (client-side canvas export)
    with page.expect_download() as download:
        page.click("#download")
    target = ARTIFACTS / "web-pair-download.png"
    download.value.save_as(target)
    from PIL import Image
    with Image.open(target) as figure:
        assert figure.format == "PNG" and figure.width > 2 * 64
    assert stat(page, "errors") == 0, stat(page, "lastError")
    assert problems == []


def test_upload_in_the_page(browser, server, tmp_path, kit):
    path = tmp_path / "mine.png"
    kit.two_part(5, 2, size=80).save(path)
    page, problems = open_page(browser, server)
    wait_stat(page, "explains", 1)
    page.set_input_files("#upload-a", str(path))
    wait_stat(page, "explains", 2)
    assert page.eval_on_selector("#pick-a", "s => s.value").startswith("u")
    assert page.inner_text("#caption-a") == "mine.png"
    assert problems == []


def test_gallery_view(browser, server):
    page, problems = open_page(browser, server + "/#gallery")
    wait_stat(page, "searches", 1)
    ranking = page.eval_on_selector_all("#results .card", "cards => cards.map(c => c.dataset.id)")
    assert len(ranking) == 12

    # hovering over the query draws the point map on every visible result at once
    cards = page.locator("#results .card canvas")
    before = [cards.nth(i).evaluate(CANVAS_HASH) for i in range(4)]
    hover_and_wait(page, "#view-query", 0.3, 0.25)
    after = [cards.nth(i).evaluate(CANVAS_HASH) for i in range(4)]
    assert all(b != a for b, a in zip(before, after))
    assert stat(page, "maxInFlight") == 1
    shoot(page, ARTIFACTS / "web-gallery-hover.png")

    # a box on the left half (pattern 0) ranks the plain pattern-0 image first ...
    drag(page, "#view-query", (0.05, 0.05), (0.95, 0.45))
    wait_stat(page, "searches", 2)
    left = page.eval_on_selector_all("#results .card", "cards => cards.map(c => c.dataset.id)")
    assert left != ranking
    names = page.eval_on_selector_all("#results .card .name", "n => n.map(x => x.textContent)")
    assert names[0] == "plain0.png"
    # ... and one on the right half (pattern 3) the plain pattern-3 image
    drag(page, "#view-query", (0.05, 0.55), (0.95, 0.95))
    wait_stat(page, "searches", 3)
    right = page.eval_on_selector_all("#results .card", "cards => cards.map(c => c.dataset.id)")
    assert right != left
    names = page.eval_on_selector_all("#results .card .name", "n => n.map(x => x.textContent)")
    assert names[0] == "plain3.png"
    assert "region" in page.inner_text("#caption-query")
    hover_and_wait(page, "#view-query", 0.5, 0.75)
    shoot(page, ARTIFACTS / "web-gallery.png")

    # a click on the query searches with the whole image again
    page.mouse.move(5, 5)
    page.click("#view-query")
    wait_stat(page, "searches", 4)
    whole = page.eval_on_selector_all("#results .card", "cards => cards.map(c => c.dataset.id)")
    assert whole == ranking

    # a click on a result explains that pair
    page.mouse.move(5, 5)
    explains = stat(page, "explains")
    page.locator("#results .card").nth(2).click()
    wait_stat(page, "explains", explains + 1)
    assert page.eval_on_selector("#pick-b", "s => s.value") == whole[2]
    assert page.is_visible("#pair-view") and not page.is_visible("#gallery-view")
    assert stat(page, "errors") == 0, stat(page, "lastError")
    assert problems == []


def test_gallery_thumbnails_ring_the_strongest_match_readably(browser, server):
    """A thumbnail's one ring (180 pixels, an 8x8 map) is not held to a fraction of a cell as
    a panel's several rings are: its light line starts at least 9 pixels from the centre and
    has dark edges on both sides."""
    import numpy as np

    from marks import ring_widths, runs
    page, problems = open_page(browser, server + "/#gallery")
    wait_stat(page, "searches", 1)
    hover_and_wait(page, "#view-query", 0.3, 0.25)
    x, y, width = page.evaluate("""() => {
        const r = window.simexplain.results[0];
        const m = r.view.markers[0];
        return [...r.view.toCanvas([m.row, m.col]), r.view.canvas.width];
    }""")
    assert width == 180
    row = np.asarray(page.evaluate(f"""() => Array.from(window.simexplain.results[0].view.canvas
        .getContext('2d').getImageData(0, {round(y)}, {width}, 1).data)"""),
        np.int32).reshape(-1, 4)[:, :3]
    line = (row[round(x):] if x < width / 2 else row[round(x)::-1])[:30]  # to the middle
    found = runs(line)
    inner, light, outer = ring_widths(line, light_at_least=2)
    start = next(s for kind, s, n in found if kind == "l" and n >= 2)
    assert start >= 9 and inner >= 1 and outer >= 1, found
    assert problems == []


def test_docs_work_offline(browser, server):
    """/docs renders Swagger UI from files the app serves itself: no request leaves it."""
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    outside: list[str] = []

    def only_local(route):
        url = route.request.url
        if url.startswith(server + "/") or url.startswith("data:"):
            route.continue_()
        else:
            outside.append(url)
            route.abort()
    page.route("**/*", only_local)
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.goto(f"{server}/docs")
    page.wait_for_selector(".swagger-ui .info .title", timeout=30_000)
    assert "simexplain" in page.inner_text(".swagger-ui .info .title")
    page.wait_for_selector(".opblock-summary-path[data-path='/api/explain']", timeout=30_000)
    # an operation opens and shows its request schema
    page.click(".opblock-summary-path[data-path='/api/point']")
    page.wait_for_selector(".opblock.is-open .opblock-body", timeout=10_000)
    page.wait_for_function("document.querySelector('.opblock.is-open').innerText"
                           ".includes('explanation_id')", timeout=10_000)
    page.screenshot(path=str(ARTIFACTS / "web-docs.png"))
    assert outside == [] and problems == []
    context.close()


# -- honest states, scales and upload errors (issue 14) ---------------------------------------
@pytest.fixture(scope="module")
def picky_server(picky, samples):
    from simexplain.web import create_app
    explainer, faceless = picky
    app = create_app(explainer=explainer, samples=[*samples[:2], faceless])
    with serve(app) as url:
        yield url


def test_failed_explain_shows_on_its_panel(browser, picky_server):
    page, problems = open_page(browser, picky_server)
    wait_stat(page, "explains", 1)
    assert "score" in page.inner_text("#pair-info")
    held = []
    page.route("**/api/explain", lambda route: held.append(route))
    page.select_option("#pick-b", "s2")
    page.wait_for_function("document.querySelector('#computing-b') && "
                           "!document.querySelector('#computing-b').hidden")
    for _ in range(100):  # the request is held while the page shows that it computes
        if held:
            break
        page.wait_for_timeout(50)
    assert held, "the explain request never left the page"
    # while it computes: a spinner on both panels, the old maps and numbers dimmed
    assert page.is_visible("#computing-a") and page.is_visible("#computing-b")
    assert "computing" in page.inner_text("#computing-b")
    assert page.eval_on_selector("#view-b", "c => c.classList.contains('stale')")
    assert page.eval_on_selector("#pair-info", "e => e.classList.contains('stale')")
    shoot(page, ARTIFACTS / "web-computing.png")
    held[0].continue_()
    page.unroute("**/api/explain")
    page.wait_for_selector("#error-b:not([hidden])")
    message = page.inner_text("#error-b")
    assert "no-face" in message and "no face found" in message
    assert not page.is_visible("#error-a") and not page.is_visible("#computing-b")
    # nothing old stays up under the new name: no score, b shows the new image without a map
    assert "score" not in page.inner_text("#pair-info")
    assert page.inner_text("#caption-b") == "no-face"
    assert page.evaluate("window.simexplain.pairViews.b.map") is None
    width, height = page.eval_on_selector("#view-b", "c => [c.width, c.height]")
    assert abs(width / height - 77 / 50) < 0.02  # the no-face image's own shape
    shoot(page, ARTIFACTS / "web-error.png")
    # a good image again: the error goes, the score comes back
    page.select_option("#pick-b", "s1")
    wait_stat(page, "explains", 2)
    assert not page.is_visible("#error-b") and "score" in page.inner_text("#pair-info")
    # the browser logs the refused request itself; nothing else went wrong
    assert [p for p in problems if "status of 400" not in p] == []


def test_colour_bar_readout_and_tooltips(browser, server):
    page, problems = open_page(browser, server)
    wait_stat(page, "explains", 1)
    e = page.evaluate("window.simexplain.state.pair.explanation")
    values = [v for row in e["a"]["overall"] for v in row]
    peak = max(abs(v) for v in values)
    assert page.is_visible("#scale-a") and page.is_visible("#scale-b")
    assert float(page.inner_text("#scale-a .hi")) == pytest.approx(peak, rel=5e-3)
    # an all-positive map is shown on the positive ramp from 0 even in the signed view (no
    # pale red wash); a map with negative values on the signed ramp, -peak..peak
    low = -peak if min(values) < 0 else 0
    assert float(page.inner_text("#scale-a .lo")) == pytest.approx(low, rel=5e-3)
    assert "score" in page.inner_text("#scale-a .unit")

    # the value under the pointer is the drawn (bilinear) map's value there
    hover_and_wait(page, "#view-a", 0.3, 0.6)
    row, col = page.evaluate("[window.simexplain.pairViews.a.markers[0].row, "
                             "window.simexplain.pairViews.a.markers[0].col]")
    grid = e["a"]["overall"]
    rows, cols = len(grid), len(grid[0])
    height, width = e["a"]["image_size"]
    fy = min(max((row + 0.5) * rows / height - 0.5, 0), rows - 1)
    fx = min(max((col + 0.5) * cols / width - 0.5, 0), cols - 1)
    y0, x0 = int(fy), int(fx)
    y1, x1 = min(y0 + 1, rows - 1), min(x0 + 1, cols - 1)
    dy, dx = fy - y0, fx - x0
    expected = ((grid[y0][x0] * (1 - dx) + grid[y0][x1] * dx) * (1 - dy)
                + (grid[y1][x0] * (1 - dx) + grid[y1][x1] * dx) * dy)
    readout = page.inner_text("#readout-a")
    assert readout.startswith("value under the pointer:")
    assert float(readout.split(":")[1]) == pytest.approx(expected, rel=5e-3, abs=1e-9)
    # the point map on b has its own scale
    point_peak = page.evaluate("Math.max(...window.simexplain.pairViews.b.map.flat()"
                               ".map(Math.abs))")
    assert float(page.inner_text("#scale-b .hi")) == pytest.approx(point_peak, rel=5e-3)
    assert "point map" in page.inner_text("#scale-b .unit")

    # tooltips explain score, residual and s_R
    titles = page.eval_on_selector_all("#pair-info .term", "t => t.map(x => x.title)")
    assert any("similarity" in t for t in titles) and any("sum" in t for t in titles)
    page.mouse.move(5, 5)
    drag(page, "#view-a", (0.1, 0.1), (0.6, 0.5))
    page.wait_for_function("document.querySelector('#pair-info').textContent.includes('region')")
    titles = page.eval_on_selector_all("#pair-info .term", "t => t.map(x => x.title)")
    assert any("partial similarity" in t for t in titles)
    # the positive view starts its scale at 0
    page.uncheck("#signed")
    assert page.inner_text("#scale-a .lo") == "0"
    shoot(page, ARTIFACTS / "web-scale.png")
    # a map with negative values (the relative map sums to 0) gets the signed view, an
    # all-positive one (Grad-CAM) the positive view, with the same box checked
    page.check("#signed")
    page.mouse.move(5, 5)
    page.click("#view-a")  # clears the region
    for method, signed in (("relative", True), ("gradcam", False)):
        explains = stat(page, "explains")
        page.select_option("#method", method)
        wait_stat(page, "explains", explains + 1)
        e = page.evaluate("window.simexplain.state.pair.explanation")
        values = [v for row in e["a"]["overall"] for v in row]
        assert (min(values) < 0) == signed
        peak = max(abs(v) for v in values)
        low = float(page.inner_text("#scale-a .lo"))
        assert low == (pytest.approx(-peak, rel=5e-3) if signed else 0)
    assert problems == []


def test_upload_errors_beside_the_control(browser, server):
    page, problems = open_page(browser, server)
    wait_stat(page, "explains", 1)
    page.set_input_files("#upload-a", files=[{"name": "notes.png", "mimeType": "image/png",
                                              "buffer": b"not an image at all"}])
    page.wait_for_selector("#upload-error-a:not([hidden])")
    message = page.inner_text("#upload-error-a")
    assert "notes.png" in message and "not an image" in message
    assert not page.is_visible("#upload-error-b")
    big = b"\x89PNG" + b"\0" * (10 * 2**20 + 1000)
    page.set_input_files("#upload-b", files=[{"name": "huge.png", "mimeType": "image/png",
                                              "buffer": big}])
    page.wait_for_selector("#upload-error-b:not([hidden])")
    message = page.inner_text("#upload-error-b")
    assert "huge.png" in message and "10 MB" in message and "bytes" not in message
    shoot(page, ARTIFACTS / "web-upload-error.png")
    # a good upload clears the error
    import io

    from PIL import Image
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(buffer, format="PNG")
    page.set_input_files("#upload-a", files=[{"name": "red.png", "mimeType": "image/png",
                                              "buffer": buffer.getvalue()}])
    wait_stat(page, "explains", 2)
    assert not page.is_visible("#upload-error-a")
    assert [p for p in problems if "status of 400" not in p] == []


def test_point_map_cell_and_ranked_matches(browser, server):
    page, problems = open_page(browser, server)
    wait_stat(page, "explains", 1)
    hover_and_wait(page, "#view-a", 0.3, 0.7)
    e = page.evaluate("window.simexplain.state.pair.explanation")
    a = page.evaluate("({cell: window.simexplain.pairViews.a.cell, "
                      "cross: window.simexplain.pairViews.a.markers[0]})")
    # the pointed cell is outlined: the grid cell of a that holds the point
    rows, cols = e["a"]["grid"]
    top, left, bottom, right = e["a"]["crop"]
    row, col = a["cross"]["row"], a["cross"]["col"]
    r = min(int((row - top) * rows / (bottom - top)), rows - 1)
    c = min(int((col - left) * cols / (right - left)), cols - 1)
    height, width = (bottom - top) / rows, (right - left) / cols
    assert a["cell"] == pytest.approx([top + r * height, left + c * width,
                                       top + (r + 1) * height, left + (c + 1) * width])
    # on b: the three strongest cells of the drawn map, ringed and numbered 1, 2, 3 by rank
    b = page.evaluate("({map: window.simexplain.pairViews.b.map, "
                      "markers: window.simexplain.pairViews.b.markers})")
    ranked = sorted(((v, i, j) for i, row_ in enumerate(b["map"]) for j, v in enumerate(row_)),
                    reverse=True)[:3]
    markers = b["markers"]
    assert [m["label"] for m in markers] == ["1", "2", "3"]
    assert [m["kind"] for m in markers] == ["ring"] * 3
    assert [m["value"] for m in markers] == pytest.approx([v for v, _, _ in ranked], rel=1e-5)
    rows_b, cols_b = e["b"]["grid"]
    tb, lb, bb, rb = e["b"]["crop"]
    for m, (_, i, j) in zip(markers, ranked):
        if m["value"] > ranked[-1][0]:  # ties at the third place may come in either order
            assert m["row"] == pytest.approx(tb + (i + 0.5) * (bb - tb) / rows_b)
            assert m["col"] == pytest.approx(lb + (j + 0.5) * (rb - lb) / cols_b)
    # the label says which map this is: the decomposition's, of the default kind
    from simexplain.explanation import DEFAULT_POINT_MAP, point_map_label
    info = page.inner_text("#pair-info")
    assert f"point map: decomposition, {point_map_label(DEFAULT_POINT_MAP)}" in info
    shoot(page, ARTIFACTS / "web-point-ranked.png")
    # with a method that has no point maps, the point map is still the decomposition's, and
    # the page says so
    page.mouse.move(5, 5)
    explains = stat(page, "explains")
    page.select_option("#method", "gradcam")
    wait_stat(page, "explains", explains + 1)
    hover_and_wait(page, "#view-a", 0.3, 0.7)
    info = page.inner_text("#pair-info")
    assert "point map: decomposition" in info and "gradcam has no point maps" in info
    assert "maps: gradcam" in info
    assert problems == []


DROP = """([selector, name, bytes]) => {
  const transfer = new DataTransfer();
  transfer.items.add(new File([new Uint8Array(bytes)], name, { type: "image/png" }));
  const target = document.querySelector(selector);
  for (const type of ["dragenter", "dragover", "drop"]) {
    target.dispatchEvent(new DragEvent(type, { dataTransfer: transfer, bubbles: true,
                                               cancelable: true }));
  }
}"""


def test_drop_an_image_on_a_panel(browser, server, kit):
    import io
    page, problems = open_page(browser, server)
    wait_stat(page, "explains", 1)
    # a file that is no image: the error sits beside b's upload control and names the file
    page.evaluate(DROP, ["#view-b", "scribble.png", list(b"no pixels here")])
    page.wait_for_selector("#upload-error-b:not([hidden])")
    message = page.inner_text("#upload-error-b")
    assert "scribble.png" in message and "not an image" in message
    assert not page.is_visible("#upload-error-a")
    shoot(page, ARTIFACTS / "web-drop-error.png")
    # an image dropped on a's panel is uploaded and explained against b
    buffer = io.BytesIO()
    kit.two_part(3, 1, size=72).save(buffer, format="PNG")
    page.evaluate(DROP, ["#view-a", "dropped.png", list(buffer.getvalue())])
    wait_stat(page, "explains", 2)
    assert page.inner_text("#caption-a") == "dropped.png"
    assert page.eval_on_selector("#pick-a", "s => s.value").startswith("u")
    assert page.evaluate("window.simexplain.state.pair.explanation.a.image_size") == [72, 72]
    assert [p for p in problems if "status of 400" not in p] == []


def test_layout_and_keyboard(browser, server):
    page, problems = open_page(browser, server)
    wait_stat(page, "explains", 1)
    # the pair view uses the width of a 1,400 px window: both panels side by side, each
    # canvas (square images here) close to half the width
    pair = page.locator("#pair-view .pair").bounding_box()
    a, b = (page.locator(f"#view-{s}").bounding_box() for s in "ab")
    assert pair["width"] >= VIEWPORT["width"] - 60
    assert a["width"] >= 560 and b["width"] >= 560 and b["x"] > a["x"] + a["width"]
    # narrow windows stack the panels, each within the window
    page.set_viewport_size({"width": 700, "height": 1000})
    page.wait_for_function("document.querySelector('#view-a').getBoundingClientRect().width"
                           " <= 700")
    a, b = (page.locator(f"#view-{s}").bounding_box() for s in "ab")
    assert b["y"] >= a["y"] + a["height"] and a["width"] <= 700 and b["width"] <= 700
    shoot(page, ARTIFACTS / "web-narrow.png")
    page.set_viewport_size(VIEWPORT)

    # every control is reached with Tab, in reading order, shows a focus ring and has a name
    page.mouse.move(5, 5)
    page.evaluate("document.activeElement && document.activeElement.blur()")
    order = []
    for _ in range(25):
        page.keyboard.press("Tab")
        focused = page.evaluate("""() => { const e = document.activeElement;
          const style = getComputedStyle(e.closest('label.upload') || e);
          const name = e.getAttribute('aria-label') || (e.labels && e.labels.length &&
            e.labels[0].textContent.trim()) || e.textContent.trim();
          return e === document.body ? null : [e.id, style.outlineStyle, name]; }""")
        if focused is None or focused[0] in [o[0] for o in order]:
            break
        order.append(focused)
    ids = [o[0] for o in order]
    expected = ["tab-pair", "model", "method", "size", "opacity", "signed", "download",
                "pick-a", "upload-a", "view-a", "pick-b", "upload-b", "view-b"]
    assert [i for i in ids if i in expected] == expected
    for element, outline, name in order:
        assert outline != "none", f"{element} shows no focus ring"
        assert name, f"{element} has no accessible name"
    # the arrow keys on a focused image give point maps, as the pointer does
    page.focus("#view-a")
    before = canvas_hash(page, "#view-b")
    applied = stat(page, "pointApplied")
    page.keyboard.press("ArrowUp")
    wait_stat(page, "pointApplied", applied + 1)
    assert canvas_hash(page, "#view-b") != before
    shoot(page, ARTIFACTS / "web-keyboard.png")
    page.keyboard.press("Escape")
    page.wait_for_function("window.simexplain.stats.inFlight === 0")
    assert problems == []


# -- zoo models: their own sample pairs, identical methods, finer grids (real models) --------
@pytest.fixture(scope="module")
def zoo_server():
    from simexplain import zoo
    from simexplain.datasets import DatasetMissing
    try:
        zoo.entry("facenet").sample_pair(), zoo.entry("fmnist-gap").sample_pair()
    except DatasetMissing as exc:
        pytest.fail(f"the zoo's sample pairs are missing: {exc}", pytrace=False)
    from simexplain.web import create_app
    app = create_app(model="facenet", max_input_side=112)
    with serve(app) as url:
        yield url


def test_models_open_on_their_own_pair(browser, zoo_server):
    """`serve --model facenet` opens on two faces with maps drawn; another model picked in
    the menu opens on its own pair (two sneakers for the Fashion-MNIST models)."""
    from simexplain import zoo
    page, problems = open_page(browser, zoo_server)
    wait_stat(page, "explains", 1, timeout=120_000)
    faces = [p.name for p in zoo.entry("facenet").sample_pair()]
    assert [page.inner_text(f"#caption-{s}") for s in "ab"] == faces
    e = page.evaluate("window.simexplain.state.pair.explanation")
    assert e["model"] == "facenet" and e["a"]["crop"] != [0, 0, *e["a"]["image_size"]]
    for side in "ab":  # maps drawn on both faces, with their scales
        assert page.evaluate(f"window.simexplain.pairViews.{side}.map") is not None
        assert page.is_visible(f"#scale-{side}") and not page.is_visible(f"#error-{side}")
    shoot(page, ARTIFACTS / "web-facenet.png")
    # the issue's own case: a photo without a face as image b names itself on b's panel
    coffee = page.eval_on_selector_all("#pick-b option", "o => o.filter(x => x.textContent "
                                       "=== 'coffee').map(x => x.value)")
    with_map = canvas_hash(page, "#view-a")
    page.select_option("#pick-b", coffee[0])
    page.wait_for_selector("#error-b:not([hidden])", timeout=60_000)
    message = page.inner_text("#error-b")
    assert "coffee" in message and "no face found" in message
    assert message.count("image b") == 1
    assert not page.is_visible("#error-a") and "score" not in page.inner_text("#pair-info")
    # no map stays drawn on a either: the plain photo
    assert page.evaluate("window.simexplain.pairViews.a.map") is None
    assert canvas_hash(page, "#view-a") != with_map
    shoot(page, ARTIFACTS / "web-facenet-no-face.png")
    page.select_option("#model", "fmnist-gap")
    wait_stat(page, "explains", 2, timeout=120_000)
    sneakers = [p.name for p in zoo.entry("fmnist-gap").sample_pair()]
    assert [page.inner_text(f"#caption-{s}") for s in "ab"] == sneakers
    assert page.evaluate("window.simexplain.state.pair.explanation.model") == "fmnist-gap"
    assert not page.is_visible("#error-b")  # the new pair cleared the error
    assert [p for p in problems if "status of 400" not in p] == []


def test_identical_methods_and_finer_grid(browser, zoo_server):
    page, problems = open_page(browser, zoo_server)
    wait_stat(page, "explains", 1, timeout=120_000)
    page.select_option("#model", "fmnist-gap")
    wait_stat(page, "explains", 2, timeout=120_000)

    # the note comes from the maps themselves: under the GAP head Grad-CAM and RGrad-CAM agree
    def note():
        page.wait_for_function("(e => window.simexplain.stats.identicalFor === "
                               "`${e.explanation_id} ${e.method}`)"
                               "(window.simexplain.state.pair.explanation)", timeout=60_000)
        return page.inner_text("#method-note")
    note()
    page.select_option("#method", "gradcam")
    wait_stat(page, "explains", 3, timeout=60_000)
    text = note()
    assert "identical to rgradcam for this model's head" in text
    assert "positive part of relative" in text
    e = page.evaluate("window.simexplain.state.pair.explanation")
    import numpy as np
    import torch

    from simexplain import zoo
    from simexplain.methods import get_method
    a, b = zoo.entry("fmnist-gap").sample_pair()
    rg = get_method("rgradcam").attribute(zoo.load("fmnist-gap"), a, b)
    assert np.allclose(e["a"]["overall"], rg[0].numpy(), rtol=1e-3, atol=1e-6)
    shoot(page, ARTIFACTS / "web-identical.png")
    # under max pooling (fmnist-gmp) they differ, and the page does not claim otherwise
    explains = stat(page, "explains")
    page.select_option("#model", "fmnist-gmp")
    wait_stat(page, "explains", explains + 1, timeout=60_000)
    assert "rgradcam" not in note()
    gmp = zoo.load("fmnist-gmp")
    g, r = (get_method(m).attribute(gmp, a, b)[0] for m in ("gradcam", "rgradcam"))
    assert not torch.allclose(g, r, rtol=1e-3, atol=1e-6)

    # a finer grid: the input size menu offers larger inputs up to the server's limit
    sizes = page.eval_on_selector_all("#size option", "o => o.map(x => Number(x.value))")
    assert sizes[0] == 28 and max(sizes) <= 112 and 56 in sizes
    assert page.inner_text("#grid-info") == "grid 7x7"
    explains = stat(page, "explains")
    page.select_option("#size", "56")
    wait_stat(page, "explains", explains + 1, timeout=60_000)
    e = page.evaluate("window.simexplain.state.pair.explanation")
    assert e["a"]["grid"] == [14, 14] and e["size"] == 56
    assert page.inner_text("#grid-info") == "grid 14x14"
    hover_and_wait(page, "#view-a", 0.5, 0.5)
    assert len(page.evaluate("window.simexplain.pairViews.b.map")) == 14
    shoot(page, ARTIFACTS / "web-finer-grid.png")
    assert stat(page, "errors") == 0, stat(page, "lastError")
    assert problems == []


def test_class_token_share_and_a_layer_without_spatial_map(browser, samples):
    """A class-token ViT: the page shows each image's class-token share of the score, and at
    the last block says there is no spatial map instead of showing a flat one."""
    from simexplain.explainer import Explainer
    from simexplain.images import Preprocess
    from simexplain.toy import tiny_vit
    from simexplain.web import create_app
    for layer, spatial in (("blocks.0", True), ("blocks.1", False)):
        explainer = Explainer(tiny_vit(), layer, transform=Preprocess(size=(28, 28)),
                              model_name=f"toy-vit-{layer}")
        with serve(create_app(explainer=explainer, samples=samples)) as url:
            page, problems = open_page(browser, url)
            wait_stat(page, "explains", 1)
            info = page.inner_text("#pair-info")
            assert "class tokens a" in info, info
            assert ("no spatial map at this layer" in info) is not spatial, info
            page.screenshot(path=str(ARTIFACTS / f"class-token-{layer}.png"))
            assert not problems, problems
            page.close()


def test_gallery_view_marks_files_changed_or_gone_since_indexing(browser, explainer,
                                                                   gallery_dir, samples,
                                                                   tmp_path):
    """A result whose file changed after the build shows a stale note on its card; one whose
    file is gone is listed under the results, not shown (its image is never served)."""
    import shutil
    from PIL import Image
    from simexplain.retrieval import Index
    from simexplain.web import create_app
    gallery = tmp_path / "gallery"
    shutil.copytree(gallery_dir, gallery)
    Index.build(gallery, explainer, model_name="toy", out=tmp_path / "index", progress=False)
    with serve(create_app(explainer=explainer, index=tmp_path / "index",
                          samples=samples)) as url:
        page, problems = open_page(browser, url + "/#gallery")
        wait_stat(page, "searches", 1)
        names = page.eval_on_selector_all("#results .card .name",
                                          "n => n.map(x => x.textContent)")
        assert page.locator("#results .stale").count() == 0
        with Image.open(gallery / names[0]) as image:
            Image.new(image.mode, image.size, "white").save(gallery / names[0])
        (gallery / names[1]).unlink()
        page.select_option("#k", "24")  # a new search of the whole image reads the files
        wait_stat(page, "searches", 2)
        shown = page.eval_on_selector_all("#results .card .name",
                                          "n => n.map(x => x.textContent)")
        assert shown[0] == names[0] and names[1] not in shown
        first = page.locator("#results .card").nth(0)
        assert "changed since it was indexed" in first.locator(".stale").inner_text()
        note = page.locator("#results p.stale").inner_text()
        assert names[1] in note and "missing" in note
        assert stat(page, "errors") == 0, stat(page, "lastError")
        assert problems == []
