"""The command line of retrieval: `simexplain index build` and `simexplain search`, their
options (`add_index_arguments`, `add_search_arguments`) and what they run.

Importing this module is light (no torch, numpy or FAISS): the command line builds its parser
from it, and `cmd_*` import the retrieval when a command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from ..errors import SimexplainError
from ..model_options import add_model_arguments
from .basics import ENGINES
from .manifest import KINDS

# Queries of one `simexplain search` explained together (a forward pass for each batch of
# inputs of one size)
QUERY_BATCH = 16

if TYPE_CHECKING:
    from ..explainer import Explainer
    from .index import Hit, Index, RegionQuery


def parse_region(text: str) -> tuple[float, float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise argparse.ArgumentTypeError(
            f"a region is TOP,LEFT,BOTTOM,RIGHT in the query file's pixels, got {text!r}")
    return values


def add_index_arguments(index: argparse.ArgumentParser) -> None:
    """`simexplain index build ...`."""
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


def add_search_arguments(search: argparse.ArgumentParser) -> None:
    """`simexplain search INDEX QUERY... [--queries-from FILE]`."""
    search.description = (
        "Search an index with query images (or a region of each). Give one or many: image "
        "files, folders (their images, sorted by name) and --queries-from lists, in that order; "
        "the model and the index are loaded once. Every option applies to every query.")
    search.add_argument("index", help="index folder (from `simexplain index build`)")
    search.add_argument("query", nargs="*",
                        help="query image, or a folder: its images (not its subfolders), "
                             "sorted by name")
    search.add_argument("--queries-from", action="append", default=[], metavar="FILE",
                        help="a text file naming one query image a line (blank lines and "
                             "lines starting with # are ignored; relative paths are relative "
                             "to the file's folder); repeatable")
    add_model_arguments(search, required=False)
    search.add_argument("--region", type=parse_region,
                        help="TOP,LEFT,BOTTOM,RIGHT box in the query file's pixels: rank by the "
                             "partial similarity of that region (the same box for every query)")
    search.add_argument("-k", type=int, default=10,
                        help="number of hits for each query (default 10)")
    search.add_argument("--explain", action="store_true",
                        help="decompose each hit: overall map and (with --region) region map "
                             "(from the index's explain cache when built with --explain)")
    search.add_argument("--out",
                        help="write a results page (index.html + PNGs) here; for several "
                             "queries one page a query, in subfolders named NNN-STEM (the "
                             "query's position and file name); the folder must be absent, "
                             "empty, or one simexplain wrote (replaced)")
    search.add_argument("--json", action="store_true",
                        help="print the hits as JSON (for several queries: a list, one object "
                             "a query)")
    search.set_defaults(run=cmd_search)


def cmd_index_build(args: argparse.Namespace) -> int:
    import functools

    from ..zoo import resolve
    from .build import check_checkpoint, check_shards, checkpoint_path
    from .index import Index
    from .storage import check_replaceable
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
        print(f"  skipped {item.path}: {item.reason.removeprefix(f'{item.path}: ')}")
    return 0


def explainer_for_index(index_path: str | Path, args: argparse.Namespace | None = None
                        ) -> Explainer:
    """The query model of an index: `args.model` when given (the command line's choice; the
    index checks its fingerprint), else the zoo model the manifest names. An index folder is
    data: a model file, `module:factory` or `hf:FOLDER` in its manifest is never loaded from
    there (it could run code), the caller must name it with --model."""
    from .. import zoo
    from .storage import read_manifest
    manifest = read_manifest(Path(index_path))
    model = getattr(args, "model", None)
    named = manifest.get("model")
    if not model:
        if not named:
            raise SimexplainError(f"{index_path}: the manifest names no model; pass --model")
        if named not in zoo.list():
            raise SimexplainError(
                f"{index_path} was built with {named!r}, which is not a zoo model; simexplain "
                "never loads a model that an index folder names (it could run code): pass "
                f"--model {named} --layer {manifest.get('layer')} yourself if you trust it")
        model = named
    layer = getattr(args, "layer", None) or manifest.get("layer")
    similarity = getattr(args, "similarity", None) or manifest.get("similarity")
    size = getattr(args, "size", None)
    input_size = manifest.get("input_size")
    if size is None and input_size:
        size = (int(input_size[0]) if input_size[0] == input_size[1]
                else (int(input_size[0]), int(input_size[1])))
    return zoo.resolve(model, layer, similarity, size)


def query_files(args: argparse.Namespace) -> list[str]:
    """Every query image the arguments name, in order: files, folders' images (sorted), then
    the lines of each --queries-from list. Each one is checked here, before the model loads,
    so that a bad one stops the command before any work (an error naming the file): its
    header only (`check_image_file`: missing, unreadable, not an image, too large), since every
    query is decoded once, later, when it is explained (a file whose pixels turn out damaged
    then fails naming it, before anything is written)."""
    from ..files import image_files
    queries: list[str] = []  # as given: a single query is reported exactly as it was named
    for item in args.query:
        if Path(item).is_dir():
            found = image_files(item)
            if not found:
                raise SimexplainError(f"query folder {item} holds no images")
            queries += map(str, found)
        else:
            queries.append(item)
    for listing in map(Path, args.queries_from):
        try:
            lines = listing.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise SimexplainError(f"cannot read the query list {listing}: "
                                  f"{getattr(exc, 'strerror', None) or exc}") from None
        named = [line.strip() for line in lines]
        listed = [str(listing.parent / line) for line in named
                  if line and not line.startswith("#")]
        if not listed:
            raise SimexplainError(f"the query list {listing} names no images")
        queries += listed
    if not queries:
        raise SimexplainError("give a query image, a folder of them or --queries-from FILE")
    from ..images import check_image_file  # loads torch: after the quick checks
    for query in queries:
        if Path(query).is_dir():
            raise SimexplainError(f"query {query} is a folder; a list names image files")
        check_image_file(query)  # ImageError naming the file: missing, unreadable, too large
    return queries


def cmd_search(args: argparse.Namespace) -> int:
    import warnings

    from .index import Index, RegionQuery, StaleHit
    if args.k < 1:
        raise SimexplainError(f"-k must be >= 1, got {args.k}")
    queries = query_files(args)
    out = Path(args.out) if args.out else None
    if out is not None:
        from ..files import check_output
        check_output(out)  # before any work: absent, empty or an output of ours
    explainer = explainer_for_index(args.index, args)
    index = Index.load(args.index, explainer=explainer)
    # search every query before writing anything: a failure leaves no partial pages behind;
    # the queries are explained a batch at a time (one forward pass for a batch of one size)
    results = []
    sides = explainer.sides(queries, "a", batch_size=QUERY_BATCH)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StaleHit)  # said once a hit, below
        for query, side in zip(queries, sides):
            prepared = RegionQuery.from_side(side, args.region)
            results.append((query, prepared, index.search(prepared, args.k,
                                                          explain=args.explain)))
    summaries = [search_summary(args, index, query, prepared, hits)
                 for query, prepared, hits in results]
    if out is not None:
        write_pages(out, results, summaries, index)
    warn_stale(hits for _, _, hits in results)
    if args.json:
        print(json.dumps(summaries[0] if len(summaries) == 1 else summaries, indent=2))
        return 0
    for number, (summary, (_, _, hits)) in enumerate(zip(summaries, results), start=1):
        if len(summaries) > 1:  # one block a query, a blank line between blocks
            print(("\n" if number > 1 else "") + f"query {number}/{len(summaries)}: "
                  f"{summary['query']}")
        print_hits(summary, hits, region=args.region is not None)
    return 0


def write_pages(out: Path, results: list, summaries: list[dict], index: Index) -> None:
    """The results pages, written whole into `out` (`files.output_folder`): one page, or one
    a query in subfolders NNN-STEM; each summary gets its page's path."""
    from ..files import output_folder
    from .page import write_results_page
    with output_folder(out) as staged:
        for number, ((query, prepared, hits), summary) in enumerate(zip(results, summaries),
                                                                     start=1):
            folder = staged if len(results) == 1 else staged / f"{number:03d}-{Path(query).stem}"
            page = write_results_page(folder, prepared, hits, index, summary)
            summary["page"] = str(out / page.relative_to(staged))
            summary["hits"] = [hit.to_dict() for hit in hits]  # as the page found the files


