"""`simexplain eval <benchmark>`: one subcommand per benchmark.

The benchmarks are listed in `registry.BENCHMARKS`, each with its options (`options`, light to
import): building a benchmark's parser, its `--help` and its argument errors import no torch.
A benchmark's module is imported only when it runs (`simexplain eval NAME ...`); one that fails
to import fails then, loudly, naming the module.
"""

from __future__ import annotations

import argparse
from types import ModuleType
from collections.abc import Sequence

from ..errors import SimexplainError
from . import registry
from .options import MODELS


def add_benchmarks(evaluate: argparse.ArgumentParser) -> None:
    """One subcommand of `simexplain eval` (the parser `evaluate`) per registered benchmark.
    Its options are added only when that subcommand is used (the parsers are `LazyParser`s),
    so `simexplain eval --help` is quick, and its module is imported only when it runs."""
    benchmarks = evaluate.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name, benchmark in registry.BENCHMARKS.items():
        benchmarks.add_parser(name, help=benchmark.help, description=benchmark.help,
                              configure=lambda parser, name=name: _configure(parser, name))


def _configure(parser: argparse.ArgumentParser, name: str) -> None:
    registry.BENCHMARKS[name].configure(parser)
    parser.set_defaults(run=lambda args: run_benchmark(name, args))


def run_benchmark(name: str, args: argparse.Namespace) -> int:
    """Import benchmark `name` (BenchmarkUnavailable, naming its module, when that fails) and
    run it on the parsed command line `args`."""
    module = registry.load(name)
    if hasattr(module, "run_cli"):
        return int(module.run_cli(args))
    return run_benchmark_cli(args, module)


def check_run_options(args: argparse.Namespace) -> None:
    """The options the eval commands share, refused (one line) before any work: --samples
    below 1, --seed below 0 (numpy's generators refuse it, after the models load), an --out
    that is a file or lies inside an index or an output folder simexplain wrote (results are
    added to an existing folder: `eval all --out docs`)."""
    from pathlib import Path

    from ..files import check_outside_ours
    samples = getattr(args, "samples", None)
    if samples is not None and samples < 1:
        raise SimexplainError("--samples must be at least 1")
    if getattr(args, "seed", 0) < 0:
        raise SimexplainError(f"--seed must be >= 0, got {args.seed}")
    out = getattr(args, "out", None)
    if out:
        if Path(out).exists() and not Path(out).is_dir():
            raise SimexplainError(f"--out {out} exists and is not a folder")
        check_outside_ours(out)


def expand_models(requested: Sequence[str], every: Sequence[str] | None = None) -> list[str]:
    """The models asked for, 'all' expanded to `every` (a benchmark's own models, or all)."""
    every = MODELS if every is None else every
    out: list[str] = []
    for name in requested:
        for n in (every if name == "all" else [name]):
            if n not in out:
                out.append(n)
    return out


def run_benchmark_cli(args: argparse.Namespace, module: ModuleType) -> int:
    """Run one standard benchmark module (NAME, OPTIONS and `run`) for the models asked for
    (by default its own: OPTIONS.models); write and print its figures."""
    import json
    import sys
    from pathlib import Path

    from ..files import json_default
    from . import report
    from .common import available_models
    check_run_options(args)
    out = Path(args.out)
    own = module.OPTIONS.models or MODELS
    requested = args.model or list(own)  # no --model: only where it may be left out (shortcut)
    models, skipped = available_models(expand_models(requested, own))
    if "all" not in requested and skipped:
        name, why = next(iter(skipped.items()))
        raise SimexplainError(f"model {name}: {why}")
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for model in models:
        result = module.run(model, methods=args.method, samples=args.samples, seed=args.seed,
                            quick=args.quick, show_progress=args.progress)
        results.append(result)
        report.write_json(out / f"{module.NAME}-{model}.json", result)
    section = report.benchmark_section(module, results, out / "img", Path("img"))
    skipped_lines = "".join(f"\n- {k} skipped: {v}" for k, v in skipped.items())
    (out / f"{module.NAME}.md").write_text(section + skipped_lines + "\n")
    if args.json:
        print(json.dumps(report.clean({"benchmark": module.NAME, "results": results,
                                       "skipped": skipped}), indent=2,
                         default=json_default))
    else:
        print(section)
        for k, v in skipped.items():
            print(f"skipped {k}: {v}", file=sys.stderr)
        print(f"wrote {out / (module.NAME + '.md')} and {module.NAME}-<model>.json")
    return 0
