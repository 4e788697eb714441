"""`simexplain eval all`: every benchmark, every available model and method, one report.

Runs pointing, localisation, faithfulness, correspondence and sanity for each benchmark model
that this installation can load (fmnist-gap, fmnist-gmp, fmnist-vit, efficientnet-lite0,
facenet; the transformer baselines run on class-token transformers such as fmnist-vit), the
cross-view benchmark on the two-stream sketch model (fmnist-sketch), the planted-shortcut
benchmark on fmnist-gap's recipe retrained with and without marks (`shortcut`), then the
interactive-retrieval benchmark (``simexplain.evaluation.interactive``), and writes
``BENCHMARKS.md``, ``benchmarks.json`` (all figures, per-sample values included) and the plots
under ``img/benchmarks/`` into the output folder (default ``docs``).

``--quick``: the Fashion-MNIST models only (fmnist-sketch included), a handful of samples each
(a smoke test, minutes).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path
from types import ModuleType
from collections.abc import Callable, Sequence

import torch

from ..errors import SimexplainError, first_line
from . import registry, report
from .common import BOOTSTRAP, ALL_METHODS, MODELS, POINT_METHODS, available_models
from .options import INTERACTIVE, QUICK_MODELS


def _interactive(interactive: ModuleType, models: list[str], quick: bool, seed: int,
                 log: Callable[[str], None]) -> tuple[dict | None, str | None]:
    wanted = [m for m in models if m in INTERACTIVE.models]
    if not wanted:
        return {"error": "Not run: none of the benchmarked models is supported by it."}, None
    log(f"interactive retrieval: {', '.join(wanted)}")
    try:
        results = interactive.run_interactive(models=wanted, quick=quick, seed=seed)
        return results, interactive.markdown_table(results)
    except SimexplainError as exc:
        return {"error": f"Not run: {exc}"}, None


def run_all(out: str | Path = "docs", quick: bool = False, seed: int = 0,
            models: Sequence[str] | None = None, show_progress: bool = False,
            log: Callable[[str], None] | None = None, command: str | None = None,
            samples: int | None = None) -> Path:
    """Run every benchmark and write the report; returns the path of BENCHMARKS.md.

    `samples` overrides every benchmark's sample count (default: each benchmark's own, per
    model; smaller with `quick`)."""
    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    started = time.perf_counter()
    benchmarks = registry.suite_modules()  # imported before any work: a broken one fails now
    interactive = registry.load("interactive")
    wanted = list(models) if models else list(QUICK_MODELS if quick else MODELS)
    loaded, skipped = available_models(wanted)
    if not loaded:
        raise SimexplainError("no benchmark model can be loaded: " + "; ".join(
            f"{k}: {v}" for k, v in skipped.items()))
    results: dict[str, list[dict]] = {}
    extra: list[str] = []  # models of benchmarks with models of their own
    for bench in benchmarks:
        # a benchmark with its own models (crossview: the two-stream sketch model) runs on those
        bench_models = [m for m in loaded if m in MODELS]
        if bench.OPTIONS.models:
            bench_models = [m for m in bench.OPTIONS.models if m in loaded]
            if not models:  # by default: this benchmark's models where they load
                bench_models, own_skipped = available_models(bench.OPTIONS.models)
                skipped.update({f"{m} ({bench.NAME})": why for m, why in own_skipped.items()})
            if not bench_models:
                continue  # none of its models asked for: no section
            extra += [m for m in bench_models if m not in loaded + extra]
        results[bench.NAME] = []
        for model in bench_models:
            t = time.perf_counter()
            try:
                result = bench.run(model, samples=samples, quick=quick, seed=seed,
                                   show_progress=show_progress)
            except SimexplainError as exc:  # e.g. a data set missing for this model
                skipped[f"{model} ({bench.NAME})"] = first_line(exc)
                log(f"{bench.NAME} {model}: skipped ({exc})")
                continue
            results[bench.NAME].append(result)
            log(f"{bench.NAME} {model}: {result['samples']} samples, "
                f"{time.perf_counter() - t:.0f} s")
    inter, inter_table = _interactive(interactive, loaded, quick, seed, log)
    elapsed = time.perf_counter() - started
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if command is None:
        command = "simexplain eval all" + (" --quick" if quick else "") + f" --out {out}"
        if seed:
            command += f" --seed {seed}"
        if samples:
            command += f" --samples {samples}"
        if models:
            command += "".join(f" --model {m}" for m in models)
    meta = {
        "command": command, "quick": quick, "seed": seed, "bootstrap": BOOTSTRAP,
        "runtime_s": elapsed, "models": loaded + extra, "methods": list(ALL_METHODS) +
        [f"{m} (pointing, localisation, correspondence)" for m in POINT_METHODS] +
        ["cosine (correspondence)"],
        "skipped": skipped, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": f"{os.cpu_count()} CPU cores", "date": datetime.date.today().isoformat(),
    }
    path = report.write_report(results, out, meta, benchmarks, inter, inter_table)
    report.write_json(out / "benchmarks.json", {"meta": meta, "results": results,
                                                "interactive": inter})
    log(f"wrote {path} in {elapsed / 60:.1f} minutes")
    return path


def render(out: str | Path = "docs") -> Path:
    """Rewrite BENCHMARKS.md and the plots from the benchmarks.json of an earlier run."""
    import json
    out = Path(out)
    data = json.loads((out / "benchmarks.json").read_text())
    inter = data.get("interactive")
    table = None
    if inter and "models" in inter:
        table = registry.load("interactive").markdown_table(inter)
    return report.write_report(data["results"], out, data["meta"], registry.suite_modules(),
                               inter, table)


def run_cli(args: argparse.Namespace) -> int:
    from .commands import check_run_options
    check_run_options(args)
    path = run_all(out=args.out, quick=args.quick, seed=args.seed, models=args.model,
                   show_progress=args.progress, samples=args.samples)
    print(f"wrote {path}")
    return 0
