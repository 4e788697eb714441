"""The names of the built-in similarities, without importing them (and torch): the command
line offers them as `--similarity` choices while it builds its parser. `simexplain.similarity`
registers exactly these and checks that it does."""

from __future__ import annotations

BUILTIN_SIMILARITIES = ("cosine", "dot", "euclidean")
