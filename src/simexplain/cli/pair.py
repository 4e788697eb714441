"""`simexplain pair`: explain the similarity of two images, write figures and result.json."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..defaults import DEFAULT_PATTERNS
from ..errors import SimexplainError
from ..model_options import add_model_arguments, from_args


def register(commands: argparse._SubParsersAction) -> None:
    commands.add_parser("pair", help="explain the similarity of two images",
                        configure=add_pair_arguments)


def add_pair_arguments(pair: argparse.ArgumentParser) -> None:
    pair.add_argument("a", help="image a")
    pair.add_argument("b", help="image b")
    add_model_arguments(pair)
    pair.add_argument("--out", default="simexplain-pair",
                      help="output folder: absent, empty, or one simexplain wrote (replaced)")
    pair.add_argument("--point", type=parse_point, action="append",
                      help="ROW,COL pixel of image a (in the file's pixels) for a point map; "
                           "repeatable (default: the 4 strongest cells)")
    pair.add_argument("--patterns", type=int, default=DEFAULT_PATTERNS, metavar="K",
                      help="cross-view patterns to find and draw in patterns.png and "
                           f"result.json (default {DEFAULT_PATTERNS}; 0: none)")
    pair.add_argument("--json", action="store_true",
                      help="print result.json to stdout (and write only result.json: no "
                           "figure is computed)")
    pair.set_defaults(run=cmd_pair)


def parse_point(text: str) -> tuple[float, float]:
    try:
        row, col = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a point is ROW,COL in pixels, got {text!r}") from None
    return row, col


def cmd_pair(args: argparse.Namespace) -> int:
    from ..files import check_output, output_folder
    from ..pair_report import write_pair
    if args.patterns < 0:
        raise SimexplainError(f"--patterns must be 0 or more, got {args.patterns}")
    out = Path(args.out)
    check_output(out)  # before any work: absent, empty or an output of ours
    explainer = from_args(args)
    result = explainer.explain(args.a, args.b)  # face models see face crops (the pipeline)
    with output_folder(out) as staged:
        summary = write_pair(result, staged, args.point, patterns=args.patterns, extra={
            "model": args.model, "layer": explainer.stream_a.layer_name,
            "image_a": str(args.a), "image_b": str(args.b)}, figures=not args.json)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"score ({result.similarity}) = {result.score:.6f}, residual = {result.residual:.2e}")
        if result.tokens_a.numel() or result.tokens_b.numel():
            print(f"class (prefix) tokens carry {result.token_share_a:.6f} (a) and "
                  f"{result.token_share_b:.6f} (b) of the score; the maps carry the rest")
        if not (result.a.spatial and result.b.spatial):
            print("no spatial map at this layer: the head reads only the class token; explain "
                  "an earlier layer (--layer)")
        for name in summary["files"].values():
            print(f"wrote {out / name}")
        print(f"wrote {out / 'result.json'}")
    return 0
