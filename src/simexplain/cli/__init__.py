"""Command line: `simexplain pair|models|train|demo|index|search|eval|serve ...`.

One module per command group registers its subcommands; the code a command drives lives below
the CLI (zoo, retrieval, evaluation, web) and never imports it.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence

from ..errors import SimexplainError


def build_parser() -> argparse.ArgumentParser:
    from importlib import import_module
    parser = argparse.ArgumentParser(
        prog="simexplain", description="Visual explanations for deep metric learning models.")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (anywhere on the line)")
    commands = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        import_module(f"{__name__}.{group}").register(commands)
    return parser


# Command groups, in the order `simexplain --help` lists them.
GROUPS = ("pair", "models", "demo", "search", "eval", "serve")


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command. Any SimexplainError is one line on stderr and exit status 2 (with
    `--debug`, anywhere on the line, the traceback is printed too)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    args = build_parser().parse_args([a for a in argv if a != "--debug"])
    try:
        return args.run(args)
    except SimexplainError as exc:
        if debug:
            traceback.print_exc()
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"simexplain: error: {message}", file=sys.stderr)
        return 2
