"""simexplain in Jupyter: the live point-map widget (`PointMapWidget`, also
`PairExplanation.widget()`).

The widget needs anywidget (`pip install 'simexplain[notebook]'`); it is imported on first
use, so importing this package (or simexplain) never imports anywidget.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers see; at run time: __getattr__
    from .widget import PointMapWidget

__all__ = ["PointMapWidget"]


def __getattr__(name: str) -> Any:
    if name == "PointMapWidget":
        try:
            from .widget import PointMapWidget
        except ModuleNotFoundError as exc:
            if exc.name not in ("anywidget", "ipywidgets", "traitlets"):
                raise
            raise ImportError(f"the live point-map widget needs {exc.name}: pip install "
                              "'simexplain[notebook]'") from exc
        return PointMapWidget
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
