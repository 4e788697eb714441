"""The figures of `simexplain demo`, `simexplain pair` and `result.show`: every panel title fits
its panel (measured as matplotlib renders it), so neighbouring titles never run into each
other; captions under linked images fit the image."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from simexplain import demo, pair_report, visualize
from simexplain.explanation import PairExplanation
from simexplain.maps import Frame
from simexplain.toy import toy_explainer

from marks import ring_widths


def noise(size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def explainer():
    return toy_explainer(size=64)


@pytest.fixture(scope="module")
def spec():
    return demo.PairSpec("a long pair title: two photos of noise, one of them much wider",
                         noise((120, 90), 0), noise((80, 160), 1))


@pytest.fixture(scope="module", params=["whole", "face crop"])
def result(request, explainer, spec) -> PairExplanation:
    plain = explainer.explain(spec.a, spec.b)
    if request.param == "whole":
        return plain
    photo = noise((600, 800), 2)   # a's input a small crop of a large photo, as for faces
    side_a = dataclasses.replace(plain.a, image=photo,
                                 frame=Frame((600, 800), (100, 300, 160, 350), plain.a.input_size))
    return PairExplanation.from_sides(side_a, plain.b, "cosine")


def demo_figures(result, explainer, spec, monkeypatch) -> list[tuple]:
    """(panels, scale, title) of each grid figure the demo draws for one pair."""
    drawn = []

    def capture(panels, scale=2.0, title=None):
        drawn.append((panels, scale, title))
        return Image.new("RGB", (1, 1))

    monkeypatch.setattr(visualize, "figure_image", capture)
    pair_report.overall_figure(result, title=spec.title)
    pair_report.points_figure(result, pair_report.default_points(result, count=3))
    pair_report.points_figure(result, pair_report.default_points(result, count=5, side="b"),
                              side="b")
    pair_report.crops_figure(result)
    demo.methods_figure(explainer, spec, result)
    return drawn


def test_every_title_fits_its_panel(result, explainer, spec, monkeypatch):
    figures = demo_figures(result, explainer, spec, monkeypatch)
    assert len(figures) >= 4
    long_titles = 0
    for panels, scale, title in figures:
        figure = visualize.grid_figure(panels, scale, title)
        figure.canvas.draw()
        renderer = figure.canvas.get_renderer()
        columns = max(len(row) for row in panels)
        slot = figure.bbox.width / columns  # an upper bound on any panel's width
        axes = np.asarray(figure.axes).reshape(len(panels), columns)
        for r, row in enumerate(panels):
            extents = [axes[r][c].title.get_window_extent(renderer) for c in range(len(row))]
            for c, ((_, caption), extent) in enumerate(zip(row, extents)):
                assert extent.width <= slot, f"{caption!r} is wider than its panel"
                assert 0 <= extent.x0 and extent.x1 <= figure.bbox.width
                long_titles += "\n" in axes[r][c].title.get_text()
            for left, right in zip(extents, extents[1:]):
                # apart by a visible gap (a few pixels), not merely not overlapping
                assert right.x0 - left.x1 >= 6, "neighbouring titles touch"
        for text in figure.texts:  # the figure's title
            assert text.get_window_extent(renderer).width <= figure.bbox.width
    assert long_titles, "no title needed wrapping: the test would not notice overlaps"


def test_a_word_longer_than_its_panel_is_cut():
    panels = [[(noise((20, 20), n), "x" * 120) for n in range(3)]]
    figure = visualize.grid_figure(panels)
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    for ax in figure.axes:
        assert ax.title.get_text().replace("\n", "") == "x" * 120
        assert ax.title.get_window_extent(renderer).width <= figure.bbox.width / 3


def test_a_caption_under_linked_images_wraps_to_their_width():
    image = noise((60, 90), 3)
    caption = "a caption much longer than ninety pixels, which one line cannot hold"
    out = visualize.captioned(image, caption)
    band = np.asarray(out)[:out.height - image.height]
    assert out.width == image.width and band.shape[0] > 30  # several lines
    dark = np.argwhere(band.min(axis=2) < 128)
    assert dark.size and dark[:, 1].max() < image.width - 2  # no text cut at the edge
    assert np.array_equal(np.asarray(out)[-image.height:], np.asarray(image))


@pytest.mark.parametrize("size, shown_side", [((180, 180), None), ((512, 400), None),
                                              ((512, 400), visualize.panel_side())])
def test_a_marked_point_is_a_light_ring_edged_dark_as_displayed(size, shown_side):
    """A point's ring, read back from the image as it is displayed (at its own size, or shrunk
    into a figure's panel as matplotlib shows it): a light line with a dark edge inside and
    out, each at least 2 displayed pixels wide, on a mid-grey photo."""
    width, height = size
    photo = Image.new("RGB", size, (128, 128, 128))
    centre = (height / 2, width / 2)
    marked = visualize.mark_point(photo, centre, shown_side=shown_side)
    if shown_side:
        scale = shown_side / max(size)
        marked = marked.resize((round(width * scale), round(height * scale)),
                               Image.Resampling.LANCZOS)
    pixels = np.asarray(marked, np.int32)
    row, col = marked.height // 2, marked.width // 2
    inner, light, outer = ring_widths(pixels[row, col:], light_at_least=2)
    assert inner >= 2 and outer >= 2, (inner, light, outer)
