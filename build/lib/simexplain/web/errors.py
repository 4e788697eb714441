"""Errors the web API answers with an HTTP status (the API turns them into JSON)."""

from __future__ import annotations

from ..errors import SimexplainError


class WebError(SimexplainError):
    """An error with an HTTP status for the API to answer with."""

    status = 400


class NotFound(WebError):
    status = 404


class TooLarge(WebError):
    status = 413


class Busy(WebError):
    """The server is at its limit (e.g. decoding other large uploads): try again shortly."""

    status = 503


class ImageFailed(WebError):
    """One image of a request could not be used (e.g. no face found): names it, and says
    which side it is on, so that the page shows the error on that image's panel."""

    def __init__(self, side: str, image_id: str, name: str, reason: str):
        reason = reason.removeprefix(f"image {side}: ")  # named once, with its file name
        super().__init__(f"image {side} ({name}): {reason}")
        self.fields = {"side": side, "image": image_id}


def megabytes(count: int) -> str:
    """A byte count for people: 10485760 -> '10 MB'."""
    return f"{count / 2**20:.3g} MB"


def status_of(exc: SimexplainError) -> int:
    """The HTTP status of an error: its own, else 400 (any SimexplainError is bad input)."""
    return getattr(exc, "status", 400)
