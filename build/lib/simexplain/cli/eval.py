"""`simexplain eval <benchmark>`: the benchmarks register their own subcommands."""

from __future__ import annotations


def register(commands) -> None:
    from ..evaluation.commands import add_cli
    add_cli(commands)
