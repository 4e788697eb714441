"""`simexplain serve`: the web app's command lives with the web app."""

from __future__ import annotations


def register(commands) -> None:
    commands.add_parser(
        "serve", help="interactive page: pair explanations and region search in a browser",
        configure=add_serve_arguments)


def add_serve_arguments(parser) -> None:
    from ..web.app import add_serve_arguments as add
    add(parser)
