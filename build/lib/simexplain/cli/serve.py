"""`simexplain serve`: the web app's command lives with the web app."""

from __future__ import annotations


def register(commands) -> None:
    from ..web.app import add_cli
    add_cli(commands)
