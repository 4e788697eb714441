"""`simexplain eval <benchmark>`: one subcommand per benchmark module.

The benchmarks are listed in `registry.BENCHMARKS`. A benchmark's module is imported only
when its subcommand is used (`simexplain eval NAME ...`); one that fails to import gives a
subcommand that says why and exits with an error.
"""

from __future__ import annotations

import argparse
from types import ModuleType
from collections.abc import Sequence

from ..errors import SimexplainError
from . import registry

def add_benchmarks(evaluate: argparse.ArgumentParser) -> None:
    """One subcommand of `simexplain eval` (the parser `evaluate`) per benchmark whose module
    is installed. A benchmark's module is imported, and its options added, only when that
    subcommand is used (the parsers are `LazyParser`s), so `simexplain eval --help` is quick."""
    benchmarks = evaluate.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name, benchmark in registry.BENCHMARKS.items():
        benchmarks.add_parser(name, help=benchmark.help,
                              configure=lambda parser, name=name: _configure(parser, name))


def _configure(parser: argparse.ArgumentParser, name: str) -> None:
    """Add the options of benchmark `name` from its module; a module that fails to import
    makes a subcommand that reports why, so one broken benchmark does not take the whole
    command line down with it."""
    try:
        module = registry.load(name)
    except registry.BenchmarkUnavailable as exc:
        _make_broken(parser, exc)
        return
    parser.description = module.__doc__.split("\n\n")[0] if module.__doc__ else None
    if hasattr(module, "configure_parser"):
        module.configure_parser(parser)
        parser.set_defaults(run=module.run_cli)
    else:  # a standard benchmark: ALLOWED methods, DEFAULT_SAMPLES, QUICK_SAMPLES, run()
        configure_benchmark_parser(parser, module.ALLOWED, module.DEFAULT_SAMPLES,
                                   module.QUICK_SAMPLES)
        parser.set_defaults(run=lambda args, module=module: run_benchmark_cli(args, module))


def _make_broken(parser: argparse.ArgumentParser, exc: registry.BenchmarkUnavailable) -> None:
    """Turn `parser` into a subcommand that reports why its module could not be imported."""
    # no option prefix: every argument (even "--quick" or "--help") is taken as given, ignored
    parser.prefix_chars = "\x01"
    parser.description = f"(unavailable: {exc.__cause__})"
    parser.add_argument("rest", nargs="*")

    def run(_args: argparse.Namespace) -> int:
        raise exc
    parser.set_defaults(run=run)


# -- command line shared by the benchmark subcommands ----------------------------------------------
def configure_benchmark_parser(parser: argparse.ArgumentParser, methods: Sequence[str],
                               default_samples: dict,
                               quick_samples: int) -> None:
    from .common import MODELS
    defaults = ", ".join(f"{k} {v}" for k, v in default_samples.items())
    parser.add_argument("--model", action="append", metavar="NAME", required=True,
                        help="benchmark model, repeatable, or 'all' (" + ", ".join(MODELS) +
                             ")")
    parser.add_argument("--method", action="append", metavar="M",
                        help="method, repeatable, or 'all' (default): " + ", ".join(methods))
    parser.add_argument("--samples", type=int,
                        help=f"samples per model (default: {defaults}; --quick: {quick_samples})")
    parser.add_argument("--seed", type=int, default=0, help="seed of every draw (default 0)")
    parser.add_argument("--quick", action="store_true", help="tiny sample counts")
    parser.add_argument("--out", required=True, help="folder for the JSON, Markdown and plots")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--progress", action="store_true", help="show progress bars")


def expand_models(requested: Sequence[str], every: Sequence[str] | None = None) -> list[str]:
    """The models asked for, 'all' expanded to `every` (a benchmark's own MODELS, or all)."""
    from .common import MODELS
    every = MODELS if every is None else every
    out: list[str] = []
    for name in requested:
        for n in (every if name == "all" else [name]):
            if n not in out:
                out.append(n)
    return out


def run_benchmark_cli(args: argparse.Namespace, module: ModuleType) -> int:
    """Run one benchmark module for the models asked for; write and print its figures."""
    import json
    import sys
    from pathlib import Path

    from ..files import json_default
    from . import report
    from .common import available_models
    if args.samples is not None and args.samples < 1:
        raise SimexplainError("--samples must be at least 1")
    out = Path(args.out)
    wanted = expand_models(args.model, getattr(module, "MODELS", None))
    models, skipped = available_models(wanted)
    if "all" not in args.model and skipped:
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
