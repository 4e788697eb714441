"""The command line of retrieval: `simexplain index build` and `simexplain search`."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import SimexplainError
from .build import ENGINES, check_checkpoint, check_shards, checkpoint_path
from .index import Index
from .manifest import KINDS
from .storage import check_replaceable, read_manifest

if TYPE_CHECKING:
    from ..explainer import Explainer


def parse_region(text: str) -> tuple[float, float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise argparse.ArgumentTypeError(
            f"a region is TOP,LEFT,BOTTOM,RIGHT in the query file's pixels, got {text!r}")
    return values


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    from ..zoo.arguments import add_model_arguments

    index = subparsers.add_parser("index", help="build a searchable gallery index")
    index_commands = index.add_subparsers(dest="index_command", required=True)
    build = index_commands.add_parser("build", help="embed a folder of images into an index")
    build.add_argument("folder", help="folder of gallery images (searched recursively)")
    add_model_arguments(build)
    build.add_argument("--out", required=True, help="index folder to write")
    build.add_argument("--batch-size", type=int, default=32)
    build.add_argument("--kind", choices=KINDS, default="flat",
                       help="flat: exact (default); ivf, hnsw: approximate, for large galleries; "
                            "ivfpq: compressed (<= 64 bytes a vector in memory), can be sharded")
    build.add_argument("--shards", type=int, default=1,
                       help="split an --kind ivfpq index into N FAISS files searched as one")
    build.add_argument("--engine", choices=ENGINES, default="local",
                       help="local: embed in this process (default); ray: a Ray Data pipeline "
                            "of model workers (needs the 'scale' extra)")
    build.add_argument("--ray-workers", type=int, default=2,
                       help="model workers of --engine ray (default 2)")
    build.add_argument("--ray-address", default=None,
                       help="Ray cluster to join (default: RAY_ADDRESS, else a local instance)")
    build.add_argument("--ray-gpus", type=float, default=0.0,
                       help="GPUs per Ray worker (default 0: CPU workers)")
    build.add_argument("--explain", action="store_true",
                       help="also store each image's per-position contributions, from the same "
                            "forward pass as its embedding (build time about unchanged; disk: "
                            "grid positions x embedding size x 4 bytes an image), so that "
                            "`search --explain` explains hits without running the model")
    build.add_argument("--restart", action="store_true",
                       help="ignore a checkpoint of an interrupted build and start over")
    build.add_argument("--quiet", action="store_true", help="no progress bar")
    build.set_defaults(run=cmd_index_build)

    search = subparsers.add_parser("search", help="search an index with an image or a region")
    search.add_argument("index", help="index folder (from `simexplain index build`)")
    search.add_argument("query", help="query image")
    add_model_arguments(search, required=False)
    search.add_argument("--region", type=parse_region,
                        help="TOP,LEFT,BOTTOM,RIGHT box in the query file's pixels: rank by the "
                             "partial similarity of that region")
    search.add_argument("-k", type=int, default=10, help="number of hits (default 10)")
    search.add_argument("--explain", action="store_true",
                        help="decompose each hit: overall map and (with --region) region map "
                             "(from the index's explain cache when built with --explain)")
    search.add_argument("--out", help="write a results page (index.html + PNGs) here")
    search.add_argument("--json", action="store_true", help="print the hits as JSON")
    search.set_defaults(run=cmd_search)


def cmd_index_build(args: argparse.Namespace) -> int:
    from ..zoo import resolve
    check_replaceable(args.out)  # before loading the model: refuse a bad --out at once
    check_shards(args.kind, args.shards)
    load = functools.partial(resolve, args.model, args.layer, args.similarity, args.size)
    # Ray workers each load the model themselves (a factory travels, not the weights)
    explainer = load if args.engine == "ray" else load()
    checkpoint = checkpoint_path(args.out)
    check_checkpoint(checkpoint)
    if (checkpoint / "state.json").is_file() and not args.restart:
        print(f"resuming from {checkpoint}", file=sys.stderr)
    ray = {"workers": args.ray_workers, "address": args.ray_address, "gpus": args.ray_gpus}
    index = Index.build(args.folder, explainer, model_name=args.model,
                        batch_size=args.batch_size, progress=not args.quiet, out=args.out,
                        resume=not args.restart, kind=args.kind, shards=args.shards,
                        engine=args.engine, ray=ray if args.engine == "ray" else None,
                        explain=args.explain)
    cached = ", with explain cache" if index.explain_cache is not None else ""
    print(f"indexed {len(index)} images into {args.out} ({index.similarity}, {index.dim}-d, "
          f"{index.kind}{cached}); skipped {len(index.skipped)}")
    for item in index.skipped:
        print(f"  skipped {item.path}: {item.reason}")
    return 0


def explainer_for_index(index_path: str | Path, args: argparse.Namespace | None = None
                        ) -> Explainer:
    """The query model of an index: the one its manifest names, unless overridden (then it
    must match)."""
    from ..zoo import resolve
    manifest = read_manifest(Path(index_path))
    model = getattr(args, "model", None) or manifest.get("model")
    if not model:
        raise SimexplainError(f"{index_path}: the manifest names no model; pass --model")
    layer = getattr(args, "layer", None) or manifest.get("layer")
    similarity = getattr(args, "similarity", None) or manifest.get("similarity")
    size = getattr(args, "size", None)
    input_size = manifest.get("input_size")
    if size is None and input_size:
        size = (int(input_size[0]) if input_size[0] == input_size[1]
                else (int(input_size[0]), int(input_size[1])))
    return resolve(model, layer, similarity, size)


def cmd_search(args: argparse.Namespace) -> int:
    if args.k < 1:
        raise SimexplainError(f"-k must be >= 1, got {args.k}")
    explainer = explainer_for_index(args.index, args)
    index = Index.load(args.index, explainer=explainer)
    prepared = index.region_vector(args.query, args.region)
    hits = index.search(prepared, args.k, explain=args.explain)
    summary = {
        "index": str(args.index), "query": str(args.query), "model": index.model_name,
        "similarity": index.similarity.name,
        "region": list(args.region) if args.region else None,
        "query_input": prepared.side.to_dict(),  # sizes, crop, cells: the file's pixels
        "ranking": "ascending" if index.similarity.lower_is_better else "descending",
        "score": ("partial similarity s_R of the region" if args.region else
                  f"{index.similarity} of the whole images"),
        "hits": [hit.to_dict() for hit in hits],
    }
    if args.out:
        from .page import write_results_page
        summary["page"] = str(write_results_page(Path(args.out), prepared, hits, index, summary))
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        what = "region" if args.region else "image"
        print(f"{len(hits)} hits for the query {what} ({summary['score']}, "
              f"{summary['ranking']}):")
        for hit in hits:
            print(f"{hit.rank:4d}  {hit.score: .6f}  {hit.path}")
        if args.out:
            print(f"wrote {summary['page']}")
    return 0


