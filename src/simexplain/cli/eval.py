"""`simexplain eval <benchmark>`: the benchmarks register their own subcommands."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction) -> None:
    commands.add_parser("eval", help="run an evaluation benchmark", configure=add_eval_arguments)


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    from ..evaluation.commands import add_benchmarks
    add_benchmarks(parser)
