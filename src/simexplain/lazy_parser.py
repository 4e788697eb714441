"""An argument parser whose options are added on first use, so that building the whole command
line imports no command's code: `simexplain --help` lists the commands without loading torch.

    commands = parser.add_subparsers()          # of a LazyParser: every subparser is one too
    commands.add_parser("search", help="...", configure=add_search_arguments)

`configure(parser)` runs once, when that parser parses, prints its help or usage, or when
`complete()` is called (e.g. by a tool that walks every command's options).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Sequence
from typing import Any, NoReturn


class LazyParser(argparse.ArgumentParser):
    def __init__(self, *args: Any,
                 configure: Callable[[argparse.ArgumentParser], None] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._configure = configure
        # A value starting with a minus sign is an option to argparse unless it looks like a
        # negative number; a comma list such as `--region -5,0,40,60` or `--point -1,5` is one
        # too (argparse's own pattern, a private attribute, knows only single numbers), so that
        # it reaches the option's own check instead of "expected one argument"
        self._negative_number_matcher = re.compile(r"^-\.?\d[\d.,eE+-]*$")

    def complete(self) -> LazyParser:
        """Add the deferred options now (once)."""
        configure, self._configure = self._configure, None
        if configure is not None:
            configure(self)
        return self

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None
                         ) -> tuple[argparse.Namespace, list[str]]:
        self.complete()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self.complete()
        return super().format_help()

    def format_usage(self) -> str:
        self.complete()
        return super().format_usage()

    def error(self, message: str) -> NoReturn:
        """A wrong command line is one line on stderr, exit status 2: the problem and where the
        usage is (the usage block itself only with --help)."""
        text = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {text}; see `{self.prog} --help`\n")
