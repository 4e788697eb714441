"""Rendering maps: heat-map overlays, views of a photo (whole, or the crop the model saw),
marked points and boxes, figure grids with titles that fit their panels."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from .maps import display_form, upsample
from .sides import pick

if TYPE_CHECKING:
    import torch
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .explanation import PairExplanation, Side


def colorize(values: np.ndarray, signed: bool) -> np.ndarray:
    """(H, W) map -> (H, W, 4) RGBA floats.

    signed: diverging colours centred on 0 (blue negative, red positive), scaled by max |value|;
    positive (paper's display form): ReLU then max-normalise, 'jet'-like colours.
    """
    from matplotlib import colormaps
    if signed:
        peak = float(np.abs(values).max()) or 1.0
        return colormaps["RdBu_r"](0.5 + 0.5 * values / peak)
    return colormaps["jet"](display_form(values))


def overlay(image: Image.Image, heat: np.ndarray, signed: bool = False,
            alpha: float = 0.5, inside: np.ndarray | None = None) -> Image.Image:
    """Blend a map (already at the image's size) over the image; with `inside` (0/1 of the
    image's size), only there (the part of a photo the model saw)."""
    rgba = colorize(heat, signed)
    # fade the colour where the map is ~0 so the photo stays readable
    strength = np.abs(heat) / (np.abs(heat).max() or 1.0) if signed else display_form(heat)
    weight = alpha * (0.3 + 0.7 * strength)[..., None]
    if inside is not None:
        weight = weight * inside[..., None]
    base = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    blended = base * (1 - weight) + rgba[..., :3] * weight
    return Image.fromarray((blended * 255).round().astype(np.uint8))


# Longest side of a photo as drawn in figures and pages (photos are shown whole, at their own
# aspect ratio, downscaled to this).
DISPLAY_SIDE = 512


def display_size(image_size: Sequence[int], max_side: int = DISPLAY_SIDE) -> tuple[int, int]:
    """(height, width) of a photo as displayed: larger than `max_side`, it is shrunk."""
    height, width = image_size
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


# Images smaller than this (a 28-pixel item) are enlarged with crisp square pixels; larger
# ones (photos, face crops) smoothly
CRISP_BELOW = 64


# A smooth downscale filters from at most this many times the target size: larger images are
# first reduced by whole factors (box averages), so that a photo 40 million pixels long costs
# one pass over it, not a filter window of tens of thousands of pixels for every output pixel
REDUCE_ABOVE = 2


def resized(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`image` at (width, height) `size`: a small image enlarged keeps crisp pixels (see
    CRISP_BELOW); anything else is smoothly resampled (from a copy first reduced by whole
    factors where it is more than REDUCE_ABOVE times larger, see `reduced_for`)."""
    if size == image.size:
        return image
    crisp = size[0] > image.width and max(image.size) < CRISP_BELOW
    if crisp:
        return image.resize(size, Image.Resampling.NEAREST)
    return reduced_for(image, size).resize(size, Image.Resampling.LANCZOS)


def reduced_for(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`image` reduced by whole factors (box averages) to at most REDUCE_ABOVE times the
    (width, height) `size` in each direction; the image itself where it is no larger."""
    factors = (max(1, image.width // (REDUCE_ABOVE * max(1, size[0]))),
               max(1, image.height // (REDUCE_ABOVE * max(1, size[1]))))
    if factors == (1, 1):
        return image
    if image.mode not in ("RGB", "RGBA", "L", "LA", "I", "F"):  # reduce works on these
        image = image.convert("RGB")
    return image.reduce(factors)


@dataclass(frozen=True)
class View:
    """A part of a Side's photo as a figure draws it: the whole photo (shrunk to `max_side`),
    or the crop the model saw scaled to `max_side` (a face a few pixels wide is enlarged).
    Build with `View.whole` or `View.seen`; points and maps go through it."""

    side: Side
    box: tuple[int, int, int, int]  # the part drawn, (top, left, bottom, right) photo pixels
    size: tuple[int, int]  # (height, width) as drawn

    @classmethod
    def whole(cls, side: Side, max_side: int = DISPLAY_SIDE) -> View:
        """The whole photo, shrunk when larger than `max_side` (aspect ratio kept)."""
        return cls(side, (0, 0, *side.image_size), display_size(side.image_size, max_side))

    @classmethod
    def seen(cls, side: Side, max_side: int = DISPLAY_SIDE, enlarge: bool = True) -> View:
        """What the model saw: the crop scaled so its longest side is `max_side` (enlarged or
        shrunk; with enlarge=False, only shrunk); the whole photo (`View.whole`) when the
        model saw all of it. Every figure, page and widget that shows a photo next to its
        maps shows this part (the web page: the answers' `crop`)."""
        if not side.frame.cropped:
            return cls.whole(side, max_side)
        top, left, bottom, right = (int(v) for v in side.frame.box)
        longest = max(bottom - top, right - left)
        scale = max_side / longest if enlarge else min(1.0, max_side / longest)
        size = (max(1, round((bottom - top) * scale)), max(1, round((right - left) * scale)))
        return cls(side, (top, left, bottom, right), size)

    @property
    def cropped(self) -> bool:
        """Whether this view is a crop of the photo."""
        return self.box != (0, 0, *self.side.image_size)

    def photo(self) -> Image.Image:
        """The part of the photo, at the drawn size."""
        top, left, bottom, right = self.box
        part = self.side.image.crop((left, top, right, bottom)) if self.cropped else \
            self.side.image
        return resized(part, (self.size[1], self.size[0]))

    def overlay(self, grid_map: torch.Tensor, signed: bool = False, alpha: float = 0.5
                ) -> Image.Image:
        """A map over the side's feature grid drawn on this view where the model saw it."""
        if self.box == tuple(int(v) for v in self.side.frame.box):
            # the view is exactly what the model saw: the grid covers all of it
            return overlay(self.photo(), upsample(grid_map, self.size), signed, alpha)
        heat, inside = self.side.frame.upsample(grid_map, self.size)  # the whole photo
        return overlay(self.photo(), heat, signed, alpha, inside)

    def point(self, point: Sequence[float]) -> tuple[float, ...]:
        """A point (row, col) or box (top, left, bottom, right) in the photo's pixels, in this
        view's drawn pixels."""
        top, left, bottom, right = self.box
        scales = (self.size[0] / (bottom - top), self.size[1] / (right - left))
        offsets = (top, left)
        return tuple((float(v) - offsets[i % 2]) * scales[i % 2] for i, v in enumerate(point))


def shown(side: Side | Image.Image, max_side: int = DISPLAY_SIDE) -> Image.Image:
    """The photo of an `explanation.Side` (or a photo) as displayed (downscaled, aspect ratio
    kept)."""
    if not isinstance(side, Image.Image):
        return View.whole(side, max_side).photo()
    height, width = display_size((side.height, side.width), max_side)
    return resized(side, (width, height))


def overlay_side(side: Side, grid_map: torch.Tensor, signed: bool = False,
                 alpha: float = 0.5,
                 max_side: int = DISPLAY_SIDE) -> Image.Image:
    """A map over a Side's feature grid drawn on its photo (downscaled for display, aspect
    ratio kept) where the model saw it: the whole photo, or the face crop."""
    return View.whole(side, max_side).overlay(grid_map, signed, alpha)


def overlay_map(result: PairExplanation, grid_map: torch.Tensor, side: str,
                signed: bool = False, alpha: float = 0.5, max_side: int = DISPLAY_SIDE
                ) -> Image.Image:
    """`overlay_side` for side "a" or "b" of a PairExplanation. Mark points given in the
    photo's pixels with `mark_point(image, to_display(result.a, point))`."""
    return overlay_side(pick(side, result.a, result.b), grid_map, signed, alpha, max_side)


def to_display(side: Side, point: Sequence[float], max_side: int = DISPLAY_SIDE
               ) -> tuple[float, ...]:
    """A point (row, col) or box (top, left, bottom, right) in a Side's photo pixels, in the
    pixels of that photo as displayed (`shown`, `overlay_side`)."""
    return View.whole(side, max_side).point(point)


@dataclass(frozen=True)
class MarkStyle:
    """How large a ring marking a point is drawn on an image: its radius, the width of its
    light line and of the dark edge on either side of it (pixels)."""

    radius: int
    line: int
    edge: int

    @classmethod
    def for_size(cls, size: tuple[int, int], shown_side: int | None = None) -> MarkStyle:
        """Sizes growing with the image's (width, height) as displayed, so that a ring reads
        alike on a thumbnail and on a full panel (the web page's map views: `markStyle` in
        mapview.js, which also keeps the rings of neighbouring cells apart); in the image's
        pixels. shown_side: the longest side the image is displayed at (a figure's panel:
        `panel_side`), when not at its own size."""
        factor = max(size) / shown_side if shown_side else 1.0  # image pixels per shown one
        radius = max(6.0, min(size) / factor / 28)
        line = max(2.0, radius * 0.2)
        edge = max(2.0, 0.75 * line)
        return cls(round(radius * factor), max(1, round(line * factor)),
                   max(1, round(edge * factor)))


def _draw_ring(draw: ImageDraw.ImageDraw, centre: tuple[float, float], style: MarkStyle,
              color: tuple[int, int, int] = (255, 255, 255)) -> None:
    """A light ring of `color` around (x, y) `centre`, over a dark outline that edges it
    inside and out: readable on any photo and any map colour."""
    x, y = centre
    # Pillow draws an outline inside its box: boxes grown by half a width centre each line on
    # the radius
    for width, fill in ((style.line + 2 * style.edge, (0, 0, 0)), (style.line, color)):
        reach = style.radius + width / 2
        draw.ellipse([x - reach, y - reach, x + reach, y + reach], outline=fill, width=width)


def mark_point(image: Image.Image, point: Sequence[float],
               color: tuple[int, int, int] = (255, 255, 255),
               radius: int | None = None, shown_side: int | None = None) -> Image.Image:
    """Draw a ring at (row, col): a light line of `color` edged dark on both sides, sized to
    the image as displayed (`MarkStyle.for_size`: at its own size, or at `shown_side` pixels
    long in a figure's panel); `radius` overrides the ring's radius."""
    out = image.copy()
    style = MarkStyle.for_size(out.size, shown_side)
    if radius:
        style = MarkStyle(radius, style.line, style.edge)
    row, col = point
    _draw_ring(ImageDraw.Draw(out), (col, row), style, color)
    return out


def mark_box(image: Image.Image, box: Sequence[float],
             color: tuple[int, int, int] = (255, 255, 0)) -> Image.Image:
    """Draw a (top, left, bottom, right) box."""
    out = image.copy()
    top, left, bottom, right = box
    draw = ImageDraw.Draw(out)
    width = max(1, min(out.size) // 120)  # stays visible on large photos
    draw.rectangle([left, top, right - 1, bottom - 1], outline=(0, 0, 0), width=3 * width)
    draw.rectangle([left, top, right - 1, bottom - 1], outline=color, width=width)
    return out


# The widest image `linked_points` draws, in multiples of its height
MAX_WIDTH_RATIO = 6


def linked_points(left: Image.Image, right: Image.Image,
                  links: Sequence[tuple[Sequence[float], Sequence[float]]], colors: Sequence,
                  height: int = 280, gap: int = 24) -> Image.Image:
    """Two images side by side at one `height` (small ones enlarged; one too wide for that
    height is fitted to `MAX_WIDTH_RATIO` heights wide instead, so a long thin photo gives a
    bounded figure), with each link (a point (row, col) of `left`, one of `right`, in those
    images' pixels) drawn as two numbered, ringed points joined by a line in its colour."""
    def fit(image: Image.Image) -> tuple[Image.Image, float]:
        scale = min(height / image.height, MAX_WIDTH_RATIO * height / image.width)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        return resized(image.convert("RGB"), size), scale

    (a, sa), (b, sb) = fit(left), fit(right)
    canvas = Image.new("RGB", (a.width + gap + b.width, height), (255, 255, 255))
    canvas.paste(a, (0, 0))
    canvas.paste(b, (a.width + gap, 0))
    draw = ImageDraw.Draw(canvas)
    r = max(4, height // 40)
    for n, ((ra, ca), (rb, cb)) in enumerate(links):
        color = tuple(colors[n % len(colors)])
        # pixel indices -> the centre of that pixel on the enlarged image
        pa = ((ca + 0.5) * sa, (ra + 0.5) * sa)
        pb = (a.width + gap + (cb + 0.5) * sb, (rb + 0.5) * sb)
        draw.line([pa, pb], fill=(0, 0, 0), width=4)
        draw.line([pa, pb], fill=color, width=2)
        for x, y in (pa, pb):
            draw.ellipse([x - r, y - r, x + r, y + r], fill=color, outline=(0, 0, 0), width=2)
            draw.text((x + r + 1, y - 2 * r), str(n + 1), fill=color, stroke_width=2,
                      stroke_fill=(0, 0, 0))
    return canvas


def wrap_words(text: str, max_width: float, width_of: Callable[[str], float]) -> str:
    """`text` broken into lines (at spaces, or inside a word too long for a line) whose width,
    as `width_of` measures it with the font they are drawn in, is at most `max_width`."""
    lines: list[str] = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and width_of(candidate) <= max_width:
            lines[-1] = candidate
            continue
        while len(word) > 1 and width_of(word) > max_width:  # cut an over-long word
            cut = 1
            while cut < len(word) - 1 and width_of(word[:cut + 1]) <= max_width:
                cut += 1
            lines.append(word[:cut])
            word = word[cut:]
        lines.append(word)
    return "\n".join(lines)


def captioned(image: Image.Image, caption: str, line_height: int = 14) -> Image.Image:
    """The image under a white band holding the caption, wrapped to the image's width."""
    draw = ImageDraw.Draw(image)  # measures with the font `text` draws with (the default)
    margin = 4
    text = wrap_words(caption, image.width - 2 * margin, draw.textlength)
    band = line_height * (text.count("\n") + 1) + 2 * margin
    out = Image.new("RGB", (image.width, image.height + band), (255, 255, 255))
    out.paste(image.convert("RGB"), (0, band))
    ImageDraw.Draw(out).multiline_text((margin, margin), text, fill=(0, 0, 0), spacing=2)
    return out


# Figures are rendered at this resolution; a figure `scale` unit is this many pixels.
FIGURE_DPI = 100
PANEL_SCALE = 2.0  # a panel's size in a figure, in inches (FIGURE_DPI pixels each)
TITLE_SIZE = 8  # points
TITLE_GAP = 12  # pixels kept free between neighbouring titles


def panel_width(figure: Figure, axes: Axes) -> float:
    """Width in pixels a title centred over `axes` may take: its grid slot, or, where the
    layout lets slots overlap (small images need less than a slot), the pitch between
    neighbouring slots, less a gap; either way neighbours' titles never meet."""
    spec = axes.get_subplotspec()
    assert spec is not None  # every panel is placed on the figure's grid
    _, _, lefts, rights = spec.get_gridspec().get_grid_positions(figure)
    room = rights[0] - lefts[0]
    if len(lefts) > 1:
        room = min(room, lefts[1] - lefts[0])
    return room * figure.bbox.width - TITLE_GAP


def panel_side(scale: float = PANEL_SCALE) -> int:
    """The most pixels a panel's image is displayed at in a figure of this `scale`
    (`grid_figure`, rendered at FIGURE_DPI): what marks drawn on it are sized for."""
    return round(scale * FIGURE_DPI)


def grid_figure(panels: list[list[tuple[Image.Image, str]]], scale: float = PANEL_SCALE,
                title: str | None = None) -> Figure:
    """Rows of (image, caption) panels as a matplotlib Figure, each caption wrapped to its
    panel's width (measured with the title font) so that neighbours never overlap."""
    # a bare Figure with its own Agg canvas: drawing never touches pyplot's global backend
    # (a notebook's inline plots stay as they were)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    n_rows = len(panels)
    n_cols = max(len(row) for row in panels)
    figure = Figure(figsize=(scale * n_cols, scale * n_rows + 0.3), dpi=FIGURE_DPI)
    FigureCanvasAgg(figure)
    axes = figure.subplots(n_rows, n_cols, squeeze=False)
    captions = []
    for r, row in enumerate(panels):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(row):
                image, caption = row[c]
                ax.imshow(image)
                ax.set_title(caption, fontsize=TITLE_SIZE)
                captions.append((ax, caption))
    suptitle = figure.suptitle(title, fontsize=10) if title else None
    renderer = figure.canvas.get_renderer()  # type: ignore[attr-defined]  # Agg canvas

    def width_of(text_artist) -> Callable[[str], float]:
        properties = text_artist.get_fontproperties()
        return lambda text: renderer.get_text_width_height_descent(text, properties, False)[0]

    # the layout depends on the titles' heights and the slots on the layout: lay out and
    # wrap in turns until the wrapped titles are those the layout was made for
    texts = [text for text in (*(ax.title for ax, _ in captions), suptitle) if text is not None]
    for _ in range(5):
        before = [text.get_text() for text in texts]
        figure.tight_layout()
        for ax, caption in captions:
            ax.title.set_text(wrap_words(caption, panel_width(figure, ax), width_of(ax.title)))
        if suptitle is not None and title:
            suptitle.set_text(wrap_words(title, figure.bbox.width, width_of(suptitle)))
        if [text.get_text() for text in texts] == before:
            break
    return figure


def figure_image(panels: list[list[tuple[Image.Image, str]]], scale: float = PANEL_SCALE,
                 title: str | None = None) -> Image.Image:
    """Rows of (image, caption) panels as one figure (`grid_figure`), rendered to an image."""
    buffer = io.BytesIO()
    grid_figure(panels, scale, title).savefig(buffer, format="png", dpi=FIGURE_DPI)
    buffer.seek(0)
    with Image.open(buffer) as rendered:
        return rendered.convert("RGB")
