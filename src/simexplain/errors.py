"""Errors raised by simexplain. Every user-facing failure is a `SimexplainError`."""

from __future__ import annotations

import numbers


class SimexplainError(Exception):
    """Base class: a problem with the user's input, model or files, stated plainly."""


class LayerError(SimexplainError):
    """The explained layer does not exist or its output cannot be explained."""


class ImageError(SimexplainError):
    """An image file or tensor cannot be used."""


class ImageTooLarge(ImageError):
    """An image (or a frame, page or icon entry it holds) has more pixels than the limit: refused
    before it is decoded."""


class ModelError(SimexplainError):
    """The model failed or produced unusable output (wrong shape, NaN)."""


class DatasetMissing(SimexplainError):
    """A data set is not on disk; the message names the command that fetches it."""


class NoPointMap(SimexplainError):
    """The point or region carries nothing to compare (the contribution kind where u = 0: with
    a GMP head, a position that is no channel's maximum), so there is no map to show; not the
    same as a flat map."""


class NotApplicable(SimexplainError):
    """The method cannot explain this model: an attention method on a model without
    self-attention (a CNN), or on a transformer without a class token."""


class NoSpatialMap(UserWarning):
    """Warned where the explained layer's head reads only a transformer's prefix tokens (the
    class token at the last layer): the grid's maps have no spatial content."""


def first_line(exc: BaseException, limit: int | None = None, empty: str | None = None) -> str:
    """The first non-blank line of an exception's message, for a one-line error (cut to
    `limit` characters); `empty` (by default the exception's type name) when it has none."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()[:limit]
    return empty or type(exc).__name__


def check_whole(value: object, name: str) -> None:
    """Refuse a `value` of `name` that is no whole number >= 1 (a float, a bool, a string):
    a SimexplainError naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise SimexplainError(f"{name} must be a whole number >= 1, got {value!r}")
