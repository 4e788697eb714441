"""The interactive page and JSON API (`simexplain serve`); see `simexplain.web.app`."""

from .app import add_cli, create_app

__all__ = ["create_app", "add_cli"]
