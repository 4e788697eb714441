"""The interactive page and JSON API (`simexplain serve`); see `simexplain.web.app`."""

from .app import add_serve_arguments, create_app

__all__ = ["create_app", "add_serve_arguments"]
