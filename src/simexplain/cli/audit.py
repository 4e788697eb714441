"""`simexplain audit`: its options and code live with the audit (`audit.commands`, light to
import; the audit itself loads when the command runs)."""

from __future__ import annotations

import argparse

from ..audit.commands import add_audit_arguments


def register(commands: argparse._SubParsersAction) -> None:
    commands.add_parser("audit", help="audit where similarity comes from over many searches "
                                      "(HTML report)", configure=add_audit_arguments)
