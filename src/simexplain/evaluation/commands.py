"""`simexplain eval <benchmark>`: one subcommand per benchmark module.

To add a benchmark, write a module with `configure_parser(parser)` (its options) and
`run_cli(args) -> int`, or a standard benchmark module (ALLOWED, DEFAULT_SAMPLES,
QUICK_SAMPLES and `run`, see common.run_benchmark_cli), and add a line to BENCHMARKS. Modules
are imported only when the `eval` command line is built, and a benchmark whose module is
missing is left out.
"""

from __future__ import annotations

from importlib import import_module

# name -> (module, one-line help)
BENCHMARKS: dict[str, tuple[str, str]] = {
    "interactive": ("simexplain.evaluation.interactive",
                    "interactive retrieval on Fashion-MNIST composites: region vs global search"),
    "retrieval": ("simexplain.evaluation.retrieval_quality",
                  "Recall@1 and mAP@R of a model on the Fashion-MNIST test split"),
    "pointing": ("simexplain.evaluation.pointing",
                 "pointing game: does the map's maximum land on the matching item of a 2x2 grid?"),
    "localisation": ("simexplain.evaluation.localisation",
                     "localisation: IoU of the thresholded map's largest component with the box"),
    "faithfulness": ("simexplain.evaluation.faithfulness",
                     "pair-aware deletion, insertion and ROAD curves on image b"),
    "correspondence": ("simexplain.evaluation.correspondence",
                       "PCK of point-specific maps on pairs with known geometry"),
    "sanity": ("simexplain.evaluation.sanity",
               "cascading parameter randomisation and reference randomisation"),
    "all": ("simexplain.evaluation.suite",
            "every benchmark for every available model; writes BENCHMARKS.md and plots"),
}


def add_cli(subparsers) -> None:
    evaluate = subparsers.add_parser("eval", help="run an evaluation benchmark")
    benchmarks = evaluate.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name, (module_name, text) in BENCHMARKS.items():
        try:
            module = import_module(module_name)
        except ModuleNotFoundError as exc:
            if module_name.startswith(exc.name or "-"):
                continue  # benchmark not installed here
            _add_broken(benchmarks, name, module_name, exc)
            continue
        except ImportError as exc:
            # one broken benchmark must not take the whole command line down with it
            _add_broken(benchmarks, name, module_name, exc)
            continue
        parser = benchmarks.add_parser(name, help=text, description=module.__doc__.split("\n\n")[0]
                                       if module.__doc__ else text)
        if hasattr(module, "configure_parser"):
            module.configure_parser(parser)
            parser.set_defaults(run=module.run_cli)
        else:  # a standard benchmark: ALLOWED methods, DEFAULT_SAMPLES, QUICK_SAMPLES, run()
            from .common import configure_benchmark_parser, run_benchmark_cli
            configure_benchmark_parser(parser, module.ALLOWED, module.DEFAULT_SAMPLES,
                                       module.QUICK_SAMPLES)
            parser.set_defaults(run=lambda args, module=module: run_benchmark_cli(args, module))


def _add_broken(benchmarks, name: str, module_name: str, exc: ImportError) -> None:
    """A subcommand that reports why its module could not be imported."""
    message = f"benchmark {name!r} is unavailable: importing {module_name} failed ({exc})"
    # no option prefix: every argument (even "--quick") is taken as given and ignored
    parser = benchmarks.add_parser(name, help=f"(unavailable: {exc})", add_help=False,
                                   prefix_chars="\x01")
    parser.add_argument("rest", nargs="*")

    def run(_args) -> int:
        from ..errors import SimexplainError
        raise SimexplainError(message)
    parser.set_defaults(run=run)
