"""Rendering maps: heat-map overlays, marked points and boxes, figure grids."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

from .maps import display_form

if TYPE_CHECKING:
    import torch

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


def shown(side: Side | Image.Image, max_side: int = DISPLAY_SIDE) -> Image.Image:
    """The photo of an `explanation.Side` (or a photo) as displayed (downscaled, aspect ratio
    kept)."""
    photo = side if isinstance(side, Image.Image) else side.image
    height, width = display_size((photo.height, photo.width), max_side)
    if (height, width) == (photo.height, photo.width):
        return photo
    return photo.resize((width, height), Image.Resampling.LANCZOS)


def overlay_side(side: Side, grid_map: torch.Tensor, signed: bool = False, alpha: float = 0.5,
                 max_side: int = DISPLAY_SIDE) -> Image.Image:
    """A map over a Side's feature grid drawn on its photo (downscaled for display, aspect
    ratio kept) where the model saw it: the whole photo, or the face crop."""
    base = shown(side, max_side)
    heat, inside = side.frame.upsample(grid_map, (base.height, base.width))
    return overlay(base, heat, signed, alpha, inside)


def overlay_map(result: PairExplanation, grid_map: torch.Tensor, side: str, signed: bool = False,
                alpha: float = 0.5,
                max_side: int = DISPLAY_SIDE) -> Image.Image:
    """`overlay_side` for side "a" or "b" of a PairExplanation. Mark points given in the
    photo's pixels with `mark_point(image, to_display(result.a, point))`."""
    return overlay_side(result.a if side == "a" else result.b, grid_map, signed, alpha,
                        max_side)


def to_display(side: Side, point: Sequence[float], max_side: int = DISPLAY_SIDE
               ) -> tuple[float, ...]:
    """A point (row, col) or box (top, left, bottom, right) in a Side's photo pixels, in the
    pixels of that photo as displayed (`shown`, `overlay_side`)."""
    height, width = side.image_size
    shown_height, shown_width = display_size((height, width), max_side)
    scales = (shown_height / height, shown_width / width)
    return tuple(float(v) * scales[i % 2] for i, v in enumerate(point))


def mark_point(image: Image.Image, point: Sequence[float],
               color: tuple[int, int, int] = (255, 255, 255),
               radius: int | None = None) -> Image.Image:
    """Draw a ringed cross at (row, col)."""
    out = image.copy()
    draw = ImageDraw.Draw(out)
    r = radius or max(3, min(out.size) // 30)
    row, col = point
    draw.ellipse([col - r, row - r, col + r, row + r], outline=(0, 0, 0), width=3)
    draw.ellipse([col - r, row - r, col + r, row + r], outline=color, width=1)
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


def linked_points(left: Image.Image, right: Image.Image,
                  links: Sequence[tuple[Sequence[float], Sequence[float]]], colors: Sequence,
                  height: int = 280, gap: int = 24) -> Image.Image:
    """Two images side by side at one `height` (small ones enlarged), with each link (a point
    (row, col) of `left`, one of `right`, in those images' pixels) drawn as two numbered,
    ringed points joined by a line in its colour."""
    def fit(image: Image.Image) -> tuple[Image.Image, float]:
        scale = height / image.height
        size = (max(1, round(image.width * scale)), height)
        # keep tiny pixels crisp
        resample = Image.Resampling.NEAREST if scale >= 4 else Image.Resampling.BILINEAR
        return image.convert("RGB").resize(size, resample), scale

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


def captioned(image: Image.Image, caption: str, band: int = 22) -> Image.Image:
    """The image under a white band holding one line of caption."""
    out = Image.new("RGB", (image.width, image.height + band), (255, 255, 255))
    out.paste(image.convert("RGB"), (0, band))
    ImageDraw.Draw(out).text((4, 5), caption, fill=(0, 0, 0))
    return out


def save_figure(panels: list[list[tuple[Image.Image, str]]], path: str | Path, scale: float = 2.0,
                title: str | None = None) -> None:
    """Save rows of (image, caption) panels as one PNG figure."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n_rows = len(panels)
    n_cols = max(len(row) for row in panels)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(scale * n_cols, scale * n_rows + 0.3),
                             squeeze=False)
    for r, row in enumerate(panels):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(row):
                image, caption = row[c]
                ax.imshow(image)
                ax.set_title(caption, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
