"""Reading a drawn ring back from its pixels, for the tests of how points are marked (the web
page's canvases, the figures): along a line from the ring's centre, runs of dark, light and
other pixels, and the light line with the dark edges around it."""

from __future__ import annotations

import numpy as np

# dark and light, as the rings are drawn (black at 0.85 opacity or solid, and white)
DARK, LIGHT = 70, 200


def runs(pixels: np.ndarray) -> list[tuple[str, int, int]]:
    """(kind, start, length) runs of dark ("d"), light ("l") and other ("o") RGB pixels."""
    kinds = ["d" if p.max() <= DARK else "l" if p.min() >= LIGHT else "o" for p in pixels]
    out: list[tuple[str, int, int]] = []
    for i, kind in enumerate(kinds):
        if out and out[-1][0] == kind:
            out[-1] = (kind, out[-1][1], out[-1][2] + 1)
        else:
            out.append((kind, i, 1))
    return out


def ring_widths(pixels: np.ndarray, light_at_least: int) -> tuple[int, int, int]:
    """(inner dark edge, light line, outer dark edge) widths in whole pixels of the first
    light run of `light_at_least` pixels or more along `pixels` (RGB, from the ring's centre
    outwards); one partly covered pixel between light and dark is skipped. AssertionError,
    showing the runs, where there is no such light run."""
    found = runs(pixels)
    lights = [i for i, (kind, _, n) in enumerate(found) if kind == "l" and n >= light_at_least]
    assert lights, f"no light line of {light_at_least} pixels or more: {found}"
    i = lights[0]

    def dark_beside(j: int, step: int) -> int:
        if 0 <= j < len(found) and found[j][0] == "o" and found[j][2] == 1:
            j += step  # antialiasing between the light line and its edge
        return found[j][2] if 0 <= j < len(found) and found[j][0] == "d" else 0

    return dark_beside(i - 1, -1), found[i][2], dark_beside(i + 1, 1)
