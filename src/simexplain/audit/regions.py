"""Regions of an audit: boxes (top, left, bottom, right) in relative coordinates [0, 1] of the
model input, checked once, with their weights on any feature grid and plain names for where
they lie."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ..errors import SimexplainError

if TYPE_CHECKING:
    import torch

RelativeBox = tuple[float, float, float, float]  # (top, left, bottom, right) in [0, 1]


def check_box(name: str, box: Sequence[float | str]) -> RelativeBox:
    """The box as four floats, or SimexplainError naming the region and the problem."""
    try:
        values = tuple(float(v) for v in box)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise SimexplainError(f"region {name!r} must be four numbers top,left,bottom,right, "
                              f"got {box!r}")
    top, left, bottom, right = values
    if not all(0.0 <= v <= 1.0 for v in values):
        raise SimexplainError(f"region {name!r} {values} lies outside [0, 1]: give "
                              "top,left,bottom,right as fractions of the image's height and width")
    if not (bottom > top and right > left):
        raise SimexplainError(f"region {name!r} {values} is empty: bottom must exceed top and "
                              "right exceed left")
    return top, left, bottom, right


def check_regions(regions: Mapping[str, Sequence[float]] | None) -> dict[str, RelativeBox]:
    """name -> checked box; names must be non-empty words without '='."""
    out: dict[str, RelativeBox] = {}
    for name, box in (regions or {}).items():
        if not isinstance(name, str) or not name.strip() or "=" in name:
            raise SimexplainError(f"a region needs a name (no '='), got {name!r}")
        out[name] = check_box(name, box)
    return out


def parse_region_spec(text: str) -> tuple[str, RelativeBox]:
    """NAME=top,left,bottom,right (relative coordinates) -> (name, box)."""
    name, sep, values = text.partition("=")
    if not sep or not name.strip():
        raise SimexplainError(f"a region is NAME=TOP,LEFT,BOTTOM,RIGHT in relative coordinates "
                              f"(e.g. corner=0,0,0.15,0.15), got {text!r}")
    return name.strip(), check_box(name.strip(), values.split(","))


def area(box: RelativeBox) -> float:
    """The fraction of the image the box covers: its share if similarity went by area."""
    top, left, bottom, right = box
    return (bottom - top) * (right - left)


def grid_weights(box: RelativeBox, grid: tuple[int, int]) -> torch.Tensor:
    """(H*W,) covered fraction of each cell of a feature grid over the whole model input."""
    from ..maps import region_weights  # here: the command line parses regions without torch
    rows, cols = grid
    top, left, bottom, right = box
    return region_weights((top * rows, left * cols, bottom * rows, right * cols), grid,
                          (rows, cols))


def describe(box: RelativeBox, input_size: tuple[int, int] | None = None) -> str:
    """Where a box lies, in words: "top-left 4x4 corner" (sizes in model-input pixels when the
    inputs share one size), "centre 30%x20% box", "top 3x28 strip"."""
    top, left, bottom, right = box
    vertical = _third((top + bottom) / 2, ("top", "middle", "bottom"))
    horizontal = _third((left + right) / 2, ("left", "centre", "right"))
    where = {("middle", "centre"): "centre"}.get((vertical, horizontal),
                                                 f"{vertical}-{horizontal}")
    where = where.replace("middle-", "").replace("-centre", "")
    if input_size is not None:
        height = round((bottom - top) * input_size[0])
        width = round((right - left) * input_size[1])
        size = f"{height}x{width}"
    else:
        size = f"{bottom - top:.0%}x{right - left:.0%}"
    touches_rows = top <= 0.0 or bottom >= 1.0
    touches_cols = left <= 0.0 or right >= 1.0
    if touches_rows and touches_cols and "-" in where:
        shape = "corner"
    elif (bottom - top) >= 0.999 or (right - left) >= 0.999:
        shape = "strip"
    else:
        shape = "box"
    return f"{where} {size} {shape}"


def _third(centre: float, words: tuple[str, str, str]) -> str:
    return words[min(int(centre * 3), 2)]
