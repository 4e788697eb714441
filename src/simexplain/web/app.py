"""`simexplain serve`: the interactive page and its JSON API.

    simexplain serve [--index INDEX] [--model NAME] [--host 127.0.0.1] [--port 8000]
                     [--allowed-host NAME ...]

`create_app(...)` builds the FastAPI application (for tests, or to mount elsewhere);
`add_serve_arguments(parser)` adds the options of the `serve` subcommand. FastAPI and uvicorn
are imported only when a server is built, so the rest of the command line works without them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import SimexplainError
from ..defaults import BUILTIN_SIMILARITIES, MAX_PIXELS
from .hosts import LOCAL_HOSTS, served_hosts
from .limits import MAX_INPUT_SIDE, MAX_UPLOAD_BYTES, check_limits

if TYPE_CHECKING:  # FastAPI and torch are imported only when a server is built
    from fastapi import FastAPI

    from ..explainer import Explainer
    from ..retrieval.index import Index

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def create_app(model: str | None = None, index: Index | str | Path | None = None,
               explainer: Explainer | None = None,
               samples: Sequence | None = None, models: Sequence[str] | None = None,
               max_upload_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int = MAX_PIXELS,
               allowed_hosts: Sequence[str] = LOCAL_HOSTS,
               max_input_side: int = MAX_INPUT_SIDE, **cache_limits: Any) -> FastAPI:
    """The web application.

    model: zoo name (or a label for `explainer`); default: the index's model, else
        efficientnet-lite0.
    index: a retrieval Index, or the path of one (enables the gallery view).
    explainer: a ready Explainer (e.g. a toy model in tests); overrides loading `model`.
    samples: images offered in the pickers (paths, PIL images or (name, image) pairs);
        default: scikit-image's bundled photos when installed.
    models: names offered in the model menu (default: the zoo, or only `explainer`).
    max_upload_bytes, max_pixels: upload limits (413 above them).
    max_input_side: the largest model input size (short side, pixels) the page may ask for
        (a finer grid costs compute; 400 above it).
    allowed_hosts: the host names the server answers to (the Host header; ports ignored):
        default localhost, 127.0.0.1 and ::1; "*" answers to any (no DNS-rebinding guard).
    cache_limits: max_explanations, max_searches, max_sides, max_side_memory, max_models,
        and for uploads upload_side, max_upload_memory, decode_budget (see `web.store`).
    """
    try:
        from .api import build_app
    except ImportError as exc:
        raise SimexplainError(
            f"the web server needs fastapi and uvicorn ({exc}): "
            "pip install 'simexplain[web]'") from None
    check_limits(max_upload_bytes, max_input_side)
    from .engine import Engine
    engine = Engine(explainer=explainer, model=model, index=index, samples=samples,
                    models=models, max_upload_bytes=max_upload_bytes, max_pixels=max_pixels,
                    max_input_side=max_input_side, **cache_limits)
    return build_app(engine, allowed_hosts=allowed_hosts)


def add_serve_arguments(serve: argparse.ArgumentParser) -> None:
    """The options of `simexplain serve` (the parser `serve`)."""
    serve.description = ("Serve the interactive page and its JSON API (docs at /docs). Binds "
                         "to 127.0.0.1 unless --host says otherwise.")
    serve.add_argument("--index", help="an index built by `simexplain index` (gallery view)")
    serve.add_argument("--model", help="zoo name, model file or module:factory (default: the "
                                       "index's model, else efficientnet-lite0)")
    serve.add_argument("--layer", help="explained layer (for models outside the zoo)")
    serve.add_argument("--similarity", choices=BUILTIN_SIMILARITIES)
    from ..model_options import parse_size
    serve.add_argument("--size", type=parse_size,
                       help="model input size: N (short side, aspect kept where the model "
                            "allows it) or H,W (default: the model's)")
    serve.add_argument("--samples", nargs="*", metavar="IMAGE",
                       help="images or folders offered in the pickers (default: "
                            "scikit-image's sample photos)")
    serve.add_argument("--engine", choices=("local", "ray"), default="local",
                       help="local: search the index in this process (default); ray: its "
                            "shards served by Ray actors (a sharded --kind ivfpq index; the "
                            "scale extra)")
    serve.add_argument("--ray-address", default=None,
                       help="Ray cluster of --engine ray (default: RAY_ADDRESS, else a local "
                            "instance); every node must see the index folder at its path")
    serve.add_argument("--ray-actors", type=int, default=None,
                       help="shard actors of --engine ray (groups of shards; default 2)")
    serve.add_argument("--host", default=DEFAULT_HOST,
                       help=f"interface to bind (default {DEFAULT_HOST}: this machine only)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT)
    serve.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                       help="also answer to this host name (repeatable; the server answers "
                            "to the --host it binds and to localhost, 127.0.0.1 and [::1]; "
                            "other Host headers get 400, which stops DNS rebinding)")
    serve.add_argument("--max-upload-mb", type=float, default=MAX_UPLOAD_BYTES / 2**20,
                       help="largest accepted upload (default 10)")
    serve.add_argument("--max-size", type=int, default=MAX_INPUT_SIDE, metavar="PIXELS",
                       help="largest input size the page may pick for a finer grid (short "
                            f"side; default {MAX_INPUT_SIDE})")
    serve.set_defaults(run=cmd_serve)


def _sample_paths(items: Sequence[str]) -> list[Path]:
    from ..files import image_files
    paths: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            paths += image_files(path)
        elif path.is_file():
            paths.append(path)
        else:
            raise SimexplainError(f"sample image not found: {path}")
    return paths


def _check_bind(host: str, port: int) -> None:
    """Refuse (one line) an address the server cannot bind: an unknown host name, a port in
    use or not allowed; checked before the model loads (uvicorn would log its own error and
    exit after it)."""
    import socket
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.create_server((host, port), family=family):
            pass
    except (OSError, OverflowError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise SimexplainError(f"cannot serve on {host}:{port}: {reason}") from None


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError:
        raise SimexplainError("the web server needs uvicorn: pip install 'simexplain[web]'") \
            from None
    if not 0 <= args.port <= 65535:
        raise SimexplainError(f"--port must be 0 to 65535, got {args.port}")
    check_limits(args.max_upload_mb * 2**20, args.max_size)  # before the model loads
    _check_bind(args.host, args.port)
    from .. import zoo
    explainer = None
    models = None
    if args.model and (args.model not in zoo.list() or args.layer or args.similarity or
                       args.size):
        from ..zoo import resolve
        explainer = resolve(args.model, args.layer, args.similarity, args.size)
        models = [args.model] + zoo.list()
    samples = _sample_paths(args.samples) if args.samples else None
    index = args.index
    if args.engine == "ray":
        if not args.index:
            raise SimexplainError("--engine ray serves an index: give --index")
        from .engine import _load_index
        index = _load_index(args.index, explainer, args.model, engine="ray",
                            ray={"address": args.ray_address, "actors": args.ray_actors})
        print(f"simexplain: {len(index):,} images in {len(index.vectors.actors)} Ray shard "
              "actors")
    app = create_app(model=args.model, index=index, explainer=explainer, samples=samples,
                     models=models, max_upload_bytes=int(args.max_upload_mb * 2**20),
                     max_input_side=args.max_size,
                     allowed_hosts=served_hosts(args.host, args.allowed_host))
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"simexplain: warning: serving on {args.host}: anyone who can reach this "
              "machine can use the server")
    print(f"simexplain: serving on http://{args.host}:{args.port}/ (API docs at /docs)")
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        if hasattr(index, "close"):
            index.close()  # the Ray actors of --engine ray
    return 0
