"""`simexplain eval <benchmark>`: the benchmarks register their own subcommands."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction) -> None:
    from ..evaluation.commands import add_cli
    add_cli(commands)
