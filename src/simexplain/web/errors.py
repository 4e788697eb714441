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


def status_of(exc: SimexplainError) -> int:
    """The HTTP status of an error: its own, else 400 (any SimexplainError is bad input)."""
    return getattr(exc, "status", 400)
