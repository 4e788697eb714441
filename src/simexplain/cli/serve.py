"""`simexplain serve`: the web app's command lives with the web app."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction) -> None:
    commands.add_parser(
        "serve", help="interactive page: pair explanations and region search in a browser",
        configure=add_serve_arguments)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    from ..web.app import add_serve_arguments as add
    add(parser)
