"""Notebook display: the HTML a `PairExplanation` and a list of search hits show inline in
Jupyter (images embedded as PNG data URIs: nothing is fetched), and `PairExplanation.show`'s
figures. The figures themselves are drawn by `pair_report` and `visualize`; this module only
lays them out as HTML and picks them by name."""

from __future__ import annotations

import base64
import html
import inspect
import io
import warnings
from pathlib import Path
from typing import Any, TYPE_CHECKING
from collections.abc import Callable, Sequence

from PIL import Image

from . import pair_report, visualize
from .errors import SimexplainError
from .explanation import DEFAULT_POINT_MAP, PairExplanation
from .images import load_image
from .patterns import DEFAULT_PATTERNS

if TYPE_CHECKING:
    from .retrieval.index import Hit

PANEL_SIDE = 256  # longest side of a pair's panels in the HTML, in pixels
THUMBNAIL_SIDE = 128  # longest side of a hit's thumbnail
MIN_SHOWN_SIDE = 112  # smaller images (a 28-pixel item) are scaled up on screen, pixels crisp
PAIR_MAPS = ("overall", "relative")  # the maps a pair's HTML shows (pair_report.MAP_PANELS)


def png_data_uri(png: bytes | Image.Image) -> str:
    """A PNG (its bytes, or an image to encode) as a data: URI for an <img> src."""
    if isinstance(png, Image.Image):
        buffer = io.BytesIO()
        png.save(buffer, format="PNG")
        png = buffer.getvalue()
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _img(image: Image.Image, alt: str) -> str:
    """An <img> of the image, embedded; small images are shown larger, pixels crisp."""
    scale = max(1, MIN_SHOWN_SIDE // max(image.size))
    style = (f' style="width:{image.width * scale}px;image-rendering:pixelated"'
             if scale > 1 else "")
    return f'<img src="{png_data_uri(image)}" alt="{html.escape(alt)}"{style}>'


def _figure(image: Image.Image, caption: str) -> str:
    return (f'<figure style="margin:0 6px 6px 0;display:inline-block;vertical-align:top">'
            f'{_img(image, caption)}<figcaption style="font-size:85%;text-align:center">'
            f'{html.escape(caption)}</figcaption></figure>')


def pair_html(result: PairExplanation) -> str:
    """The pair as HTML: score, similarity, residual and grids, then per side its photo (and,
    where the model saw a crop of it, the crop enlarged beside it) with its overall and
    relative maps (`pair_report.overall_panels`)."""
    grid_a, grid_b = result.a.grid, result.b.grid
    tokens = ""
    if len(result.tokens_a) or len(result.tokens_b):
        tokens = (f", prefix tokens carry {result.token_share_a:.4f} (a) and "
                  f"{result.token_share_b:.4f} (b)")
    header = (f'<p><b>{html.escape(result.similarity.name)} {result.score:.4f}</b> '
              f'(decomposition residual {result.residual:.1e}; feature grids '
              f'{grid_a[0]}x{grid_a[1]} and {grid_b[0]}x{grid_b[1]}{tokens})</p>')
    rows = ["<div>" + "".join(_figure(image, caption) for image, caption in row) + "</div>"
            for row in pair_report.overall_panels(result, PAIR_MAPS, PANEL_SIDE)]
    legend = ('<p style="font-size:85%">Signed maps: red raises the score, blue lowers it. '
              "<code>result.show(kind)</code> draws more: "
              f"{', '.join(repr(kind) for kind in SHOW_KINDS)}.</p>")
    return '<div class="simexplain-pair">' + header + "".join(rows) + legend + "</div>"


def _show_overall(result: PairExplanation, title: str = "") -> Image.Image:
    return pair_report.overall_figure(result, title)


def _show_relative(result: PairExplanation, title: str = "") -> Image.Image:
    return pair_report.overall_figure(result, title or f"relative maps ({result.similarity} = "
                                      f"{result.score:.4f})", maps=("relative",))


def _show_points(result: PairExplanation, points: Sequence[tuple[float, float]] | None = None,
                 side: str = "a", kind: str = DEFAULT_POINT_MAP) -> Image.Image:
    chosen = list(points) if points else pair_report.default_points(result, side=side)
    return pair_report.points_figure(result, chosen, kind, side)[0]


def _show_patterns(result: PairExplanation, k: int = DEFAULT_PATTERNS,
                   kind: str = DEFAULT_POINT_MAP) -> Image.Image:
    return pair_report.patterns_figure(result, k, kind)[0]


# kind -> the function drawing it; its keyword arguments are the kind's options
SHOW_KINDS: dict[str, Callable[..., Image.Image]] = {
    "overall": _show_overall, "relative": _show_relative, "points": _show_points,
    "patterns": _show_patterns,
}


def show(result: PairExplanation, kind: str, /, **options: Any) -> Image.Image:
    """The figure `kind` of a pair as an image (see `PairExplanation.show`)."""
    if kind not in SHOW_KINDS:
        raise SimexplainError(f"unknown figure kind {kind!r}; kinds: "
                              f"{', '.join(repr(name) for name in SHOW_KINDS)}")
    draw = SHOW_KINDS[kind]
    allowed = list(inspect.signature(draw).parameters)[1:]
    unknown = [name for name in options if name not in allowed]
    if unknown:
        raise SimexplainError(f"show({kind!r}) has no option {unknown[0]!r}; its options: "
                              f"{', '.join(allowed)}")
    return draw(result, **options)


def _thumbnail(hit: Hit, hits: Sequence[Hit]) -> Image.Image:
    """The hit's photo shrunk to a thumbnail, its region map overlaid when it carries one; read
    through the index searched (`Hits.image`: never a link out of the gallery). An explained
    hit shows what the model saw (`View.seen`: a face crop fills the thumbnail)."""
    if hit.explanation is not None:
        view = visualize.View.seen(hit.explanation.b, THUMBNAIL_SIDE)
        if hit.region_map is not None:
            return view.overlay(hit.region_map, signed=True)
        return view.photo()
    read = getattr(hits, "image", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a stale file: the caption says so
        photo = read(hit) if read is not None else load_image(hit.path)
    return visualize.shown(photo, THUMBNAIL_SIDE)


def hits_html(hits: Sequence[Hit]) -> str:
    """Search hits as a row of thumbnails with rank, file name and score (the region map
    overlaid where the hits were explained for a region). A file that cannot be read shows a
    placeholder naming it."""
    cells = []
    for hit in hits:
        name = html.escape(Path(hit.path).name)
        try:
            picture = _img(_thumbnail(hit, hits), f"hit {hit.rank}")
        except SimexplainError as exc:
            picture = (f'<div class="missing" style="width:{THUMBNAIL_SIDE}px;height:'
                       f'{THUMBNAIL_SIDE}px;border:1px dashed #999;font-size:80%;'
                       f'overflow-wrap:anywhere">unavailable: {html.escape(str(exc))}</div>')
        whole = "" if hit.full_score == hit.score else f" (whole {hit.full_score:.4f})"
        stale = (f'<br><span style="color:#b00">stale: {html.escape(hit.stale)}</span>'
                 if hit.stale else "")
        cells.append(f'<figure class="hit" style="margin:0 8px 8px 0;display:inline-block;'
                     f'vertical-align:top" title="{html.escape(hit.path)}">{picture}'
                     f'<figcaption style="font-size:85%">#{hit.rank} {name}<br>score '
                     f'{hit.score:.4f}{whole}{stale}</figcaption></figure>')
    if not cells:
        return "<p>no hits</p>"
    return '<div class="simexplain-hits">' + "".join(cells) + "</div>"
