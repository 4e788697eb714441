"""Given pairs of an audit (`audit(pairs=...)`, `simexplain audit --pairs FILE`): checked, and
read from a file of two image paths per line.

The file: one pair per line, query then hit, separated by a comma (CSV, quotes allowed), a tab
or spaces; blank lines and lines starting with '#' are skipped, and so is a first line
`query,hit` (a header). A relative path is relative to the file's folder, so a pairs file can
travel with its images. Importing this module is light (no torch or numpy): the command line
reads the file before loading the model.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from ..errors import SimexplainError

HEADER = ("query", "hit")


def check_pairs(pairs: Sequence[tuple[str | Path, str | Path]]) -> list[tuple[str, str]]:
    """The pairs as (query, hit) path strings, each file checked to exist; else a one-line
    SimexplainError naming the pair (counted from 1) and the problem."""
    checked: list[tuple[str, str]] = []
    for number, pair in enumerate(pairs, start=1):
        if isinstance(pair, (str, bytes)) or len(pair) != 2:
            raise SimexplainError(f"pair {number} must be two image paths (query, hit), got "
                                  f"{pair!r}")
        query, hit = (str(p) for p in pair)
        for path in (query, hit):
            _check_file(path, f"pair {number}")
        checked.append((query, hit))
    if not checked:
        raise SimexplainError("no pairs given")
    return checked


def read_pairs_file(file: str | Path) -> list[tuple[str, str]]:
    """(query, hit) paths from a pairs file (see the module docstring); a bad line is refused
    in one line naming the file and the line number."""
    file = Path(file)
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not text"
        raise SimexplainError(f"cannot read the pairs file {file}: {reason}") from None
    pairs: list[tuple[str, str]] = []
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        fields = _fields(text)
        if not pairs and tuple(f.lower() for f in fields) == HEADER:
            continue
        if len(fields) != 2 or not all(fields):
            raise SimexplainError(f"{file} line {number}: expected two image paths (query, hit) "
                                  f"separated by a comma, tab or spaces, got {text!r}")
        paths = tuple(str(file.parent / f) for f in fields)
        for path in paths:
            _check_file(path, f"{file} line {number}")
        pairs.append((paths[0], paths[1]))
    if not pairs:
        raise SimexplainError(f"the pairs file {file} holds no pairs")
    return pairs


def _check_file(path: str, where: str) -> None:
    if not Path(path).is_file():
        problem = "is a folder, not an image file" if Path(path).is_dir() else "does not exist"
        raise SimexplainError(f"{where}: {path} {problem}")


def _fields(text: str) -> list[str]:
    """A line's fields: CSV when it has a comma, else split on tabs, else on spaces."""
    if "," in text:
        return [field.strip() for field in next(csv.reader([text]))]
    return [f.strip() for f in text.split("\t")] if "\t" in text else text.split()
