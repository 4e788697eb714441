"""`simexplain audit`: its options (`add_audit_arguments`) and what it runs (`cmd_audit`).

Importing this module is light (no torch or numpy): the command line builds its parser from it;
the audit itself loads when the command runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import SimexplainError
from ..model_options import add_model_arguments
from .regions import RelativeBox, parse_region_spec

DEFAULT_SAMPLE = 100
DEFAULT_K = 5


def region_argument(text: str) -> tuple[str, RelativeBox]:
    """`--region NAME=top,left,bottom,right` for argparse (its error: one line, exit 2)."""
    try:
        return parse_region_spec(text)
    except SimexplainError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_audit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Audit where similarity comes from: explain each query against its top-k hits in an "
        "index and aggregate over all pairs: mean maps against the area share, the share of "
        "the score carried by named regions, recurring cross-view patterns, ranked pairs, and "
        "findings (regions where similarity concentrates far above their area, found without "
        "being named). Writes an HTML report with --out.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--index", help="index folder (from `simexplain index build`; "
                                        "any kind; --explain ones explain hits from the cache)")
    source.add_argument("--gallery", help="folder of gallery images: index it now, in memory "
                                          "(with --model), instead of --index")
    add_model_arguments(parser, required=False,
                        model_help="the model (with --gallery; with --index: default the "
                                   "index's, else it must match)")
    asked = parser.add_mutually_exclusive_group()
    asked.add_argument("--queries", nargs="+", metavar="IMAGE_OR_FOLDER",
                       help="query images or folders of them (default: --sample gallery "
                            "images, each left out of its own hits)")
    asked.add_argument("--pairs", metavar="FILE",
                       help="audit exactly these pairs, no search: a text or CSV file of two "
                            "image paths per line (query, hit; relative to the file's folder)")
    parser.add_argument("--sample", type=int, default=DEFAULT_SAMPLE,
                        help=f"gallery images drawn as queries without --queries (default "
                             f"{DEFAULT_SAMPLE})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample (default 0)")
    parser.add_argument("-k", "--k", type=int, default=DEFAULT_K, dest="k",
                        help=f"hits per query (default {DEFAULT_K})")
    parser.add_argument("--region", type=region_argument, action="append", default=[],
                        metavar="NAME=TOP,LEFT,BOTTOM,RIGHT",
                        help="a named box in relative coordinates of the image (0..1), e.g. "
                             "corner=0,0,0.15,0.15; repeatable")
    parser.add_argument("--method", default="decomposition",
                        help="each pair's per-side maps: decomposition (exact overall maps, "
                             "default) or occlusion (the drop of the pair's score when each "
                             "feature cell is erased: one forward per cell and side)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", help="write the report here (index.html, PNGs, result.json); "
                                      "an existing folder must be empty or an earlier report")
    parser.add_argument("--json", action="store_true", help="print result.json to stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=cmd_audit)


def cmd_audit(args: argparse.Namespace) -> int:
    from .report import check_out
    from .result import check_method
    _check_numbers(args)
    check_method(args.method)
    out = Path(args.out) if args.out else None
    if out is not None:
        check_out(out)  # before any work: a bad --out is refused at once
    regions = dict(args.region)
    if len(regions) != len(args.region):
        raise SimexplainError("two --region options have the same name")
    queries = _query_files(args.queries) if args.queries else None
    from .given import read_pairs_file
    pairs = read_pairs_file(args.pairs) if args.pairs else None
    index = _index(args)
    from .run import audit
    result = audit(index, queries=queries, k=args.k, regions=regions, sample=args.sample,
                   seed=args.seed, batch_size=args.batch_size, progress=not args.quiet,
                   pairs=pairs, method=args.method)
    page = result.write_report(out, progress=not args.quiet) if out is not None else None
    for path, why in result.stale.items():
        print(f"simexplain: warning: {path}: {why} (left out)", file=sys.stderr)
    if args.json:
        print(result.to_json())
        return 0
    _print_summary(result)
    if page is not None:
        print(f"wrote {page}")
    return 0


def _check_numbers(args: argparse.Namespace) -> None:
    for name in ("k", "sample", "batch_size"):
        if getattr(args, name) < 1:
            flag = "-k" if name == "k" else "--" + name.replace("_", "-")
            raise SimexplainError(f"{flag} must be >= 1, got {getattr(args, name)}")
    if args.seed < 0:
        raise SimexplainError(f"--seed must be >= 0, got {args.seed}")
    if args.gallery and not args.model:
        raise SimexplainError("--gallery needs --model (the model to index it with)")


def _query_files(items: list[str]) -> list[str]:
    """Every query file, folders' images included (sorted); each one's header checked now
    (`check_image_file`), its pixels decoded once, when it is explained."""
    from ..files import image_files
    found: list[str] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            images = image_files(path)
            if not images:
                raise SimexplainError(f"query folder {path} holds no images")
            found += map(str, images)
        elif not path.is_file():
            raise SimexplainError(f"query {path} does not exist")
        else:
            found.append(str(path))
    from ..images import check_image_file  # loads torch: after the quick checks
    for query in found:
        check_image_file(query)  # ImageError naming the file
    return found


def _index(args: argparse.Namespace):
    """The index of --index (its model from the manifest, or the one named, checked), or one
    built now over --gallery."""
    from ..retrieval.index import Index
    if args.index:
        folder = Path(args.index)
        if not folder.is_dir():
            raise SimexplainError(f"index folder {folder} does not exist")
        from ..retrieval.commands import explainer_for_index
        return Index.load(folder, explainer=explainer_for_index(folder, args))
    folder = Path(args.gallery)
    if not folder.is_dir():
        raise SimexplainError(f"gallery folder {folder} does not exist")
    from ..model_options import from_args
    return Index.build(folder, from_args(args), model_name=args.model,
                       batch_size=args.batch_size, progress=not args.quiet)


def _print_summary(result) -> None:
    how = (f"given, {result.queries} distinct queries" if result.given
           else f"{result.queries} queries x top-{result.k}")
    print(f"audited {len(result.pairs)} pairs ({how}) by {result.method} in "
          f"{result.seconds:.1f} s")
    if result.findings:
        print("findings:")
        for finding in result.findings:
            print(f"  {finding.sentence}")
    else:
        print("findings: none (no region carries similarity far above its area share)")
    for name in result.regions:
        print(f"region {name}: {result.aggregate_share(name):.1%} of all the similarity "
              f"(area share {result.area_share(name):.1%})", file=sys.stdout)
