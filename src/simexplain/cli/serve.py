"""`simexplain serve`: the web app's command lives with the web app."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction) -> None:
    from ..web.app import add_cli
    add_cli(commands)
