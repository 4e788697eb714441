"""`simexplain demo`: the HTML report on real models and images (simexplain.demo)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser("demo", help="write the demo report on real models and images")
    demo.add_argument("--out", default="simexplain-report",
                      help="output folder: absent, empty, or one simexplain wrote (replaced)")
    demo.set_defaults(run=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import build_report
    from ..files import check_output, output_folder
    out = Path(args.out)
    check_output(out)  # before any work: absent, empty or an output of ours
    print(f"simexplain demo: writing the report to {out}/")
    with output_folder(out) as staged:
        page = build_report(staged)
    print(f"report: {(out / page.relative_to(staged)).resolve()}")
    return 0
