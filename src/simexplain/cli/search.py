"""`simexplain index build` and `simexplain search`: their code lives with the retrieval."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction) -> None:
    from ..retrieval import add_cli
    add_cli(commands)