def search_summary(args: argparse.Namespace, index: Index, query: str, prepared: RegionQuery,
                   hits: Sequence[Hit]) -> dict:
    """What `search --json` prints and results.json holds for one query."""
    return {
        "index": str(args.index), "query": str(query), "model": index.model_name,
        "similarity": index.similarity.name,
        "region": list(args.region) if args.region else None,
        "query_input": prepared.side.to_dict(),  # sizes, crop, cells: the file's pixels
        "ranking": "ascending" if index.similarity.lower_is_better else "descending",
        "score": ("partial similarity s_R of the region" if args.region else
                  f"{index.similarity} of the whole images"),
        "hits": [hit.to_dict() for hit in hits],
    }


def warn_stale(hit_lists: Iterable[Sequence[Hit]]) -> None:
    """One warning line on stderr for each hit whose file is not the one indexed (changed,
    missing, or refused: no longer a regular file inside the gallery); the exit status stays
    0 and the hits are marked ("stale" in --json and results.json, on the page)."""
    seen = set()
    for hits in hit_lists:
        for hit in hits:
            if hit.stale and hit.index not in seen:
                seen.add(hit.index)
                print(f"simexplain: warning: {hit.path}: {hit.stale}", file=sys.stderr)


def print_hits(summary: dict, hits: Sequence[Hit], region: bool) -> None:
    what = "region" if region else "image"
    print(f"{len(hits)} hits for the query {what} ({summary['score']}, {summary['ranking']}):")
    for hit in hits:
        stale = f"  (stale: {hit.stale})" if hit.stale else ""
        print(f"{hit.rank:4d}  {hit.score: .6f}  {hit.path}{stale}")
    if "page" in summary:
        print(f"wrote {summary['page']}")
