"""The "patterns" box of the pair view in headless Chromium: the two-stream sketch model's
cross-view patterns drawn as linked points, each end on its own image."""

from __future__ import annotations


import pytest
from PIL import Image

from browser_helpers import ARTIFACTS, open_page, serve, wait_stat


def test_patterns_are_drawn_across_the_two_images(headless_chromium):
    from simexplain import zoo
    from simexplain.web import create_app
    paths = zoo.entry("fmnist-sketch").sample_pair()
    samples = [(path.stem, Image.open(path).convert("RGB")) for path in paths]
    expected = zoo.load("fmnist-sketch").explain(*(image for _, image in samples)).patterns(5)
    assert expected
    app = create_app(model="fmnist-sketch", samples=samples, models=["fmnist-sketch"])
    with serve(app) as url:
        page, problems = open_page(headless_chromium, url)
        wait_stat(page, "explains", 1)
        page.check("#patterns")
        page.wait_for_function("document.querySelectorAll('#patterns-layer circle').length >= 2",
                               timeout=30_000)
        circles = page.eval_on_selector_all(
            "#patterns-layer circle", "cs => cs.map(c => { const b = c.getBoundingClientRect();"
            " return [b.x + b.width / 2, b.y + b.height / 2]; })")
        boxes = {side: page.locator(f"#view-{side}").bounding_box() for side in "ab"}
        assert len(circles) == 2 * len(expected)
        lines = page.eval_on_selector_all("#patterns-layer line", "ls => ls.length")
        assert lines == 2 * len(expected)  # a dark outline and a coloured line per pattern
        for n, pattern in enumerate(expected):
            for (x, y), side, point in ((circles[2 * n], "a", pattern.point_a),
                                        (circles[2 * n + 1], "b", pattern.point_b)):
                box = boxes[side]
                # the point's pixel centre on the canvas that shows that image (28x28 photos)
                assert x == pytest.approx(box["x"] + (point[1] + 0.5) / 28 * box["width"], abs=1.5)
                assert y == pytest.approx(box["y"] + (point[0] + 0.5) / 28 * box["height"], abs=1.5)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "pair-patterns.png"))
        # the pair explained again (another method, the same decomposition): drawn again
        page.select_option("#method", "gradcam")
        wait_stat(page, "explains", 2)
        page.wait_for_function("document.querySelectorAll('#patterns-layer circle').length >= 2",
                               timeout=30_000)
        page.uncheck("#patterns")
        page.wait_for_function("document.querySelectorAll('#patterns-layer circle').length === 0",
                               timeout=5_000)
        assert not problems, problems
