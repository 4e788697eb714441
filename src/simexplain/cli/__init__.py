"""Command line: `simexplain pair|models|train|demo|index|search|audit|eval|serve ...`.

One module per command group registers its subcommands, each with a `configure` function that
adds its options on first use (`simexplain.lazy_parser`); the code a command drives lives below
the CLI (zoo, retrieval, evaluation, web), never imports it, and is imported when the command
runs.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence

from ..errors import SimexplainError
from ..lazy_parser import LazyParser


def build_parser() -> argparse.ArgumentParser:
    """The whole command line. Each command's options are added when that command is used
    (`LazyParser`), so building it imports no command's code (no torch): `simexplain --help`
    is quick."""
    from importlib import import_module
    parser = LazyParser(
        prog="simexplain", description="Visual explanations for deep metric learning models.")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (anywhere on the line)")
    commands = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        import_module(f"{__name__}.{group}").register(commands)
    return parser


# Command groups, in the order `simexplain --help` lists them.
GROUPS = ("pair", "models", "demo", "search", "audit", "eval", "serve")


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command. Any SimexplainError is one line on stderr and exit status 2, Ctrl-C one
    line and status 130 (with `--debug`, anywhere on the line, the traceback is printed too;
    an interrupted `index build` keeps its checkpoint and resumes)."""
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
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print("simexplain: interrupted", file=sys.stderr)
        return 130
