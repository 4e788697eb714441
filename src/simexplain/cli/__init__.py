"""Command line: `simexplain pair|models|train|demo|index|search|eval|serve ...`.

One module per command group registers its subcommands; the code a command drives lives below
the CLI (zoo, retrieval, evaluation, web) and never imports it.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ..errors import SimexplainError


def build_parser() -> argparse.ArgumentParser:
    from importlib import import_module
    parser = argparse.ArgumentParser(
        prog="simexplain", description="Visual explanations for deep metric learning models.")
    commands = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        import_module(f"{__name__}.{group}").register(commands)
    return parser


# Command groups, in the order `simexplain --help` lists them.
GROUPS = ("pair", "models", "demo", "search", "eval", "serve")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except SimexplainError as exc:
        print(f"simexplain: error: {exc}", file=sys.stderr)
        return 2
