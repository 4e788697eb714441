"""`simexplain index build` and `simexplain search`: their code lives with the retrieval."""

from __future__ import annotations


def register(commands) -> None:
    from ..retrieval import add_cli
    add_cli(commands)
