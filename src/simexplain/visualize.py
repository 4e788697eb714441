"""Rendering maps: heat-map overlays, marked points and boxes, figure grids."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from .maps import display_form


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
            alpha: float = 0.5) -> Image.Image:
    """Blend a map (already at the image's size) over the image."""
    rgba = colorize(heat, signed)
    # fade the colour where the map is ~0 so the photo stays readable
    strength = np.abs(heat) / (np.abs(heat).max() or 1.0) if signed else display_form(heat)
    weight = alpha * (0.3 + 0.7 * strength)[..., None]
    base = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    blended = base * (1 - weight) + rgba[..., :3] * weight
    return Image.fromarray((blended * 255).round().astype(np.uint8))


def overlay_map(result, grid_map, side: str, signed: bool = False,
                alpha: float = 0.5) -> Image.Image:
    """Render a map over one side's feature grid of a PairExplanation on that side's image:
    signed colours, or the paper's positive form."""
    return overlay(result.image(side), result.upsample(grid_map, side), signed, alpha)


def mark_point(image: Image.Image, point: Sequence[float], color=(255, 255, 255),
               radius: int | None = None) -> Image.Image:
    """Draw a ringed cross at (row, col)."""
    out = image.copy()
    draw = ImageDraw.Draw(out)
    r = radius or max(3, min(out.size) // 30)
    row, col = point
    draw.ellipse([col - r, row - r, col + r, row + r], outline=(0, 0, 0), width=3)
    draw.ellipse([col - r, row - r, col + r, row + r], outline=color, width=1)
    return out


def mark_box(image: Image.Image, box: Sequence[float], color=(255, 255, 0)) -> Image.Image:
    """Draw a (top, left, bottom, right) box."""
    out = image.copy()
    top, left, bottom, right = box
    draw = ImageDraw.Draw(out)
    width = max(1, min(out.size) // 120)  # stays visible on large photos
    draw.rectangle([left, top, right - 1, bottom - 1], outline=(0, 0, 0), width=3 * width)
    draw.rectangle([left, top, right - 1, bottom - 1], outline=color, width=width)
    return out


def save_figure(panels: list[list[tuple[Image.Image, str]]], path, scale: float = 2.0,
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
