"""The two sides of a pair: image a (the query, stream A of a two-stream model) and image b.
Every function that takes a side name checks it here, so a misspelt side is an error naming
it, never silently the other image."""

from __future__ import annotations

from typing import Literal, TypeVar

from .errors import SimexplainError

SideName = Literal["a", "b"]
SIDES: tuple[SideName, SideName] = ("a", "b")
T = TypeVar("T")


def check_side(side: object) -> SideName:
    """`side` itself when it is "a" or "b" (SimexplainError naming it otherwise)."""
    if side not in SIDES:
        raise SimexplainError(f"side must be 'a' or 'b', got {side!r}")
    return side


def other_side(side: object) -> SideName:
    """"b" for "a" and "a" for "b"."""
    return "b" if check_side(side) == "a" else "a"


def pick(side: object, a: T, b: T) -> T:
    """`a` for side "a", `b` for side "b"."""
    return a if check_side(side) == "a" else b
