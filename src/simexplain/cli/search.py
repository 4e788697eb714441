"""`simexplain index build` and `simexplain search`: their options and code live with the
retrieval (`retrieval.commands`, light to import; the retrieval itself loads when they run)."""

from __future__ import annotations

import argparse
from ..retrieval.commands import add_index_arguments, add_search_arguments


def register(commands: argparse._SubParsersAction) -> None:
    commands.add_parser("index", help="build a searchable gallery index",
                        configure=add_index_arguments)
    commands.add_parser("search", help="search an index with images or a region of each",
                        configure=add_search_arguments)
