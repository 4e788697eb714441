"""Formatting of the evaluation's numbers and tables (markdown), used by every benchmark's
report text and by the generic report."""

from __future__ import annotations

import math


def fmt(ci: dict | None, digits: int = 3) -> str:
    """'mean [lo, hi]' of a bootstrap summary."""
    if not ci or ci.get("mean") is None or not math.isfinite(ci["mean"]):
        return "n/a"
    return f"{ci['mean']:.{digits}f} [{ci['lo']:.{digits}f}, {ci['hi']:.{digits}f}]"


def fmt_plain(value: float | None, digits: int = 3) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
