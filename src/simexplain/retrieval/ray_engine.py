"""Index builds as a Ray Data pipeline (`Index.build(..., engine="ray")`, `simexplain index
build --engine ray`): the gallery's paths become a dataset, a pool of model actors (CPU, or GPU
with `gpus`) each decode, preprocess, hash and embed batches of them with the one input
pipeline (`embedding.embed_files`, the function the single-process build calls), and the rows come
back in gallery order to the driver, which checkpoints them into the same shards and writes
the same index as the single-process build: resumable per shard, the same manifest and checks.
With `explain`, the workers return each image's contributions too (the explain cache).

On a laptop a private local Ray instance is started (no dashboard, no set-up) and shut down at
the end; with `address` (or RAY_ADDRESS) the build joins that cluster; both ship this
simexplain package to the workers. Inside a running `ray.init` it uses that one, whose workers
must then import the same simexplain (installed, or your own `runtime_env`). Needs the `scale`
extra (`pip install simexplain[scale]`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast
import logging
import os
import re
from pathlib import Path
from collections.abc import Callable, Iterator

import numpy as np

import simexplain

from ..errors import SimexplainError, first_line
from .basics import Skipped, require
from .embedding import Embedded, embed_files
from .explain_cache import CachedImage

if TYPE_CHECKING:
    from ..explainer import Explainer


def require_ray() -> Any:  # the ray module
    # the pipeline needs Ray Data, not only Ray core
    return require("ray", "data", install="--engine ray needs Ray Data: pip install "
                                          "'ray[data]' (or the 'scale' extra of simexplain)")


class _Given:
    """A picklable factory returning a ready explainer (shipped to each actor once)."""

    def __init__(self, explainer: Explainer):
        self.explainer = explainer

    def __call__(self):
        return self.explainer


class _Embedder:
    """One Ray actor: the model, loaded once, embedding batches of gallery rows."""

    def __init__(self, factory: Callable, fingerprint: str | None, root: str, gpus: float,
                 explain: bool = False):
        import torch
        self.explainer = factory()
        if gpus > 0:
            if not torch.cuda.is_available():
                raise SimexplainError("--ray-gpus was given but this Ray worker sees no GPU")
            for stream in {id(s): s for s in (self.explainer.stream_a,
                                              self.explainer.stream_b)}.values():
                stream.model.to("cuda")
        mine = self.explainer.weights_sha256()
        if fingerprint and mine != fingerprint:
            # a worker on another machine must embed with the very weights the index records
            raise SimexplainError("a Ray worker loaded different model weights than the driver "
                                  "(weights fingerprint differs); install the same model "
                                  "everywhere")
        self.root = Path(root)
        self.stream = self.explainer.stream("b")
        self.explain = explain

    def __call__(self, batch: dict) -> dict:
        rows = [int(r) for r in batch["row"]]
        paths = [str(p) for p in batch["path"]]
        columns = ("sha256", "reason", "embedding", "cells", "shape", "projected", "tokens",
                   "spatial")
        out: dict[str, list[Any]] = {
            name: [""] * len(rows) if name in ("sha256", "reason") else [b""] * len(rows)
            for name in columns}
        # rows of one batch are consecutive: the dataset keeps the gallery's order
        results, skipped = embed_files(paths, rows[0], self.explainer, self.stream, self.root,
                                       self.explain)
        position = {row: i for i, row in enumerate(rows)}
        for item in results:
            at = position[item.row]
            out["sha256"][at] = item.sha256
            out["embedding"][at] = np.asarray(item.embedding, np.float32).tobytes()
            if item.cached is not None:  # float32 bytes; the shape says how to read them
                out["cells"][at] = item.cached.positions.tobytes()
                out["shape"][at] = np.asarray([*item.cached.input_size, *item.cached.grid],
                                              np.int64).tobytes()
                if item.cached.projected is not None:
                    out["projected"][at] = item.cached.projected.tobytes()
                if item.cached.tokens is not None:  # (T, D); read back by the embedding's D
                    out["tokens"][at] = item.cached.tokens.tobytes()
                    out["spatial"][at] = b"1" if item.cached.spatial else b"0"
        by_path = {path: i for i, path in enumerate(paths)}
        for skip in skipped:
            out["reason"][by_path[skip.path]] = skip.reason
        return {"row": np.asarray(rows, dtype=np.int64),
                **{name: np.asarray(out[name], dtype=object) for name in columns}}


def embed_with_ray(paths: list[str], start: int, root: Path,
                   explainer: Explainer | Callable[[], Explainer], info: dict,
                   batch_size: int, workers: int = 2, address: str | None = None,
                   gpus: float = 0.0, explain: bool = False
                   ) -> Iterator[tuple[list, list[Skipped], int]]:
    """(results, skipped, files done) for consecutive batches of gallery rows from `start`
    on, as `build._embed_locally` gives them, computed by `workers` Ray actors.

    explainer: an Explainer (pickled to each actor) or a picklable zero-argument factory of
        one (each actor then builds its own model, e.g. `functools.partial(zoo.resolve, name)`).
    address: a Ray cluster to join (default: RAY_ADDRESS, else a local instance).
    gpus: GPUs per actor (0: CPU actors; 0.5 lets two actors share one GPU).
    explain: the actors also return each image's contributions (`build.Embedded.cached`).
    """
    if workers < 1:
        raise SimexplainError(f"the number of Ray workers must be >= 1, got {workers}")
    if gpus < 0:
        raise SimexplainError(f"--ray-gpus must be >= 0, got {gpus}")
    if start >= len(paths):
        return
    ray = require_ray()
    started = _connect(ray, address, workers)
    try:
        from ray.data import ActorPoolStrategy, DataContext
        context = DataContext.get_current()
        context.execution_options.preserve_order = True  # rows come back in gallery order
        context.enable_progress_bars = False  # the build shows its own bar
        factory = (explainer if not hasattr(explainer, "prepare")
                   else _Given(cast("Explainer", explainer)))
        rows = range(start, len(paths))
        dataset = ray.data.from_items([{"row": i, "path": paths[i]} for i in rows],
                                      override_num_blocks=max(1, -(-len(rows) // batch_size)))
        embedded = dataset.map_batches(
            _Embedder, batch_size=batch_size, batch_format="numpy",
            compute=ActorPoolStrategy(size=workers), num_cpus=1, num_gpus=gpus,
            fn_constructor_args=(factory, info.get("weights_sha256"), str(root), gpus,
                                 explain))
        for batch in embedded.iter_batches(batch_size=None, batch_format="numpy"):
            yield _unpack(batch, paths)
    except Exception as exc:
        cause = _simexplain_cause(exc)
        if cause is not None:
            raise cause from None
        raise
    finally:
        if started:
            ray.shutdown()


def _unpack(batch: dict, paths: list[str]) -> tuple[list, list[Skipped], int]:
    results, skipped = [], []
    for i, row in enumerate(batch["row"]):
        row = int(row)
        if batch["reason"][i]:
            skipped.append(Skipped(paths[row], str(batch["reason"][i])))
            continue
        embedding = np.frombuffer(batch["embedding"][i], dtype=np.float32).copy()
        cached = None
        if batch["shape"][i]:
            h, w, gh, gw = (int(v) for v in np.frombuffer(batch["shape"][i], dtype=np.int64))

            def cells(data: bytes) -> np.ndarray:
                # called right here, inside the iteration that set gh and gw
                return np.frombuffer(data, dtype=np.float32).reshape(gh * gw, -1).copy()  # noqa: B023
            tokens = None
            if batch["tokens"][i]:
                tokens = np.frombuffer(batch["tokens"][i], dtype=np.float32).reshape(
                    -1, len(embedding)).copy()
            cached = CachedImage(cells(batch["cells"][i]), (h, w), (gh, gw),
                                 cells(batch["projected"][i]) if batch["projected"][i] else None,
                                 tokens, batch["spatial"][i] != b"0")
        results.append(Embedded(row, str(batch["sha256"][i]), embedding, cached))
    return results, skipped, int(batch["row"][-1]) + 1


def _connect(ray, address: str | None, workers: int) -> bool:
    """Join the given cluster, or start a private local instance; True when this call
    started Ray (and must shut it down)."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # never report usage over the network
    # the workers run this very simexplain (3 MB, shipped once per session), not whatever
    # version their Python would import
    shipped = {"py_modules": [str(Path(simexplain.__file__).parent)]}
    try:
        if address:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False,
                     runtime_env=shipped)
        else:
            ray.init(num_cpus=max(workers, 1), include_dashboard=False,
                     logging_level=logging.WARNING, log_to_driver=False, runtime_env=shipped)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise SimexplainError(f"cannot start or join {where}: "
                              f"{first_line(exc)}") from None
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    return True


def _simexplain_cause(exc: BaseException) -> SimexplainError | None:
    """The SimexplainError a Ray worker raised, so the user sees its one line: Ray wraps an
    error of a task (found through `.cause`) and reports one of an actor's start only as
    text."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            break
        inner = getattr(seen, "cause", None)
        if isinstance(inner, SimexplainError):
            return SimexplainError(str(inner))
        seen = inner or seen.__cause__
    found = re.findall(r"SimexplainError: (.+)", str(exc))
    return SimexplainError(found[-1].strip()) if found else None
