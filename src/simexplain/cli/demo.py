"""`simexplain demo`: the HTML report on real models and images (simexplain.demo)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser("demo", help="write the demo report on real models and images")
    demo.add_argument("--out", default="simexplain-report", help="output folder")
    demo.set_defaults(run=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import build_report
    out = Path(args.out)
    print(f"simexplain demo: writing the report to {out}/")
    page = build_report(out)
    print(f"report: {page.resolve()}")
    return 0
